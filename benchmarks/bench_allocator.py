"""Allocator speed and optimality gap on a seeded, short-of-GPUs fleet.

    .venv/bin/python benchmarks/bench_allocator.py --pools 1000 --repeat 7

Fleet: pools/2 disaggregated deployments (prefill + decode pair), 3 GPU types, 50 tenants with
priorities, guarantees and caps, S-shaped and concave curves of 16-32 points (normal CDF of
capacity against an uncertain load), inventory ~70% of what would saturate every pool.
Runs cold (no previous allocation) and warm (hinted by the previous answer), reports median and
p90 wall time per ``allocate`` call (everything: preparation, greedy, dual bound, CP-SAT when it
runs; ``--time-limit`` bounds the whole call), the worst optimality gap against the proven upper
bound, and the status counts. Target (issue 4): median <= 250 ms for 1,000 pools.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from global_planner.allocation import (
    Allocation,
    AllocationRequest,
    PoolDemand,
    PoolOverride,
    TenantLimits,
    allocate,
)

GPU_TYPES = ("h200", "h100", "a100")


def _curve(load_rps: float, spread: float, capacity_rps: float, points: int) -> list[float]:
    """P(load <= capacity of k replicas) for a normal load: the attainment an agent would report."""
    return [
        round(0.5 * (1 + math.erf((k * capacity_rps - load_rps) / (spread * math.sqrt(2)))), 4) for k in range(points)
    ]


def fleet_request(pools: int = 1000, seed: int = 0, tenants: int = 50, shortage: float = 0.7) -> AllocationRequest:
    """A reproducible fleet with ``pools`` pools in prefill/decode pairs and a GPU shortage."""
    rng = random.Random(seed)
    names = [f"t{i:02d}" for i in range(tenants)]
    demands: list[PoolDemand] = []
    needed: dict[tuple[str, str], int] = {}
    for d in range(pools // 2):
        tenant = rng.choice(names)
        gpu_type = rng.choice(GPU_TYPES)
        load = rng.lognormvariate(3.0, 1.0)
        spread = load * rng.uniform(0.05, 0.4)
        endpoint = f"ep{d // 2}" if d % 7 == 0 else f"ep-{d}"
        for role, sizes in (("prefill", (1, 2)), ("decode", (1, 2, 4))):
            points = rng.randint(16, 32)
            saturate = rng.randint(2, points - 4)
            capacity = (load + 2.5 * spread) / saturate
            curve = _curve(load, spread, capacity, points)
            gpus = rng.choice(sizes)
            demands.append(
                PoolDemand(
                    deployment=f"d{d:04d}",
                    tenant=tenant,
                    endpoint=endpoint,
                    role=role,
                    gpu_type=gpu_type,
                    gpus_per_replica=gpus,
                    min_replicas=rng.choice((0, 0, 1)),
                    max_replicas=points - 1,
                    current_replicas=max(0, saturate + rng.randint(-3, 3)),
                    curve=curve,
                    demand_weight=load,
                    pair_group=f"d{d:04d}",
                    replica_capacity_rps=capacity,
                )
            )
            key = (tenant, gpu_type)
            needed[key] = needed.get(key, 0) + saturate * gpus
    inventory = {gpu: int(shortage * sum(n for (_, g), n in needed.items() if g == gpu)) for gpu in GPU_TYPES}
    limits: dict[str, TenantLimits] = {}
    promised = dict.fromkeys(GPU_TYPES, 0)
    for name in names:
        mine = {g: n for (t, g), n in needed.items() if t == name}
        guaranteed: dict[str, int] = {}
        caps: dict[str, int] = {}
        if rng.random() < 0.3:
            for gpu, n in mine.items():
                floor = int(n * rng.uniform(0.1, 0.4))
                if promised[gpu] + floor <= inventory[gpu] // 2:
                    guaranteed[gpu] = floor
                    promised[gpu] += floor
        if rng.random() < 0.3:
            caps = {gpu: max(guaranteed.get(gpu, 0), int(n * rng.uniform(0.5, 0.9))) for gpu, n in mine.items()}
        limits[name] = TenantLimits(
            priority=rng.choice((1, 2, 5, 10, 20, 50, 100)), guaranteed_gpus=guaranteed, max_gpus=caps
        )
    overrides = [
        PoolOverride(selector=f"{name}/*", max_step=rng.choice((1, 2, 4)), churn_weight=0.01)
        for name in names
        if rng.random() < 0.2
    ]
    return AllocationRequest(
        pools=demands, inventory=inventory, tenants=limits, overrides=overrides, held_gpus={"h100": 4}, seed=seed
    )


def _summary(label: str, runs: list[Allocation]) -> dict[str, object]:
    times = sorted(run.solve_ms for run in runs)
    gaps = [run.gap for run in runs if run.gap is not None]
    return {
        "mode": label,
        "runs": len(runs),
        "median_ms": round(statistics.median(times), 1),
        "p90_ms": round(times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)], 1),
        "max_gap": max(gaps) if gaps else None,
        "objective": round(runs[-1].objective, 3),
        "best_bound": None if runs[-1].best_bound is None else round(runs[-1].best_bound, 3),
        "statuses": {s: sum(run.status == s for run in runs) for s in sorted({run.status for run in runs})},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--time-limit", type=float, default=0.2, help="time limit per allocate call, preparation included (s)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    started = perf_counter()
    request = fleet_request(args.pools, args.seed).model_copy(update={"time_limit_s": args.time_limit})
    build_s = perf_counter() - started
    cold = [allocate(request) for _ in range(args.repeat)]
    warm: list[Allocation] = []
    previous = cold[0]
    for _ in range(args.repeat):
        previous = allocate(request.model_copy(update={"previous": previous.replicas}))
        warm.append(previous)
    report = {
        "pools": len(request.pools),
        "inventory": request.inventory,
        "request_build_s": round(build_s, 3),
        "results": [_summary("cold", cold), _summary("warm", warm)],
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['pools']} pools, inventory {request.inventory}, fleet built in {build_s:.2f}s")
    for row in report["results"]:
        gap = "n/a" if row["max_gap"] is None else f"{100 * row['max_gap']:.2f}%"
        print(
            f"{row['mode']:>4}: median {row['median_ms']} ms, p90 {row['p90_ms']} ms, optimality gap {gap} "
            f"(objective {row['objective']}, proven bound {row['best_bound']}), statuses {row['statuses']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
