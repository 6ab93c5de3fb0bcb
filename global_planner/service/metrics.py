"""Prometheus metrics of the planner service, registered into a given registry (tests isolate)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from global_planner.service.state import PlannerState, Round


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.granted = Gauge(
            "fleet_planner_granted_gpus",
            "GPUs granted per tenant and type (draining GPUs excluded).",
            ["tenant", "gpu_type"],
            registry=reg,
        )
        self.lent = Gauge(
            "fleet_planner_lent_gpus",
            "GPUs of the grants lent from idle capacity above the agents' asks (fill_idle), per tenant and type.",
            ["tenant", "gpu_type"],
            registry=reg,
        )
        self.committed = Gauge(
            "fleet_planner_committed_gpus",
            "GPUs granted plus GPUs still held by draining replicas, per type.",
            ["gpu_type"],
            registry=reg,
        )
        self.inventory = Gauge(
            "fleet_planner_inventory_gpus", "GPUs the fleet owns, per type.", ["gpu_type"], registry=reg
        )
        self.rounds = Counter(
            "fleet_planner_rounds", "Allocation rounds committed, by allocator status.", ["status"], registry=reg
        )
        self.round_errors = Counter(
            "fleet_planner_round_errors", "Allocation rounds that failed (no grant changed).", registry=reg
        )
        self.solve_ms = Histogram(
            "fleet_planner_solve_ms",
            "Allocator wall time per round in milliseconds.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000, 2000),
            registry=reg,
        )
        self.rejected = Counter(
            "fleet_planner_rejected_messages", "Agent messages refused, by gRPC status code.", ["code"], registry=reg
        )
        self.routing = Gauge(
            "fleet_planner_routing_weight",
            "Share of an endpoint's traffic routed to each deployment.",
            ["endpoint", "deployment"],
            registry=reg,
        )
        self.admission = Gauge(
            "fleet_planner_admission_rps",
            "Requests/s an endpoint may admit (set only while its allocated capacity is short of its planned load).",
            ["endpoint"],
            registry=reg,
        )

    def observe_round(self, round_: Round, state: PlannerState) -> None:
        self.rounds.labels(round_.record.status).inc()
        if round_.allocation is not None:
            self.solve_ms.observe(round_.allocation.solve_ms)
        self.granted.clear()
        for tenant, by_type in state.granted_gpus().items():
            for gpu, count in by_type.items():
                self.granted.labels(tenant, gpu).set(count)
        self.lent.clear()
        for tenant, by_type in state.lent_gpus().items():
            for gpu, count in by_type.items():
                self.lent.labels(tenant, gpu).set(count)
        self.committed.clear()  # a GPU type dropped from the policy (and no longer held) loses its series
        for gpu, count in state.committed_gpus().items():
            self.committed.labels(gpu).set(count)
        self.inventory.clear()
        for gpu, count in state.inventory.items():
            self.inventory.labels(gpu).set(count)
        self.routing.clear()
        for endpoint, weights in round_.routing.items():
            for deployment, weight in weights.items():
                self.routing.labels(endpoint, deployment).set(weight)
        self.admission.clear()
        for endpoint, rate in round_.admission.items():
            self.admission.labels(endpoint).set(rate)
