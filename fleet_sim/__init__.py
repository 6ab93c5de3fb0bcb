"""Discrete-event fleet simulator: replays request traces against simulated engines and a policy."""
