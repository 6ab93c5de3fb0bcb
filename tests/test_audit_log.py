"""The audit log under crashes and corruption (issue 8, findings 2, 3 and 9): a torn tail is
truncated before anything is appended, decision ids are never reused, unreadable bytes are skipped
and named (file:line), and rotation keeps restarts bounded without losing the safety guarantees."""

from __future__ import annotations

import logging
import random

import pytest

from fleet_planner.contract.models import AgentReport, Forecast, PoolRegistration, PoolReport, Registration
from global_planner.allocation import allocate_greedy
from global_planner.cli import main as cli_main
from global_planner.policy_file import TenantPolicy
from global_planner.service.audit import (
    AUDIT_FILE,
    SNAPSHOT_FILE,
    AuditLog,
    find_record,
    read_all,
    recover,
    segments,
)
from global_planner.service.state import PlannerState

POLICY = TenantPolicy.model_validate({"fleet": {"gpus": {"h200": 32}}, "tenants": {"acme": {}, "beta": {}}})


def _fleet(n: int = 3) -> PlannerState:
    state = PlannerState(POLICY, lease_s=1e9)
    for index in range(n):
        name = f"d{index}"
        pool = PoolRegistration(role="agg", gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8)
        state.register(Registration(deployment=name, tenant="acme", endpoint=name, pools=[pool]), f"s{index}", 0.0)
    return state


def _round(state: PlannerState, audit: AuditLog, now: float, seq: int):
    for index, name in enumerate(state.deployments()):
        rps = 1.0 + (seq * 7 + index * 3) % 10
        report = AgentReport(
            deployment=name,
            session_id=f"s{index}",
            sequence=seq,
            applied_decision_id=state.next_decision_id - 1,
            forecast=Forecast(mean_rps=rps, upper_rps=rps),
            pools=[PoolReport(role="agg", ready=0, curve=[min(1.0, k / 5) for k in range(9)])],
        )
        state.report(report, now)
    round_ = state.plan(now, solve=allocate_greedy)
    audit.append(round_.record)
    return state.commit(round_)


def _restart(directory, **kw) -> tuple[PlannerState, AuditLog]:
    audit = AuditLog(directory, **kw)
    state = _fleet(0)
    state.resume(audit.recovery, 0.0)
    return state, audit


