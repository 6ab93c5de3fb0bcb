"""The agent's outward view: Prometheus metrics, HTML diagnostics reports, a live dashboard and the
authenticated control endpoint for runtime limits."""

from local_agent.telemetry.control import LimitsError, LimitsStore
from local_agent.telemetry.dashboard import make_app
from local_agent.telemetry.diagnostics import DiagnosticsRecorder
from local_agent.telemetry.metrics import AgentMetrics

__all__ = ["AgentMetrics", "DiagnosticsRecorder", "LimitsError", "LimitsStore", "make_app"]
