"""Closed-loop benchmark on the simulated engine, the way serving benchmarks measure real ones:
``concurrency`` clients each send a fixed-size request as soon as their previous one finished.
Used to check the simulator against measured end-to-end numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel
from fleet_planner.planning import PoolRole
from fleet_sim.engine import EngineConfig, Pool, Simulator


@dataclass(frozen=True)
class ClosedLoopResult:
    ttft_ms: float  # mean time to first token
    tpot_ms: float  # mean time per output token after the first
    requests: int  # requests measured (after warm-up)
    throughput_rps: float


def run_closed_loop(
    model: PerfModel,
    *,
    mode: str = "agg",
    concurrency: int,
    isl: int,
    osl: int,
    knobs: EngineKnobs = EngineKnobs(),
    requests_per_client: int = 10,
    warmup_requests_per_client: int = 0,
) -> ClosedLoopResult:
    """Run ``concurrency`` clients against one replica (or one prefill + one decode replica).

    Like common serving benchmarks, all clients start together on an idle engine and every request
    counts (the start-up burst included); ``warmup_requests_per_client`` discards early ones."""
    if concurrency < 1 or isl < 1 or osl < 1:
        raise ValueError("concurrency, isl and osl must be >= 1")
    if mode not in ("agg", "disagg"):
        raise ValueError(f"mode must be agg or disagg, got {mode!r}")
    sim = Simulator({"gpu": 2 * model.gpus_per_engine}, end_s=math.inf)
    entry = _one_replica_per_pool(sim, model, mode, knobs)

    warmup = warmup_requests_per_client * concurrency
    wanted = warmup + requests_per_client * concurrency
    measured: list[int] = []
    completions = 0

    def send(now: float) -> None:
        request = sim.requests.add(now, isl, osl, 0)
        entry.router.submit(request, now)

    def on_complete(request: int, now: float) -> None:
        nonlocal completions
        completions += 1
        if completions > warmup:
            measured.append(request)
        if completions + concurrency <= wanted:
            send(now)

    sim.on_complete = on_complete
    for _ in range(concurrency):
        send(0.0)
    horizon = 0.0
    while completions < wanted:
        horizon += 60.0
        sim.run(horizon, [], lambda i, t: None)
    reqs = sim.requests
    ttft = [(reqs.t_first[r] - reqs.arrival[r]) * 1000.0 for r in measured]
    tpot = [(reqs.t_finish[r] - reqs.t_first[r]) * 1000.0 / (osl - 1) for r in measured] if osl > 1 else [0.0]
    span = max(reqs.t_finish[r] for r in measured) - min(reqs.arrival[r] for r in measured)
    return ClosedLoopResult(
        ttft_ms=sum(ttft) / len(ttft),
        tpot_ms=sum(tpot) / len(tpot),
        requests=len(measured),
        throughput_rps=len(measured) / span if span > 0 else math.inf,
    )


def _one_replica_per_pool(sim: Simulator, model: PerfModel, mode: str, knobs: EngineKnobs) -> Pool:
    """One ready replica (agg), or one prefill and one decode replica (disagg); returns the pool
    requests enter."""
    roles: list[PoolRole] = ["agg"] if mode == "agg" else ["prefill", "decode"]
    pools = {}
    for role in roles:
        pool = Pool(sim, 0, "bench", role, model, "gpu", model.gpus_per_engine, 0.0, EngineConfig(knobs=knobs), None)
        sim.pools.append(pool)
        pool.set_target(1, 0.0)
        pools[role] = pool
    if mode == "disagg":
        pools["prefill"].next_pool = pools["decode"]
    for pool in pools.values():
        pool.on_ready(pool.replicas[0], 0.0)
    return pools[roles[0]]
