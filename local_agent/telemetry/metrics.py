"""Prometheus metrics of one agent's decisions and the observations they were made from.

Missing values are *absent*, never 0: when an input is ``None`` (or NaN) the series for that label
set is removed, so a scrape shows no sample rather than a stale or fake value, and ``absent()`` alerts
fire. Infinite estimates (an overloaded pool) are exported as ``+Inf``: that is a real answer.

Latencies are exported in seconds (Prometheus base unit); GPU usage in GPU-hours, integrated from
the ``now_s`` passed to :meth:`AgentMetrics.record`, so the wall clock and the simulated clock give
the same numbers for the same history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge

from fleet_planner.planning import PoolObservation, PoolRole
from local_agent.models import AgentDecision, DecisionReason
from local_agent.session import TickEffects

REASON_STATES = [reason.value for reason in DecisionReason]
POOL_LABELS = ("deployment", "pool")


def _set_or_clear(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    """Set the series, or remove it so a missing input reads as absent rather than 0."""
    if value is not None and not math.isnan(value):
        gauge.labels(*labels).set(value)
    else:
        gauge.remove(*labels)


def _ms_to_s(value: float | None) -> float | None:
    return None if value is None else value / 1000.0


class AgentMetrics:
    """Exports decisions and observations of one or more deployments into ``registry``.

    Without a registry a private one is created, so several agents (or tests) in one process never
    collide on metric names; pass ``prometheus_client.REGISTRY`` to use the process default.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.replicas = Gauge(
            "fleet_agent_replicas",
            "Replicas per pool by state: target/wanted from the decision, "
            "ready/starting/draining/pending from the observation.",
            [*POOL_LABELS, "state"],
            registry=reg,
        )
        self.gpus_held = Gauge(
            "fleet_agent_gpus_held",
            "GPUs held by the pool (ready + starting + draining replicas).",
            POOL_LABELS,
            registry=reg,
        )
        self.gpu_hours = Counter(
            "fleet_agent_gpu_hours", "GPU-hours held, integrated over the agent's clock.", POOL_LABELS, registry=reg
        )
        self.load_rps = Gauge(
            "fleet_agent_load_rps",
            "Deployment request rate: observed, forecast mean and forecast upper quantile.",
            ["deployment", "source"],
            registry=reg,
        )
        self.planner_decision = Gauge(
            "fleet_agent_planner_decision",
            "The global planner's decision in force (0: none yet).",
            ["deployment"],
            registry=reg,
        )
        self.planner_source = Enum(
            "fleet_agent_planner_source",
            "Where the targets in force come from: a fresh grant, the last lease, or the floor.",
            ["deployment"],
            states=["planner", "lease", "floor"],
            registry=reg,
        )
        self.routing_weight = Gauge(
            "fleet_agent_routing_weight",
            "Share of the endpoint's traffic the planner routes to each member deployment.",
            ["deployment", "member"],
            registry=reg,
        )
        self.admission_limit = Gauge(
            "fleet_agent_admission_limit_rps",
            "Requests/s the planner lets the endpoint admit (excess is shed); absent when unlimited.",
            ["deployment"],
            registry=reg,
        )
        self.planned_tokens = Gauge(
            "fleet_agent_planned_tokens_mean",
            "Mean input/output tokens per request the decision sized for.",
            ["deployment", "direction"],
            registry=reg,
        )
        self.pool_rps = Gauge(
            "fleet_agent_pool_admitted_rps",
            "Requests admitted per second by the pool over its observation window.",
            POOL_LABELS,
            registry=reg,
        )
        self.observed_tokens = Gauge(
            "fleet_agent_observed_tokens_mean",
            "Observed mean input/output tokens per request.",
            [*POOL_LABELS, "direction"],
            registry=reg,
        )
        self.estimated_ttft = Gauge(
            "fleet_agent_estimated_ttft_seconds",
            "TTFT the agent estimates for the pool at its target.",
            POOL_LABELS,
            registry=reg,
        )
        self.estimated_itl = Gauge(
            "fleet_agent_estimated_itl_seconds",
            "ITL the agent estimates for the pool at its target.",
            POOL_LABELS,
            registry=reg,
        )
        self.observed_ttft = Gauge(
            "fleet_agent_observed_ttft_seconds",
            "Observed TTFT quantiles over the observation window.",
            [*POOL_LABELS, "quantile"],
            registry=reg,
        )
        self.observed_itl = Gauge(
            "fleet_agent_observed_itl_seconds",
            "Observed ITL quantiles over the observation window.",
            [*POOL_LABELS, "quantile"],
            registry=reg,
        )
        self.reason = Enum(
            "fleet_agent_decision_reason",
            "Why the pool's latest target is what it is.",
            POOL_LABELS,
            states=REASON_STATES,
            registry=reg,
        )
        self.decisions = Counter(
            "fleet_agent_decisions",
            "Pool decisions made, by planning loop and reason.",
            [*POOL_LABELS, "loop", "reason"],
            registry=reg,
        )
        self.advisory = Gauge(
            "fleet_agent_advisory",
            "1 when the decision was advisory (logged, not applied).",
            ["deployment"],
            registry=reg,
        )
        self.last_decision = Gauge(
            "fleet_agent_last_decision_time_seconds",
            "Agent clock time of the latest decision.",
            ["deployment"],
            registry=reg,
        )
        self._held: dict[tuple[str, str], int] = {}
        self._held_since: dict[str, float] = {}

    def record_planner(self, deployment: str, effects: TickEffects) -> None:
        """What the global planner last said: the decision in force, where it came from (fresh
        grant, lease or floor), the endpoint's routing weights and its admission limit (absent
        when the endpoint admits everything)."""
        self.planner_decision.labels(deployment).set(effects.decision_id)
        self.planner_source.labels(deployment).state(effects.source)
        self.routing_weight.clear()
        for member, weight in effects.routing.items():
            self.routing_weight.labels(deployment, member).set(weight)
        _set_or_clear(self.admission_limit, (deployment,), effects.admission_rps)

    def record(
        self,
        decision: AgentDecision,
        observations: list[PoolObservation],
        gpus_per_replica: Mapping[PoolRole, int],
        now_s: float,
    ) -> None:
        """Export one decision and the observations it was made from (other deployments' are ignored).

        GPU-hours accrue for the GPUs held *since the previous call* (a piecewise-constant holding
        between observations); a pool without a fresh observation keeps its last known holding.
        A clock that steps backwards accrues nothing for that step.
        """
        name = decision.deployment
        own = [obs for obs in observations if obs.deployment == name]
        for obs in own:
            if obs.role not in gpus_per_replica:
                raise ValueError(f"no gpus_per_replica for pool {name}/{obs.role}")
        self._accrue_gpu_hours(name, now_s)
        for obs in own:
            self._record_observation(obs, gpus_per_replica[obs.role])
        self._record_decision(decision)

    def _accrue_gpu_hours(self, deployment: str, now_s: float) -> None:
        since = self._held_since.get(deployment)
        if since is not None and now_s > since:
            hours = (now_s - since) / 3600.0
            for (dep, role), gpus in self._held.items():
                if dep == deployment and gpus > 0:
                    self.gpu_hours.labels(dep, role).inc(gpus * hours)
        self._held_since[deployment] = now_s

    def _record_observation(self, obs: PoolObservation, gpus_per_replica: int) -> None:
        labels = (obs.deployment, obs.role)
        for state in ("ready", "starting", "draining", "pending"):
            self.replicas.labels(*labels, state).set(getattr(obs, state))
        gpus = (obs.ready + obs.starting + obs.draining) * gpus_per_replica
        self._held[labels] = gpus
        self.gpus_held.labels(*labels).set(gpus)
        self.gpu_hours.labels(*labels)  # the series exists from the first observation, at 0
        _set_or_clear(self.pool_rps, labels, None if obs.admitted is None else obs.admitted / obs.window_s)
        for direction, dist in (("input", obs.input_tokens), ("output", obs.output_tokens)):
            _set_or_clear(self.observed_tokens, (*labels, direction), None if dist is None else dist.mean)
        for gauge, dist in ((self.observed_ttft, obs.ttft_ms), (self.observed_itl, obs.itl_ms)):
            for quantile in ("p50", "p90", "p99"):
                value = None if dist is None else getattr(dist, quantile) / 1000.0
                _set_or_clear(gauge, (*labels, quantile), value)

    def _record_decision(self, decision: AgentDecision) -> None:
        name = decision.deployment
        for source, value in (
            ("observed", decision.observed_rps),
            ("forecast", decision.forecast_rps),
            ("forecast_upper", decision.forecast_upper_rps),
        ):
            _set_or_clear(self.load_rps, (name, source), value)
        for direction, value in (("input", decision.input_tokens_mean), ("output", decision.output_tokens_mean)):
            _set_or_clear(self.planned_tokens, (name, direction), value)
        self.advisory.labels(name).set(1 if decision.advisory else 0)
        self.last_decision.labels(name).set(decision.time_s)
        for pool in decision.pools:
            labels = (name, pool.role)
            self.replicas.labels(*labels, "target").set(pool.target)
            self.replicas.labels(*labels, "wanted").set(pool.wanted)
            _set_or_clear(self.estimated_ttft, labels, _ms_to_s(pool.estimated_ttft_ms))
            _set_or_clear(self.estimated_itl, labels, _ms_to_s(pool.estimated_itl_ms))
            self.reason.labels(*labels).state(pool.reason.value)
            self.decisions.labels(*labels, decision.loop, pool.reason.value).inc()
