"""Connectors: the adapters that apply the local agent's replica targets (simulator, local processes)."""

from local_agent.connectors.base import Connector, ReplicaCounts
from local_agent.connectors.processes import ProcessConnector, StateFileError, WorkerCommand, WorkerExit, WorkerRecord

__all__ = [
    "Connector",
    "ProcessConnector",
    "ReplicaCounts",
    "StateFileError",
    "WorkerCommand",
    "WorkerExit",
    "WorkerRecord",
]
