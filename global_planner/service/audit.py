"""Decision audit log: one JSON line per allocation round, in rotated segments, plus a snapshot.

A state dir holds::

    decisions.jsonl                    the current segment (append-only)
    decisions-<last decision>.jsonl    rotated segments (the oldest beyond ``keep_segments`` deleted)
    snapshot.json                      the last record of the newest rotated segment

Every record carries the whole grant/lease state, so a restart needs only the newest readable
record: it reads the current segment backwards from its end (the snapshot when the segment holds
none), never the history. Rotated segments are kept for ``explain`` only; an operator may archive
them.

Crash safety (the planner is killed at any byte):

* A round is appended and fsynced *before* its grants take effect, so the log knows every grant
  and lease an agent may hold.
* A torn tail (bytes after the last newline: a write that never completed, so a round never
  committed) is truncated before anything is appended: a new record never lands on a fragment.
* Decision ids are never reused: the restart continues after the highest id found anywhere in the
  current segment and the snapshot, including in torn or unreadable lines whose prefix still names
  one (records are written with ``decision_id`` first).
* An unreadable line (bit rot, non-UTF-8 bytes, a bad edit) is skipped and reported with file and
  line, never fatal. When such a line is *newer* than every readable record, ``newest_lost`` says
  so and the planner starts in quarantine (see ``PlannerState.resume``).
* Rotation writes the snapshot (temporary file, fsync, atomic rename, directory fsync) before it
  renames the segment, so a crash between any two steps leaves a restartable directory.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from fleet_planner.contract.models import RoundRecord
from fleet_planner.errors import InputError, unreadable

log = logging.getLogger(__name__)

AUDIT_FILE = "decisions.jsonl"
SNAPSHOT_FILE = "snapshot.json"
DEFAULT_ROTATE_BYTES = 64 << 20
DEFAULT_KEEP_SEGMENTS = 16
_ID_PREFIX = re.compile(rb'^\s*\{"decision_id":\s*(\d{1,19})')
_SEGMENT = re.compile(r"^decisions-(\d+)\.jsonl$")


@dataclass
class Recovery:
    """What a restart learns from the state dir."""

    record: RoundRecord | None = None
    high_water: int = 0
    newest_lost: bool = False
    problems: list[str] = field(default_factory=list)


def _parse(line: bytes, where: str) -> RoundRecord:
    """One record, or :class:`InputError` naming ``where`` (file:line) and what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"not UTF-8 (byte {error.start} of the line)", file=where) from error
    try:
        return RoundRecord.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InputError(f"unreadable audit record: {loc + ': ' if loc else ''}{first['msg']}", file=where) from error


def _id_prefix(line: bytes) -> int:
    match = _ID_PREFIX.match(line)
    return int(match.group(1)) if match else 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_torn_tail(path: Path) -> int:
    """Truncate bytes after the last newline (a torn write); returns the fragment's decision id
    (0 if it names none). The fragment was never committed, so nothing refers to it."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            step = 1 << 16
            end = size
            while end > 0:
                start = max(0, end - step)
                handle.seek(start)
                chunk = handle.read(end - start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                end = start
            else:
                keep = 0
            if keep == size:
                return 0
            handle.seek(keep)
            fragment = handle.read(min(size - keep, 64))
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return 0
    log.warning("%s: truncated a torn last line (%d bytes, never committed)", path, size - keep)
    return _id_prefix(fragment)


def _scan_back(path: Path, recovery: Recovery) -> RoundRecord | None:
    """The newest readable record of a segment, reading blocks from its end (restart time does
    not grow with the segment); newer unreadable lines are reported."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return None
    except OSError as error:
        raise InputError(f"cannot read: {unreadable(error)}", file=path) from error
    with handle:
        pos = handle.seek(0, os.SEEK_END)
        carry = b""  # the start of a line whose beginning is not read yet
        while True:
            start = max(0, pos - (1 << 20))
            handle.seek(start)
            lines = (handle.read(pos - start) + carry).split(b"\n")
            carry = lines.pop(0) if start > 0 else b""
            offset = start + (len(carry) + 1 if start > 0 else 0)
            offsets = []
            for line in lines:
                offsets.append(offset)
                offset += len(line) + 1
            for line, at in zip(reversed(lines), reversed(offsets), strict=True):
                if not line.strip():
                    continue
                recovery.high_water = max(recovery.high_water, _id_prefix(line))
                try:
                    return _parse(line, str(path))
                except InputError as error:
                    problem = f"{path}:{_line_number(handle, at)}: {error.problem}"
                    recovery.problems.append(problem)
                    recovery.newest_lost = True
                    log.warning("%s (skipped)", problem)
            if start == 0:
                return None
            pos = start


def _line_number(handle: BinaryIO, offset: int) -> int:
    """The 1-based line at byte ``offset`` (counted only when a message needs it)."""
    handle.seek(0)
    newlines, left = 0, offset
    while left > 0:
        chunk = handle.read(min(left, 1 << 20))
        if not chunk:
            break
        newlines += chunk.count(b"\n")
        left -= len(chunk)
    return newlines + 1


