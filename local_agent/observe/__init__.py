"""Where the live agent's observations come from (the simulator hands them over directly)."""

from local_agent.observe.prometheus import PrometheusClient, PrometheusError, PrometheusSource

__all__ = ["PrometheusClient", "PrometheusError", "PrometheusSource"]