def test_2_torn_tail_is_truncated_and_ids_never_reused(tmp_path) -> None:
    """The probe: kill -9 mid-write twice. The landed planner appended onto the fragment (the next
    record unreadable: ``explain N`` -> no decision N), then restored an older record."""
    state, audit = _fleet(), AuditLog(tmp_path)
    issued = [_round(state, audit, float(t), t + 1).decision_id for t in range(3)]
    audit.close()
    path = tmp_path / AUDIT_FILE
    for crash in range(2):
        line = path.read_bytes().splitlines()[-1]
        torn_id = issued[-1] + 1
        fragment = line.replace(f'"decision_id":{issued[-1]}'.encode(), f'"decision_id":{torn_id}'.encode())
        with open(path, "ab") as handle:
            handle.write(fragment[: len(fragment) // 2])  # killed mid-write: no newline
        restarted, audit = _restart(tmp_path)
        assert path.read_bytes().endswith(b"\n"), "the torn tail is gone before any append"
        assert restarted.next_decision_id == torn_id + 1, "not even the torn (never committed) id is reused"
        restarted.register(
            Registration(
                deployment="d0",
                tenant="acme",
                endpoint="d0",
                pools=[
                    PoolRegistration(role="agg", gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8)
                ],
            ),
            "s0",
            0.0,
        )
        restarted.report(
            AgentReport(
                deployment="d0",
                session_id="s0",
                sequence=1,
                forecast=Forecast(mean_rps=3, upper_rps=3),
                pools=[PoolReport(role="agg", curve=[0.0, 0.5, 1.0])],
            ),
            1.0,
        )
        round_ = restarted.plan(10.0 + crash, solve=allocate_greedy)
        audit.append(round_.record)
        restarted.commit(round_)
        audit.close()
        issued.append(round_.decision_id)
        assert find_record(tmp_path, round_.decision_id).decision_id == round_.decision_id
    ids = [r.decision_id for r in read_all(tmp_path)]
    assert ids == sorted(set(ids)) and ids[-1] == issued[-1]
    assert recover(tmp_path).record.decision_id == issued[-1]


@pytest.mark.parametrize("seed", range(25))
def test_2_randomized_crashes_never_reuse_ids_or_lose_commits(tmp_path, seed: int) -> None:
    """Crash at a random byte of a random append (possibly during rotation), restart, go on."""
    rng = random.Random(seed)
    rotate = rng.choice([2_000, 5_000, 1 << 20])
    state, audit = _fleet(), AuditLog(tmp_path, rotate_bytes=rotate, keep_segments=2)
    committed: list[int] = []
    seq = 1
    for _ in range(30):
        seq += 1
        if rng.random() < 0.25:  # kill -9 during this append
            round_ = state.plan(float(seq), solve=allocate_greedy)
            line = round_.record.model_dump_json().encode() + b"\n"
            with open(tmp_path / AUDIT_FILE, "ab") as handle:
                handle.write(line[: rng.randrange(0, len(line))])
            audit.close()
            state, audit = _restart(tmp_path, rotate_bytes=rotate, keep_segments=2)
            assert state.next_decision_id > max(committed, default=0)
            assert audit.recovery.record is None or audit.recovery.record.decision_id == max(committed, default=0)
            for index in range(3):  # agents come back
                name = f"d{index}"
                pool = PoolRegistration(role="agg", gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8)
                state.register(
                    Registration(deployment=name, tenant="acme", endpoint=name, pools=[pool]), f"s{index}", 0.0
                )
            continue
        committed.append(_round(state, audit, float(seq), seq).decision_id)
        assert state.committed_gpus()["h200"] <= 32
    audit.close()
    assert committed == sorted(set(committed))
    assert recover(tmp_path).record.decision_id == committed[-1]
    readable = [r.decision_id for r in read_all(tmp_path)]
    assert readable == sorted(set(readable)) and set(readable) <= set(committed)


def test_3_non_utf8_bytes_are_skipped_and_named(tmp_path, caplog, capsys) -> None:
    """The probe: non-UTF-8 bytes crashed ``serve`` and ``explain`` with a bare UnicodeDecodeError."""
    state, audit = _fleet(), AuditLog(tmp_path)
    ids = [_round(state, audit, float(t), t + 1).decision_id for t in range(3)]
    audit.close()
    path = tmp_path / AUDIT_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"\xff\xfe" + lines[1][2:]  # bit rot in the middle
    path.write_bytes(b"".join(lines))
    caplog.set_level(logging.WARNING)
    restarted, audit = _restart(tmp_path)
    audit.close()
    assert restarted.next_decision_id == ids[-1] + 1 and not audit.recovery.newest_lost
    assert cli_main(["explain", str(ids[2]), "--state-dir", str(tmp_path)]) == 0
    assert f"decision {ids[2]}" in capsys.readouterr().out
    assert any(f"{path}:2: not UTF-8" in r.getMessage() for r in caplog.records)
    assert cli_main(["explain", str(ids[1]), "--state-dir", str(tmp_path)]) == 2
    assert f"no decision {ids[1]}" in capsys.readouterr().err


def test_3_unreadable_newest_record_starts_in_quarantine(tmp_path) -> None:
    state, audit = _fleet(), AuditLog(tmp_path)
    ids = [_round(state, audit, float(t), t + 1).decision_id for t in range(3)]
    audit.close()
    path = tmp_path / AUDIT_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1][:40] + b"\xc3\x28" + lines[-1][42:]  # the newest record, complete but corrupt
    path.write_bytes(b"".join(lines))
    restarted, audit = _restart(tmp_path)
    assert audit.recovery.newest_lost and audit.recovery.record.decision_id == ids[1]
    assert restarted.next_decision_id == ids[2] + 1, "the corrupt line's id prefix still counts"
    assert restarted.quarantine_until_s == restarted.lease_s
    restarted.register(
        Registration(
            deployment="new",
            tenant="beta",
            endpoint="new",
            pools=[PoolRegistration(role="agg", gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8)],
        ),
        "sn",
        1.0,
    )
    restarted.report(
        AgentReport(
            deployment="new",
            session_id="sn",
            sequence=1,
            forecast=Forecast(mean_rps=5, upper_rps=5),
            pools=[PoolReport(role="agg", curve=[0.0, 0.5, 1.0])],
        ),
        1.0,
    )
    quarantined = restarted.plan(2.0, solve=allocate_greedy)
    assert quarantined.updates[("new", "agg")].grant == 0 and "quarantine" in quarantined.updates[("new", "agg")].reason


def test_9_rotation_bounds_the_restart_and_keeps_explain(tmp_path) -> None:
    state, audit = _fleet(), AuditLog(tmp_path, rotate_bytes=4_000, keep_segments=3)
    ids = [_round(state, audit, float(t), t + 1).decision_id for t in range(60)]
    audit.close()
    kept = segments(tmp_path)
    assert len(kept) == 3 and (tmp_path / SNAPSHOT_FILE).exists()
    assert (tmp_path / AUDIT_FILE).stat().st_size < 4_000 + 2_000
    recovery = recover(tmp_path)
    assert recovery.record.decision_id == ids[-1] and recovery.high_water == ids[-1]
    on_disk = [r.decision_id for r in read_all(tmp_path)]
    assert on_disk == sorted(on_disk) and on_disk[-1] == ids[-1] and on_disk[0] > ids[0]  # oldest deleted
    assert find_record(tmp_path, on_disk[0]).decision_id == on_disk[0]


def test_9_crash_between_rotation_steps_restarts_from_the_snapshot(tmp_path) -> None:
    """Killed after the segment was moved aside, before a new one was opened; the operator has
    archived the old segments elsewhere. The snapshot alone restarts the planner."""
    state, audit = _fleet(), AuditLog(tmp_path)
    ids = [_round(state, audit, float(t), t + 1).decision_id for t in range(5)]
    audit._rotate(state_record := find_record(tmp_path, ids[-1]))
    audit.close()
    (tmp_path / AUDIT_FILE).unlink()
    for archive in segments(tmp_path):
        archive.unlink()
    restarted, audit = _restart(tmp_path)
    assert audit.recovery.record == state_record and not audit.recovery.newest_lost
    assert restarted.next_decision_id == ids[-1] + 1
    assert restarted.committed_gpus() == state.committed_gpus()


def test_3_restart_names_the_line_of_an_unreadable_newest_record(tmp_path, caplog) -> None:
    state, audit = _fleet(), AuditLog(tmp_path)
    for t in range(4):
        _round(state, audit, float(t), t + 1)
    audit.close()
    path = tmp_path / AUDIT_FILE
    with open(path, "ab") as handle:
        handle.write(b'{"decision_id":99, "bad\xff"}\n\n')
    caplog.set_level(logging.WARNING)
    recovery = recover(tmp_path)
    assert recovery.record.decision_id == 4 and recovery.high_water == 99 and recovery.newest_lost
    assert recovery.problems == [f"{path}:5: not UTF-8 (byte 23 of the line)"]