def recover(state_dir: str | Path, *, repair: bool = True) -> Recovery:
    """Read what a restart needs: the newest readable record and the decision-id high-water mark.

    ``repair`` truncates a torn tail first (the planner does; ``explain`` only reads)."""
    directory = Path(state_dir)
    current = directory / AUDIT_FILE
    recovery = Recovery()
    if repair:
        recovery.high_water = seal_torn_tail(current)
    record = _scan_back(current, recovery)
    snapshot = directory / SNAPSHOT_FILE
    if snapshot.exists():
        try:
            saved: RoundRecord | None = _parse(snapshot.read_bytes().strip(), str(snapshot))
        except InputError as error:
            recovery.problems.append(str(error))
            log.warning("%s (skipped)", error)
            saved = None
            if record is None:
                recovery.newest_lost = True
        if saved is not None:
            recovery.high_water = max(recovery.high_water, saved.decision_id)
            if record is None or saved.decision_id > record.decision_id:
                record = saved
    if record is not None:
        recovery.high_water = max(recovery.high_water, record.decision_id)
    recovery.record = record
    return recovery


class AuditLog:
    """Appends round records to ``<state_dir>/decisions.jsonl``, rotating it past ``rotate_bytes``.

    Opening it repairs a torn tail and reads what a restart needs (``recovery``)."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        keep_segments: int = DEFAULT_KEEP_SEGMENTS,
    ):
        if rotate_bytes <= 0 or keep_segments < 0:
            raise ValueError("rotate_bytes must be > 0 and keep_segments >= 0")
        self.dir = Path(state_dir)
        self.path = self.dir / AUDIT_FILE
        self.rotate_bytes = rotate_bytes
        self.keep_segments = keep_segments
        self.dir.mkdir(parents=True, exist_ok=True)
        self.recovery = recover(self.dir)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for appends

    def append(self, record: RoundRecord) -> None:
        """Durably append; raises on I/O failure so the round is not committed."""
        self._file.write(record.model_dump_json().encode("utf-8") + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._file.tell() >= self.rotate_bytes:
            self._rotate(record)

    def _rotate(self, last: RoundRecord) -> None:
        """Snapshot first, then move the segment aside: every crash point leaves a restartable dir."""
        snapshot = self.dir / SNAPSHOT_FILE
        partial = snapshot.with_suffix(".tmp")
        with open(partial, "wb") as handle:
            handle.write(last.model_dump_json().encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, snapshot)
        _fsync_dir(self.dir)
        self._file.close()
        os.replace(self.path, self.dir / f"decisions-{last.decision_id:012d}.jsonl")
        _fsync_dir(self.dir)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for appends
        for old in segments(self.dir)[: -self.keep_segments or None]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()


def segments(state_dir: str | Path) -> list[Path]:
    """Rotated segments, oldest first (the current ``decisions.jsonl`` not included)."""
    found = [(int(m.group(1)), p) for p in Path(state_dir).glob("decisions-*.jsonl") if (m := _SEGMENT.match(p.name))]
    return [p for _, p in sorted(found)]


def read_records(path: str | Path) -> Iterator[RoundRecord]:
    """Every readable record of one file in order; unreadable lines are logged (file:line) and skipped."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    except OSError as error:
        raise InputError(f"cannot read: {unreadable(error)}", file=path) from error
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield _parse(line.rstrip(b"\n"), f"{path}:{number}")
            except InputError as error:
                log.warning("%s (skipped)", error)


def read_all(state_dir: str | Path) -> Iterator[RoundRecord]:
    """Every readable record of the rotated segments and the current one, oldest first."""
    for path in [*segments(state_dir), Path(state_dir) / AUDIT_FILE]:
        yield from read_records(path)


def last_record(path: str | Path) -> RoundRecord | None:
    """The newest readable record of one file (read from its end)."""
    return _scan_back(Path(path), Recovery())


def find_record(state_dir: str | Path, decision_id: int) -> RoundRecord:
    for record in read_all(state_dir):
        if record.decision_id == decision_id:
            return record
    raise InputError(f"no decision {decision_id} in the audit log", file=Path(state_dir) / AUDIT_FILE)


def explain(record: RoundRecord) -> str:
    """Why each pool got what it got in one round, for people."""
    lines = [
        f"decision {record.decision_id} at t={record.time_s:.1f}s ({record.trigger}): allocator {record.status}"
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
        lease = f"lease until {dep.lease_expires_s:.1f}s"
        lines.append(f"{dep.deployment} (tenant {dep.tenant}, endpoint {dep.endpoint}, {state}, {lease})")
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
    for endpoint, split in record.splits.items():
        shares = ", ".join(f"{d} {share:.0%}" for d, share in split.shares.items())
        lines.append(f"split {endpoint}: {shares} - {split.reason} ({split.changes} move(s) so far)")
    for endpoint, admitted in record.admission_rps.items():
        lines.append(
            f"admission {endpoint}: at most {admitted:.2f} requests/s"
            " (capacity short of the planned load; the rest is shed)"
        )
    return "\n".join(lines)


def _per_type(gpus: dict[str, int]) -> str:
    return ", ".join(f"{count} {gpu}" for gpu, count in sorted(gpus.items())) or "none"
