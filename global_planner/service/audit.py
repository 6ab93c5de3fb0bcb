"""Append-only decision audit log (``decisions.jsonl``): one line per allocation round.

A round is appended and fsynced *before* its grants take effect, so the log always knows every
grant and lease an agent may hold: it is both the record ``explain`` reads and the state a
restarted planner resumes from. A torn last line (crash mid-write) is skipped, never fatal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from fleet_planner.errors import InputError
from fleet_planner.contract.models import RoundRecord

log = logging.getLogger(__name__)

AUDIT_FILE = "decisions.jsonl"


class AuditLog:
    """Appends round records to ``<state_dir>/decisions.jsonl``."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / AUDIT_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for appends

    def append(self, record: RoundRecord) -> None:
        """Durably append; raises on I/O failure so the round is not committed."""
        self._file.write(record.model_dump_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_records(path: str | Path) -> Iterator[RoundRecord]:
    """Every valid record in order; unreadable lines are logged and skipped."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    except OSError as error:
        raise InputError(f"cannot read: {error.strerror or error}", file=path) from error
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield RoundRecord.model_validate_json(line)
            except ValidationError:
                log.warning("%s:%d: skipping an unreadable audit record", path, number)


def last_record(path: str | Path) -> RoundRecord | None:
    last = None
    for record in read_records(path):
        last = record
    return last


def find_record(path: str | Path, decision_id: int) -> RoundRecord:
    for record in read_records(path):
        if record.decision_id == decision_id:
            return record
    raise InputError(f"no decision {decision_id} in the audit log", file=path)


def explain(record: RoundRecord) -> str:
    """Why each pool got what it got in one round, for people."""
    lines = [
        f"decision {record.decision_id} at t={record.time_s:.1f}s: allocator {record.status}"
        + (f", {record.solve_ms:.1f} ms" if record.solve_ms is not None else "")
        + (f", gap {record.gap:.2%}" if record.gap is not None else ""),
        "inventory: "
        + _per_type(record.inventory)
        + f"; committed (granted + draining): {_per_type(record.committed_gpus)}"
        + f"; held off the budget: {_per_type(record.held_gpus)}",
    ]
    for tenant, gpus in record.tenant_gpus.items():
        lines.append(f"tenant {tenant}: {_per_type(gpus)}")
    for dep in record.deployments:
        state = "bidding" if dep.bidding else "not bidding"
        lines.append(
            f"{dep.deployment} (tenant {dep.tenant}, endpoint {dep.endpoint}, {state}, lease until {dep.lease_expires_s:.1f}s)"
        )
        for pool in dep.pools:
            size = f"{pool.gpu_type} x{pool.gpus_per_replica}"
            line = f"  {pool.role} [{size}, min {pool.min_replicas}, max {pool.max_replicas}]: granted {pool.granted}"
            if pool.allocated is not None and pool.allocated != pool.granted:
                line += f" (allocator wanted {pool.allocated})"
            if pool.usage != pool.granted:
                line += f", {pool.usage - pool.granted} more still held until a drain is confirmed"
            line += f" - {pool.reason}"
            lines.append(line)
            demand = pool.demand
            if demand is not None:
                rate = (
                    "no rate"
                    if demand.forecast_rps is None
                    else f"forecast {demand.forecast_rps:.2f} rps (upper {demand.upper_rps:.2f})"
                )
                at = (
                    ""
                    if demand.attainment_at_grant is None
                    else f", attainment at grant {demand.attainment_at_grant:.3f}"
                )
                if demand.pessimistic_at_grant is not None:
                    at += f" (pessimistic {demand.pessimistic_at_grant:.3f})"
                lines.append(
                    f"    demand: {rate}, weight {demand.demand_weight:.2f}, {demand.curve_points}-point curve{at}; "
                    f"ready {demand.ready}, starting {demand.starting}, draining {demand.draining}"
                )
    for endpoint, weights in record.routing.items():
        lines.append(f"routing {endpoint}: " + ", ".join(f"{d} {w:.0%}" for d, w in weights.items()))
    for endpoint, rate in record.admission_rps.items():
        lines.append(
            f"admission {endpoint}: at most {rate:.2f} requests/s (capacity short of the planned load; the rest is shed)"
        )
    return "\n".join(lines)


def _per_type(gpus: dict[str, int]) -> str:
    return ", ".join(f"{count} {gpu}" for gpu, count in sorted(gpus.items())) or "none"
