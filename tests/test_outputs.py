"""Run outputs: exact attainment/GPU-hour arithmetic, NaN-free JSON, row files and an offline report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fleet_planner.planning import SLA, DeploymentSpec, PoolSpec
from fleet_sim.outputs import TIMELINE_COLUMNS, scaling_stability, summarize, write_outputs
from fleet_sim.outputs.report import MAX_POINTS, _pool_series
from fleet_sim.outputs.summary import PERCENTILES, _group_percentiles
from fleet_sim.results import (
    COMPLETED,
    REJECTED,
    UNFINISHED,
    DecisionRecord,
    RequestRecords,
    SimulationResult,
    TimelineRow,
)

NAN = math.nan
C, R, U = COMPLETED, REJECTED, UNFINISHED


def _pool(deployment: str, role: str, gpu_type: str, gpus: int = 1) -> PoolSpec:
    return PoolSpec(
        deployment=deployment,
        role=role,
        profile_path="p.json",
        gpu_type=gpu_type,
        gpus_per_replica=gpus,
        min_replicas=0,
        max_replicas=8,
        initial_replicas=1,
        startup_s=60,
    )


def _deployment(name: str, tenant: str, endpoint: str, pools: dict[str, PoolSpec]) -> DeploymentSpec:
    return DeploymentSpec(
        name=name,
        tenant=tenant,
        endpoint=endpoint,
        mode="disagg" if "prefill" in pools else "agg",
        sla=SLA(ttft_ms=500, itl_ms=50),
        pools=pools,
    )


def _requests(rows: list[tuple]) -> RequestRecords:
    ep, dep, ttft, itl, out, status = zip(*rows) if rows else ((),) * 6
    n = len(rows)
    return RequestRecords(
        endpoint=np.array(ep, dtype=np.int32),
        deployment=np.array(dep, dtype=np.int32),
        arrival_s=np.arange(n, dtype=float),
        input_tokens=np.full(n, 100, dtype=np.int64),
        output_tokens=np.array(out, dtype=np.int64),
        ttft_ms=np.array(ttft, dtype=float),
        itl_ms=np.array(itl, dtype=float),
        e2e_ms=np.array(ttft, dtype=float),
        status=np.array(status, dtype=np.int8),
    )


def _row(
    t: float,
    dep: str,
    role: str,
    gpu_type: str,
    ready: int,
    gpus: int,
    arrivals: int,
    ttft: float = NAN,
    itl: float = NAN,
) -> TimelineRow:
    return TimelineRow(
        time_s=t,
        deployment=dep,
        role=role,
        gpu_type=gpu_type,
        target=ready + 1,
        ready=ready,
        starting=1,
        draining=0,
        pending=0,
        gpus=gpus,
        gpu_seconds=30.0 * gpus,
        arrivals=arrivals,
        ttft_p90_ms=ttft,
        itl_p90_ms=itl,
    )


def make_result(clairvoyant: bool = False) -> SimulationResult:
    deployments = [
        _deployment("chat-a", "acme", "chat", {"agg": _pool("chat-a", "agg", "H100")}),
        _deployment("chat-b", "beta", "chat", {"agg": _pool("chat-b", "agg", "A100")}),
        _deployment(
            "code-d",
            "acme",
            "code",
            {"prefill": _pool("code-d", "prefill", "H100"), "decode": _pool("code-d", "decode", "H100", gpus=2)},
        ),
    ]
    # endpoint, deployment, ttft_ms, itl_ms, output_tokens, status
    requests = _requests(
        [
            (0, 0, 100, 20, 10, C),  # met
            (0, 0, 600, 20, 10, C),  # TTFT miss
            (0, 0, 200, NAN, 1, C),  # one token: no ITL, met
            (0, 0, 300, 60, 5, C),  # ITL miss
            (0, -1, NAN, NAN, 5, R),  # rejected at admission, never routed
            (0, 1, NAN, NAN, 5, R),  # rejected by its deployment
            (0, 1, 250, NAN, 5, U),  # unfinished after its first token
            (1, 2, 900, 10, 50, C),  # met
            (1, 2, 400, NAN, 50, U),  # unfinished
            (1, 2, 1000, 20, 3, C),  # met exactly at both targets
        ]
    )
    timeline = [
        _row(60.0, "chat-a", "agg", "H100", 1, 2, 120, ttft=150.0, itl=25.5),
        _row(60.0, "chat-b", "agg", "A100", 1, 2, 0),
        _row(60.0, "code-d", "prefill", "H100", 1, 2, 30, ttft=900),
        _row(60.0, "code-d", "decode", "H100", 1, 4, 30),
        _row(120.0, "chat-a", "agg", "H100", 2, 2, 60, ttft=120, itl=20),
        _row(120.0, "chat-b", "agg", "A100", 1, 1, 0),
        _row(120.0, "code-d", "prefill", "H100", 2, 3, 30, ttft=800),
        _row(120.0, "code-d", "decode", "H100", 1, 4, 30, itl=15),
    ]
    decisions = [
        DecisionRecord(time_s=30.0, deployment="chat-a", role="agg", from_replicas=1, to_replicas=2, reason="load up"),
        DecisionRecord(
            time_s=90.0,
            deployment="code-d",
            role="prefill",
            from_replicas=2,
            to_replicas=3,
            reason='ttft "forecast" > SLA',
        ),
    ]
    return SimulationResult(
        name="unit-run",
        policy="oracle" if clairvoyant else "local-agent",
        clairvoyant=clairvoyant,
        seed=7,
        duration_s=120.0,
        gpu_inventory={"H100": 8, "A100": 4},
        endpoints=["chat", "code"],
        endpoint_sla={"chat": (500.0, 50.0), "code": (1000.0, 20.0)},
        deployments=deployments,
        requests=requests,
        timeline=timeline,
        decisions=decisions,
        gpu_seconds={
            ("chat-a", "agg"): 7200.0,
            ("chat-b", "agg"): 3600.0,
            ("code-d", "prefill"): 1800.0,
            ("code-d", "decode"): 5400.0,
        },
        scale_events={"chat-a": 1, "code-d": 1},
        max_gpus_in_use={"H100": 9, "A100": 2},
        budget_violations=1,
        wall_seconds=0.5,
        simulated_seconds=120.0,
        notes=["profile clamped at 8k tokens"],
    )


def _no_nan(text: str) -> dict:
    def reject(token: str) -> None:
        raise AssertionError(f"non-JSON number {token}")

    return json.loads(text, parse_constant=reject)


def test_fleet_counts_attainment_and_gpu_hours() -> None:
    fleet = summarize(make_result())["fleet"]
    assert (fleet["requests"], fleet["completed"], fleet["rejected"], fleet["unfinished"], fleet["unrouted"]) == (
        10,
        6,
        2,
        2,
        1,
    )
    assert fleet["slo_attainment"] == pytest.approx(4 / 10)
    assert fleet["gpu_hours"] == pytest.approx(5.0)
    assert fleet["gpu_hours_by_type"] == pytest.approx({"H100": 4.0, "A100": 1.0})
    assert fleet["max_gpus_in_use"] == {"H100": 9, "A100": 2}
    assert fleet["gpu_inventory"] == {"H100": 8, "A100": 4}
    assert fleet["budget_violations"] == 1


def test_endpoint_deployment_and_tenant_breakdowns() -> None:
    summary = summarize(make_result())
    chat, code = summary["endpoints"]["chat"], summary["endpoints"]["code"]
    assert chat["requests"] == 7 and chat["slo_attainment"] == pytest.approx(2 / 7)
    assert code["requests"] == 3 and code["slo_attainment"] == pytest.approx(2 / 3)
    assert chat["ttft_ms"] == pytest.approx({"p50": 250.0, "p90": 510.0, "p99": 591.0})

    a, b, d = (summary["deployments"][n] for n in ("chat-a", "chat-b", "code-d"))
    assert (a["requests"], a["completed"], a["rejected"], a["unfinished"]) == (4, 4, 0, 0)
    assert a["slo_attainment"] == pytest.approx(0.5)
    assert a["ttft_ms"] == pytest.approx({"p50": 250.0, "p90": 510.0, "p99": 591.0})
    assert a["itl_ms"] == pytest.approx({"p50": 20.0, "p90": 52.0, "p99": 59.2})  # the NaN ITL is skipped
    assert a["gpu_hours"] == pytest.approx(2.0) and a["gpu_hours_by_pool"] == pytest.approx({"agg": 2.0})
    assert (a["tenant"], a["endpoint"], a["scale_events"]) == ("acme", "chat", 1)

    assert (b["requests"], b["completed"], b["rejected"], b["unfinished"]) == (2, 0, 1, 1)
    assert b["slo_attainment"] == 0.0
    assert b["ttft_ms"] == {"p50": None, "p90": None, "p99": None}
    assert b["scale_events"] == 0

    assert d["slo_attainment"] == pytest.approx(2 / 3)
    assert d["ttft_ms"]["p50"] == pytest.approx(950.0) and d["itl_ms"]["p50"] == pytest.approx(15.0)
    assert d["gpu_hours_by_pool"] == pytest.approx({"prefill": 0.5, "decode": 1.5})
    assert d["gpu_hours"] == pytest.approx(2.0)

    acme, beta = summary["tenants"]["acme"], summary["tenants"]["beta"]
    assert acme["requests"] == 7 and acme["slo_attainment"] == pytest.approx(4 / 7)
    assert acme["gpu_hours"] == pytest.approx(4.0)
    assert beta["requests"] == 2 and beta["slo_attainment"] == 0.0 and beta["gpu_hours"] == pytest.approx(1.0)


def test_run_metadata_and_labels() -> None:
    summary = summarize(make_result(clairvoyant=True))
    assert summary["clairvoyant"] is True and summary["policy"] == "oracle"
    assert (summary["name"], summary["seed"], summary["duration_s"]) == ("unit-run", 7, 120.0)
    assert summary["requests_per_wall_second"] == pytest.approx(20.0)
    assert summary["notes"] == ["profile clamped at 8k tokens"]
    assert summarize(make_result())["clairvoyant"] is False


def test_grouped_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(3)
    groups = rng.integers(-1, 5, size=5000)
    values = rng.lognormal(5, 1, size=5000)
    values[rng.random(5000) < 0.1] = np.nan
    valid = rng.random(5000) < 0.8
    got = _group_percentiles(groups, values, valid, 6)
    for g in range(5):
        sample = values[valid & (groups == g) & ~np.isnan(values)]
        np.testing.assert_allclose(got[g], np.percentile(sample, PERCENTILES))
    assert np.isnan(got[5]).all()


def test_write_outputs_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    returned = write_outputs(make_result(), out)
    assert sorted(p.name for p in out.iterdir()) == ["decisions.jsonl", "report.html", "summary.json", "timeline.csv"]

    summary = _no_nan((out / "summary.json").read_text())
    assert summary == returned
    assert summary["deployments"]["chat-b"]["itl_ms"]["p90"] is None

    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert decisions == [
        {"time_s": 30.0, "deployment": "chat-a", "pool": "agg", "from": 1, "to": 2, "reason": "load up"},
        {
            "time_s": 90.0,
            "deployment": "code-d",
            "pool": "prefill",
            "from": 2,
            "to": 3,
            "reason": 'ttft "forecast" > SLA',
        },
    ]

    with (out / "timeline.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert (
        tuple(rows[0])
        == TIMELINE_COLUMNS
        == (
            "time_s",
            "deployment",
            "pool",
            "gpu_type",
            "target",
            "ready",
            "starting",
            "draining",
            "pending",
            "gpus",
            "gpu_seconds",
            "arrivals",
            "ttft_p90_ms",
            "itl_p90_ms",
        )
    )
    assert len(rows) == 9
    assert rows[1] == ["60.0", "chat-a", "agg", "H100", "2", "1", "1", "0", "0", "2", "60.0", "120", "150.0", "25.5"]
    assert rows[2][-2:] == ["", ""]  # NaN latencies are empty cells
    assert "nan" not in (out / "timeline.csv").read_text().lower()


def test_report_is_self_contained(tmp_path: Path) -> None:
    write_outputs(make_result(), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<script src="http' not in page and "<link" not in page
    assert page.count("plotly.js v") >= 1  # the library itself is inline
    assert page.count("Plotly.newPlot") == 4  # fleet chart + one per deployment
    for name in ("chat-a", "chat-b", "code-d", "acme", "beta", "unit-run", "local-agent"):
        assert name in page
    assert "live policy" in page and "clairvoyant oracle" not in page
    assert "profile clamped at 8k tokens" in page


def test_report_labels_the_oracle(tmp_path: Path) -> None:
    write_outputs(make_result(clairvoyant=True), tmp_path)
    assert "clairvoyant oracle" in (tmp_path / "report.html").read_text()


def test_empty_run(tmp_path: Path) -> None:
    result = make_result()
    result.requests, result.timeline, result.decisions = _requests([]), [], []
    result.gpu_seconds, result.scale_events = {}, {}
    summary = write_outputs(result, tmp_path)
    assert summary["fleet"]["requests"] == 0 and summary["fleet"]["slo_attainment"] is None
    assert summary["deployments"]["code-d"]["gpu_hours_by_pool"] == {"prefill": 0.0, "decode": 0.0}
    _no_nan((tmp_path / "summary.json").read_text())
    assert (tmp_path / "decisions.jsonl").read_text() == ""
    assert "No timeline recorded" in (tmp_path / "report.html").read_text()


def test_long_timeline_is_bucketed_keeping_peaks_and_rates() -> None:
    n = 5 * MAX_POINTS
    rows = [_row(10.0 * (i + 1), "chat-a", "agg", "H100", ready=1, gpus=1, arrivals=10) for i in range(n)]
    rows[1234] = _row(10.0 * 1235, "chat-a", "agg", "H100", ready=40, gpus=40, arrivals=10, ttft=9999.0)
    series = _pool_series(rows)[("chat-a", "agg")]
    assert series.bucketed and len(series.time_s) == MAX_POINTS
    assert series.time_s[-1] == 10.0 * n
    assert series.ready.max() == 40 and np.nanmax(series.ttft_p90_ms) == 9999.0
    np.testing.assert_allclose(series.arrivals_per_s, 1.0)


def _decision(t: float, deployment: str, role: str, before: int, after: int) -> DecisionRecord:
    return DecisionRecord(t, deployment, role, before, after, "test")


def _with_decisions(decisions: list[DecisionRecord], duration_s: float = 7200.0) -> SimulationResult:
    result = make_result()
    result.decisions, result.duration_s = decisions, duration_s
    return result


def test_reversals_count_per_pool_direction_changes() -> None:
    """Each pool has its own direction: prefill going up while decode goes down is no reversal."""
    decisions = [
        _decision(30, "code-d", "prefill", 1, 2),  # up
        _decision(60, "code-d", "decode", 2, 1),  # down (first change of this pool)
        _decision(90, "code-d", "prefill", 2, 3),  # up again: no reversal
        _decision(120, "code-d", "prefill", 3, 2),  # down after up: reversal 1
        _decision(150, "code-d", "decode", 1, 1),  # no change: neither a change nor a direction
        _decision(180, "code-d", "decode", 1, 3),  # up after down: reversal 2
        _decision(210, "code-d", "prefill", 2, 4),  # up after down: reversal 3
        _decision(240, "chat-a", "agg", 1, 2),
        _decision(270, "chat-a", "agg", 2, 5),
        _decision(300, "chat-a", "agg", 5, 8),  # monotone: changes, no reversal
    ]
    stability = scaling_stability(_with_decisions(decisions, duration_s=7200.0))
    code, chat = stability.deployments["code-d"], stability.deployments["chat-a"]
    assert (code.reversals, code.target_changes) == (3, 6)
    assert code.reversals_per_hour == pytest.approx(3 / 2)
    assert code.target_changes_per_pool_hour == pytest.approx(6 / (2 * 2))  # two pools, two hours
    assert (chat.reversals, chat.target_changes, chat.reversals_per_hour) == (0, 3, 0.0)
    assert chat.target_changes_per_pool_hour == pytest.approx(3 / 2)
    assert stability.deployments["chat-b"].target_changes_per_pool_hour == 0.0
    # Fleet: 3 reversals over 3 deployments x 2 h; 9 changes over 4 pools x 2 h.
    assert stability.reversals_per_deployment_hour == pytest.approx(3 / 6)
    assert stability.target_changes_per_pool_hour == pytest.approx(9 / 8)


def test_alternating_targets_reverse_on_every_change_after_the_first() -> None:
    decisions = [_decision(30.0 * i, "chat-b", "agg", 2 + i % 2, 3 - i % 2) for i in range(10)]
    stability = scaling_stability(_with_decisions(decisions, duration_s=3600.0))
    assert stability.deployments["chat-b"].reversals == 9
    assert stability.deployments["chat-b"].reversals_per_hour == pytest.approx(9.0)


def test_stability_is_in_the_summary_and_the_report(tmp_path: Path) -> None:
    decisions = [_decision(30, "chat-a", "agg", 1, 3), _decision(60, "chat-a", "agg", 3, 2)]
    summary = write_outputs(_with_decisions(decisions, duration_s=1800.0), tmp_path)
    assert summary["fleet"]["reversals_per_deployment_hour"] == pytest.approx(1 / (0.5 * 3))
    assert summary["fleet"]["target_changes_per_pool_hour"] == pytest.approx(2 / (0.5 * 4))
    assert summary["deployments"]["chat-a"]["reversals_per_hour"] == pytest.approx(2.0)
    assert summary["deployments"]["chat-a"]["target_changes_per_pool_hour"] == pytest.approx(4.0)
    assert summary["deployments"]["code-d"]["reversals_per_hour"] == 0.0
    page = (tmp_path / "report.html").read_text()
    assert "scaling direction reversals per deployment-hour" in page and "target changes per pool-hour" in page


def test_stability_of_a_run_without_duration_is_undefined(tmp_path: Path) -> None:
    summary = write_outputs(_with_decisions([], duration_s=0.0), tmp_path)
    assert summary["fleet"]["reversals_per_deployment_hour"] is None
    assert summary["deployments"]["chat-a"]["target_changes_per_pool_hour"] is None
    assert _no_nan((tmp_path / "summary.json").read_text())["fleet"]["target_changes_per_pool_hour"] is None


def test_stability_rejects_a_decision_for_an_unknown_deployment() -> None:
    with pytest.raises(ValueError, match="unknown deployment 'ghost'"):
        scaling_stability(_with_decisions([_decision(30, "ghost", "agg", 1, 2)]))


def test_priority_weighted_attainment_skips_a_tenant_without_requests() -> None:
    """A tenant whose deployments saw no traffic has a null attainment: it weighs nothing (a sweep
    fleet raised TypeError here), and the others are weighted by priority times requests."""
    from fleet_sim.outputs import priority_weighted_attainment

    summary = {
        "tenants": {
            "idle": {"requests": 0, "slo_attainment": None},
            "a": {"requests": 100, "slo_attainment": 0.5},
            "b": {"requests": 100, "slo_attainment": 1.0},
        }
    }
    assert priority_weighted_attainment(summary, {"idle": 5.0, "a": 3.0}) == (3 * 0.5 + 1.0) / 4
    assert math.isnan(priority_weighted_attainment({"tenants": {"idle": summary["tenants"]["idle"]}}, {}))
