"""The local agent's decision concerns, composed by :class:`local_agent.agent.LocalAgent`:
intake, the capacity model and predictive sizing, the reactive loop, the scale-down guard, and
limits and budget."""
