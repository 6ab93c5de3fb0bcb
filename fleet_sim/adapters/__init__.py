"""Simulator policy adapters: local agents, the FCFS gatekeeper and the global planner on the simulated clock."""
