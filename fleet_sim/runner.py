"""Runs one scenario: builds pools from the scenario, replays the workload, asks the policy on every
tick with delayed observations, and records what happened into a ``SimulationResult``."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import (
    Decision,
    DeploymentSpec,
    Distribution,
    FleetObservation,
    Policy,
    PoolObservation,
)
from fleet_sim.engine import EV_CALL, STARTING, EngineConfig, Pool, Simulator
from fleet_sim.gateway import Gateway
from fleet_sim.results import (
    COMPLETED,
    REJECTED,
    UNFINISHED,
    DecisionRecord,
    RequestRecords,
    SimulationResult,
    TimelineRow,
)
from fleet_sim.workload import Workload

DRAIN_GRACE_S = 900.0  # after the last arrival, in-flight requests get this long to finish


def distribution(values: Sequence[float]) -> Distribution | None:
    """Nearest-rank summary of a small sample; None when there is no sample (never a fake 0).

    Sorted by numpy (every pool's four samples each tick: sorting them was 3% of a day's
    replay); the mean is the running sum in sorted order, which rounds as summing the sorted
    list did (``np.sum`` adds pairwise and would round differently)."""
    if not values:
        return None
    ordered = np.sort(np.asarray(values))
    n = ordered.size

    def rank(q: float) -> float:
        return float(ordered[min(n - 1, int(q * n))])

    total = ordered.cumsum()[-1]
    return Distribution(count=n, mean=float(total / n), p50=rank(0.5), p90=rank(0.9), p99=rank(0.99))


class ProfileCache:
    """One PerfModel per profile folder, shared by every pool that uses it."""

    def __init__(self) -> None:
        self._models: dict[str, PerfModel] = {}

    def get(self, path: str) -> PerfModel:
        model = self._models.get(path)
        if model is None:
            model = self._models[path] = PerfModel(load_profile(path))
        return model

    def warnings(self) -> list[str]:
        return [f"{model!r}: {w}" for model in self._models.values() for w in model.warnings]


class FleetSimulation:
    """A scenario wired to the engine. ``run()`` returns the result; everything is deterministic."""

    def __init__(self, scenario, workload: Workload, policy: Policy):
        self.scenario = scenario
        self.workload = workload
        self.policy = policy
        self.specs: list[DeploymentSpec] = scenario.deployment_specs()
        self.interval_s = float(scenario.planner.interval_s)
        self.delay_s = float(scenario.planner.observation_delay_s)
        self.end_s = float(scenario.duration_s)
        self.sim = Simulator(dict(scenario.gpus), self.end_s)
        self.profiles = ProfileCache()
        self.endpoint_index = {name: i for i, name in enumerate(workload.endpoints)}
        endpoint_configs = scenario.endpoint_configs()
        self.endpoint_sla = {name: (sla.ttft_ms, sla.itl_ms) for name, (sla, _) in endpoint_configs.items()}
        self.endpoint_max_input = {name: source.max_input_tokens for name, (_, source) in endpoint_configs.items()}
        self.endpoint_timeout = {name: source.queue_timeout_s for name, (_, source) in endpoint_configs.items()}
        self.pools: dict[tuple[str, str], Pool] = {}
        self.entry_pool: list[Pool] = []  # per deployment index: prefill or agg pool
        self._build_pools()
        self.gateway = Gateway(self.specs, self.endpoint_index, self.pools, self.entry_pool)
        # Per endpoint over the current interval: requests admitted, and requests the gateway shed.
        self._endpoint_window = [0] * len(workload.endpoints)
        self._endpoint_shed = [0] * len(workload.endpoints)
        self.decisions: list[DecisionRecord] = []
        self.timeline: list[TimelineRow] = []
        self.scale_events = {spec.name: 0 for spec in self.specs}
        self.budget_violations = 0
        self._observations: deque[FleetObservation] = deque()
        self._delivered: FleetObservation | None = None  # the latest observation the policy has seen
        self._gpu_seconds_recorded: dict[Pool, float] = {}  # per pool, up to its last timeline row
        self._progress: Callable[[float], None] | None = None
        self.sim.on_complete = self._on_complete

    # ---- construction -----------------------------------------------------------------------
    def _build_pools(self) -> None:
        config_by_name = {d.name: d for d in self.scenario.deployments}
        for index, spec in enumerate(self.specs):
            max_input = self.endpoint_max_input.get(spec.endpoint)
            built: dict[str, Pool] = {}
            for role, pool_spec in spec.pools.items():
                pool_config = config_by_name[spec.name].pools[role]
                engine = EngineConfig(
                    knobs=EngineKnobs.of(pool_config),
                    kv_bytes_per_token=pool_config.kv_bytes_per_token,
                    kv_transfer_gbps=pool_config.kv_transfer_gbps,
                    prefix_cache=pool_config.prefix_cache,
                )
                pool = Pool(
                    self.sim,
                    index,
                    spec.name,
                    role,
                    self.profiles.get(pool_spec.profile_path),
                    pool_spec.gpu_type,
                    pool_spec.gpus_per_replica,
                    pool_spec.startup_s,
                    engine,
                    max_input,
                    self.endpoint_timeout.get(spec.endpoint),
                )
                built[role] = pool
                self.pools[(spec.name, role)] = pool
                self.sim.pools.append(pool)
            if spec.mode == "disagg":
                built["prefill"].next_pool = built["decode"]
                built["decode"].entry_pool = built["prefill"]
                self.entry_pool.append(built["prefill"])
            else:
                self.entry_pool.append(built["agg"])
        for spec in self.specs:
            for role, pool_spec in spec.pools.items():
                pool = self.pools[(spec.name, role)]
                pool.target = pool_spec.initial_replicas
                for _ in range(pool_spec.initial_replicas):
                    # Initial replicas are already running when the replay starts.
                    pool.start_replica(0.0)
                    replica = pool.replicas[-1]
                    replica.ready_at = 0.0
                    pool.on_ready(replica, 0.0)

    def _on_arrival(self, request: int, now: float) -> None:
        reqs = self.sim.requests
        endpoint = reqs.endpoint[request]
        deployment = self.gateway.route(endpoint, reqs.input[request], reqs.output[request])
        reqs.deployment[request] = deployment
        entry = self.entry_pool[deployment]
        if entry.max_input_tokens is not None and reqs.input[request] > entry.max_input_tokens:
            reqs.rejected[request] = True
            return
        if not self.gateway.admit(endpoint, now):
            reqs.rejected[request] = True  # shed by the gateway (charged to where the split sent it)
            self._endpoint_shed[endpoint] += 1
            return
        self._endpoint_window[endpoint] += 1
        self.gateway.outstanding[deployment] += 1
        entry.router.submit(request, now)

    def _on_complete(self, request: int, now: float) -> None:
        self.gateway.outstanding[self.sim.requests.deployment[request]] -= 1

    # ---- planning ticks ---------------------------------------------------------------------
    def _observe(self, now: float) -> FleetObservation:
        """Close the interval: every pool's observation (and its timeline row), then reset the
        interval counters."""
        pools = []
        endpoint_lengths = self._endpoint_lengths()
        for spec in self.specs:
            endpoint = self.endpoint_index[spec.endpoint]
            for role in spec.pools:
                pool = self.pools[(spec.name, role)]
                entry = pool.entry_pool is pool  # endpoint figures go to the entry pool only
                endpoint_in, endpoint_out = endpoint_lengths[endpoint] if entry else (None, None)
                endpoint_counts = (self._endpoint_window[endpoint], self._endpoint_shed[endpoint]) if entry else None
                observation = self._pool_observation(pool, now, endpoint_counts, endpoint_in, endpoint_out)
                pools.append(observation)
                pool.account(now, 0)  # charge the GPUs held up to now
                held = pool.gpu_seconds - self._gpu_seconds_recorded.get(pool, 0.0)
                self._gpu_seconds_recorded[pool] = pool.gpu_seconds
                self.timeline.append(self._timeline_row(pool, observation, held))
                pool.stats.reset()
        self._endpoint_window = [0] * len(self._endpoint_window)
        self._endpoint_shed = [0] * len(self._endpoint_shed)
        return FleetObservation(time_s=now, pools=pools)

    def _endpoint_lengths(self) -> dict[int, tuple[Distribution | None, Distribution | None]]:
        """Input and output lengths per endpoint over the interval. They matter only where several
        deployments share it (one alone has exactly its own entry pool's)."""
        lengths: dict[int, tuple[Distribution | None, Distribution | None]] = {}
        for index, members in enumerate(self.gateway.endpoint_deployments):
            if len(members) < 2:
                lengths[index] = (None, None)
                continue
            entries = [self.entry_pool[d].stats for d in members]
            lengths[index] = (
                distribution([x for s in entries for x in s.input_tokens]),
                distribution([x for s in entries for x in s.output_tokens]),
            )
        return lengths

    def _pool_observation(
        self,
        pool: Pool,
        now: float,
        endpoint_counts: tuple[int, int] | None,
        endpoint_in: Distribution | None,
        endpoint_out: Distribution | None,
    ) -> PoolObservation:
        stats = pool.stats
        replicas = [r for r in pool.replicas if r.state != STARTING]
        serves_decode = pool.role != "prefill"
        return PoolObservation(
            **self._replica_counts(pool, now),
            admitted=stats.admitted,
            endpoint_admitted=endpoint_counts[0] if endpoint_counts else None,
            endpoint_shed=endpoint_counts[1] if endpoint_counts else None,
            endpoint_input_tokens=endpoint_in,
            endpoint_output_tokens=endpoint_out,
            input_tokens=distribution(stats.input_tokens),
            output_tokens=distribution(stats.output_tokens),
            ttft_ms=distribution(stats.ttft_ms),
            itl_ms=distribution(stats.itl_ms),
            queued_requests=len(pool.router.queue) + sum(len(r.wait_queue) + len(r.prefill_queue) for r in replicas),
            queued_prefill_tokens=float(sum(r.queued_prefill_tokens for r in replicas)),
            active_kv_tokens=float(sum(r.kv_reserved for r in replicas)) if serves_decode else None,
            kv_capacity_tokens=float(pool.max_kv * len(replicas)) if serves_decode else None,
            iteration_ms=stats.iteration_s / stats.iterations * 1000.0 if stats.iterations else None,
            scheduled_tokens_per_s=stats.tokens / self.interval_s,
            prefix_hit_rate=(
                stats.prefix_hit_tokens / stats.prefill_input_tokens
                if pool.prefix_blocks and stats.prefill_input_tokens
                else None
            ),
        )

    @staticmethod
    def _timeline_row(pool: Pool, observation: PoolObservation, gpu_seconds: float) -> TimelineRow:
        """The interval's row: what the policy was shown, plus target and GPUs held (NaN p90s where
        no request reached that point in the interval)."""
        return TimelineRow(
            time_s=observation.time_s,
            deployment=observation.deployment,
            role=observation.role,
            gpu_type=pool.gpu_type,
            target=pool.target,
            ready=observation.ready,
            starting=observation.starting,
            draining=observation.draining,
            pending=observation.pending,
            gpus=pool.gpus_held,
            gpu_seconds=gpu_seconds,
            arrivals=pool.stats.admitted,
            ttft_p90_ms=observation.ttft_ms.p90 if observation.ttft_ms is not None else math.nan,
            itl_p90_ms=observation.itl_ms.p90 if observation.itl_ms is not None else math.nan,
        )

    def _scrape(self, now: float) -> None:
        """Close a window ``observation_delay_s`` before a tick: the tick reads it, as a live agent
        reads a scrape that lags by that much."""
        self._observations.append(self._observe(now))
        if now + self.interval_s < self.end_s - 1e-9:
            self.sim.schedule(now + self.interval_s, EV_CALL, self._scrape)

    def _tick(self, now: float) -> None:
        self.gateway.refresh_capacities()
        self.policy.replicas_now(self._counts(now))
        delivered = None
        while self._observations and self._observations[0].time_s <= now - self.delay_s + 1e-6:
            delivered = self._observations.popleft()
        if delivered is not None:
            self._delivered = delivered
        self._apply(self.policy.decide(now, self._delivered), now)
        if self._progress is not None:
            self._progress(now)
        if now + self.interval_s < self.end_s - 1e-9:
            self.sim.schedule(now + self.interval_s, EV_CALL, self._tick)
        if self.policy.report_s:
            at = now + self.policy.report_s
            while at < min(now + self.interval_s, self.end_s) - 1e-9:
                self.sim.schedule(at, EV_CALL, self._between_ticks)
                at += self.policy.report_s

    def _between_ticks(self, now: float) -> None:
        decision = self.policy.between_ticks(self._counts(now))
        if decision is not None:
            self._apply(decision, now)

    def _counts(self, now: float) -> FleetObservation:
        """Every pool's replica counts at ``now`` (what the orchestrator's API says at a tick)."""
        pools = [PoolObservation(**self._replica_counts(pool, now)) for pool in self.pools.values()]
        return FleetObservation(time_s=now, pools=pools)

    def _replica_counts(self, pool: Pool, now: float) -> dict[str, Any]:
        """The fields of a pool's observation that its replica counts at ``now`` fill."""
        ready, starting, draining = pool.counts()
        return {
            "deployment": pool.deployment,
            "role": pool.role,
            "time_s": now,
            "window_s": self.interval_s,
            "ready": ready,
            "starting": starting,
            "draining": draining,
            "pending": pool.pending,
        }

    def _apply(self, decision: Decision, now: float) -> None:
        spec_by_name = {spec.name: spec for spec in self.specs}
        for target in decision.targets:
            spec = spec_by_name.get(target.deployment)
            if spec is None or target.role not in spec.pools:
                raise ValueError(f"policy {self.policy.name} targeted unknown pool {target.deployment}/{target.role}")
            pool_spec = spec.pools[target.role]
            # Not raised to the pool's minimum: a planner may hold a pool below it where a tenant
            # cap or an override says so (a tenant cannot escape its cap by raising its own
            # minimum), and a live connector applies the grant as given. Raising it here kept the
            # GPUs the planner had granted elsewhere (a sweep fleet, seed 25: 29 budget violations).
            replicas = min(target.replicas, pool_spec.max_replicas)
            pool = self.pools[(spec.name, target.role)]
            if target.knobs is not None:
                pool.set_knobs(target.knobs, now)
            if replicas != pool.target:
                self.decisions.append(DecisionRecord(now, spec.name, target.role, pool.target, replicas, target.reason))
                self.scale_events[spec.name] += 1
                pool.set_target(replicas, now)
        for endpoint, weights in decision.routing.items():
            index = self.endpoint_index.get(endpoint)
            if index is None:
                raise ValueError(f"policy {self.policy.name} routed unknown endpoint {endpoint}")
            self.gateway.set_split(index, weights)
        for endpoint, rate in decision.admission.items():
            index = self.endpoint_index.get(endpoint)
            if index is None:
                raise ValueError(f"policy {self.policy.name} limited unknown endpoint {endpoint}")
            self.gateway.set_admission(index, rate, now)
        wanted: dict[str, int] = {}
        for pool in self.pools.values():
            wanted[pool.gpu_type] = wanted.get(pool.gpu_type, 0) + pool.target * pool.gpus_per_replica
        if any(gpus > self.sim.inventory.get(gpu, 0) for gpu, gpus in wanted.items()):
            self.budget_violations += 1

    # ---- run --------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None) -> SimulationResult:
        started = time.perf_counter()
        self._progress = progress
        self._delivered = None
        wl = self.workload
        reqs = self.sim.requests
        reqs.load(wl.arrival_s, wl.input_tokens, wl.output_tokens, wl.endpoint)
        reqs.hashes = list(wl.hash_ids) if wl.hash_ids is not None else None
        # A window closes observation_delay_s before each tick (the first at or after 0 s; one that
        # closes at 0 s covers the time before the run, with no traffic); scheduled first, so a
        # window closing at a tick's own time is closed before the tick reads.
        first_window = math.ceil(self.delay_s / self.interval_s - 1e-9) * self.interval_s - self.delay_s
        if first_window < self.end_s - 1e-9:
            self.sim.schedule(first_window, EV_CALL, self._scrape)
        self.sim.schedule(0.0, EV_CALL, self._tick)
        try:
            self.sim.run(self.end_s, reqs.arrival, self._on_arrival)
        finally:
            self.policy.close()
        self._observe(self.end_s)  # the timeline's last interval (no policy call at the end)
        # No more arrivals or planning: let in-flight work finish (GPU time is counted to end_s only).
        stop = self.end_s
        while not self.sim.idle() and stop < self.end_s + DRAIN_GRACE_S:
            stop += 60.0
            self.sim.run(stop, reqs.arrival, self._on_arrival)
        for pool in self.pools.values():
            pool.account(self.end_s, 0)
        return self._result(time.perf_counter() - started)

    def _result(self, wall_s: float) -> SimulationResult:
        reqs = self.sim.requests
        arrival = np.asarray(reqs.arrival, dtype=np.float64)
        t_first = np.asarray(reqs.t_first, dtype=np.float64)
        t_finish = np.asarray(reqs.t_finish, dtype=np.float64)
        output = np.asarray(reqs.output, dtype=np.int64)
        rejected = np.asarray(reqs.rejected, dtype=bool)
        status = np.full(len(arrival), UNFINISHED, dtype=np.int8)
        status[~np.isnan(t_finish)] = COMPLETED
        status[rejected] = REJECTED
        with np.errstate(invalid="ignore", divide="ignore"):
            itl = np.where(output > 1, (t_finish - t_first) * 1000.0 / (output - 1), np.nan)
        records = RequestRecords(
            endpoint=np.asarray(reqs.endpoint, dtype=np.int32),
            deployment=np.asarray(reqs.deployment, dtype=np.int32),
            arrival_s=arrival,
            input_tokens=np.asarray(reqs.input, dtype=np.int64),
            output_tokens=output,
            ttft_ms=(t_first - arrival) * 1000.0,
            itl_ms=itl,
            e2e_ms=(t_finish - arrival) * 1000.0,
            status=status,
        )
        return SimulationResult(
            name=self.scenario.name,
            policy=self.policy.name,
            clairvoyant=self.policy.clairvoyant,
            seed=self.scenario.seed,
            duration_s=self.end_s,
            gpu_inventory=dict(self.scenario.gpus),
            endpoints=list(self.workload.endpoints),
            endpoint_sla=dict(self.endpoint_sla),
            deployments=self.specs,
            requests=records,
            timeline=self.timeline,
            decisions=self.decisions,
            gpu_seconds={key: pool.gpu_seconds for key, pool in self.pools.items()},
            scale_events=dict(self.scale_events),
            max_gpus_in_use=dict(self.sim.max_gpus_in_use),
            budget_violations=self.budget_violations,
            wall_seconds=wall_s,
            simulated_seconds=self.end_s,
            notes=self.profiles.warnings(),
        )
