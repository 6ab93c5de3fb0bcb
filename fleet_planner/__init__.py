"""Fleet Planner: shared planning core (traces, engine performance, policy interface) and the CLI."""

__version__ = "0.1.0"
