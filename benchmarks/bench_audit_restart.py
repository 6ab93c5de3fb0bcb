"""Planner restart time against audit log size (issue 8, finding 9).

    .venv/bin/python benchmarks/bench_audit_restart.py --sizes-mb 16 64 256 --rotate-mb 16

Writes a state dir of round records the size of a 53-deployment fleet (two pools each, with
demand summaries) through :class:`AuditLog` (rotation on; fsync disabled while generating, on
``/dev/shm`` when it exists), then times what ``serve`` does on start: open the log (repair the
tail, read the snapshot and the current segment) and resume the state. For contrast it also
times reading the whole history, which is what the landed planner did on every restart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_planner.cli import guarded
from fleet_planner.contract.models import RoundRecord
from global_planner.policy_file import TenantPolicy
from global_planner.service.audit import AUDIT_FILE, AuditLog, read_all
from global_planner.service.state import PlannerState

DEPLOYMENTS = 53
POLICY = TenantPolicy.model_validate(
    {"fleet": {"gpus": {"h200": 256, "h100": 128}}, "tenants": {f"t{i}": {} for i in range(8)}}
)


def _record(decision_id: int) -> RoundRecord:
    demand = {
        "forecast_rps": 12.5,
        "upper_rps": 15.0,
        "demand_weight": 12.5,
        "ready": 3,
        "starting": 1,
        "draining": 0,
        "curve_points": 17,
        "attainment_at_grant": 0.97,
        "pessimistic_at_grant": 0.91,
    }
    deployments = []
    for index in range(DEPLOYMENTS):
        pools = [
            {
                "role": role,
                "gpu_type": "h200" if index % 2 else "h100",
                "gpus_per_replica": 1,
                "min_replicas": 1,
                "max_replicas": 16,
                "fallback_replicas": 1,
                "granted": 2,
                "usage": 2,
                "pending_release": None,
                "grant_decision_id": decision_id,
                "allocated": 2,
                "reason": "marginal attainment per GPU above the cut-off; gated: none",
                "demand": demand,
            }
            for role in ("prefill", "decode")
        ]
        deployments.append(
            {
                "deployment": f"deployment-{index:03d}",
                "tenant": f"t{index % 8}",
                "endpoint": f"endpoint-{index // 2:03d}",
                "lease_expires_s": 1e6 + decision_id * 5.0,
                "decision_id": decision_id,
                "bidding": True,
                "pools": pools,
            }
        )
    return RoundRecord.model_validate(
        {
            "decision_id": decision_id,
            "time_s": decision_id * 5.0,
            "status": "optimal",
            "objective": 1234.5,
            "gap": 0.0,
            "solve_ms": 42.0,
            "inventory": dict(POLICY.fleet.gpus),
            "held_gpus": {},
            "committed_gpus": {"h200": 106, "h100": 106},
            "tenant_gpus": {f"t{i}": {"h200": 12, "h100": 12} for i in range(8)},
            "routing": {f"endpoint-{i:03d}": {f"deployment-{2 * i:03d}": 0.5} for i in range(26)},
            "deployments": deployments,
        }
    )


def _fill(directory: Path, size_bytes: int, rotate_bytes: int) -> int:
    """Append records until the state dir holds ``size_bytes``; returns the last decision id."""
    template = _record(1)
    line = len(template.model_dump_json()) + 1
    count = max(1, size_bytes // line)
    with mock.patch("os.fsync"):
        audit = AuditLog(directory, rotate_bytes=rotate_bytes, keep_segments=10_000)
        for decision_id in range(1, count + 1):
            audit.append(template.model_copy(update={"decision_id": decision_id}))
        audit.close()
    return count


def _restart(directory: Path, rotate_bytes: int) -> tuple[float, int]:
    start = time.perf_counter()
    audit = AuditLog(directory, rotate_bytes=rotate_bytes)
    state = PlannerState(POLICY)
    state.resume(audit.recovery, 0.0)
    elapsed = time.perf_counter() - start
    audit.close()
    return elapsed, state.next_decision_id


def _read_everything(directory: Path) -> float:
    start = time.perf_counter()
    last = None
    for record in read_all(directory):
        last = record
    assert last is not None
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[16, 64, 256])
    parser.add_argument("--rotate-mb", type=float, default=16)
    args = parser.parse_args()
    rotate = int(args.rotate_mb * (1 << 20))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    line = len(_record(1).model_dump_json()) + 1
    print(f"record: {line / 1024:.1f} KB ({DEPLOYMENTS} deployments); segments rotate at {args.rotate_mb:g} MB")
    print("log size   records   current segment   restart (ms, median of 5)   read whole history (ms)")
    for size_mb in args.sizes_mb:
        with tempfile.TemporaryDirectory(prefix="fleet-audit-", dir=base) as folder:
            directory = Path(folder)
            count = _fill(directory, int(size_mb * (1 << 20)), rotate)
            runs = [_restart(directory, rotate) for _ in range(5)]
            assert all(next_id == count + 1 for _, next_id in runs)
            restart_s = statistics.median(elapsed for elapsed, _ in runs)
            current_mb = (directory / AUDIT_FILE).stat().st_size / (1 << 20)
            full_s = _read_everything(directory)
        print(f"{size_mb:7g} MB {count:9d} {current_mb:14.1f} MB {restart_s * 1000:27.0f} {full_s * 1000:24.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
