"""Agent telemetry: Prometheus metrics, diagnostics reports on a simulated clock, the live dashboard
and the authenticated runtime-limits endpoint."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from fleet_planner.planning import SLA, Distribution, PoolObservation
from local_agent.models import AgentDecision, DecisionReason, PoolDecision, RuntimeLimits
from local_agent.telemetry import AgentMetrics, DiagnosticsRecorder, LimitsError, LimitsStore, make_app

DEP = "chat"
SLA_ = SLA(ttft_ms=500, itl_ms=50)
GPUS = {"prefill": 2, "decode": 1}
TOKEN = "s3cret-token"


def dist(mean: float) -> Distribution:
    return Distribution(count=100, mean=mean, p50=mean, p90=mean * 1.5, p99=mean * 2)


def obs(
    role: str, t: float, ready: int, starting: int = 0, draining: int = 0, full: bool = True, deployment: str = DEP
) -> PoolObservation:
    extra = (
        dict(admitted=300, input_tokens=dist(1000), output_tokens=dist(200), ttft_ms=dist(200), itl_ms=dist(20))
        if full
        else {}
    )
    return PoolObservation(
        deployment=deployment,
        role=role,
        time_s=t,
        window_s=30.0,
        ready=ready,
        starting=starting,
        draining=draining,
        pending=0,
        **extra,
    )


def decision(
    t: float,
    targets: dict[str, int],
    reason: DecisionReason = DecisionReason.HOLD,
    loop: str = "throughput",
    estimates: bool = True,
    forecast: float | None = 12.0,
) -> AgentDecision:
    pools = [
        PoolDecision(
            role=role,
            current=n,
            wanted=n,
            target=n,
            reason=reason,
            detail="why",
            estimated_ttft_ms=300.0 if estimates else None,
            estimated_itl_ms=30.0 if estimates else None,
        )
        for role, n in targets.items()
    ]
    return AgentDecision(
        time_s=t,
        deployment=DEP,
        tenant="acme",
        loop=loop,
        observed_rps=10.0,
        forecast_rps=forecast,
        forecast_upper_rps=None if forecast is None else forecast * 1.3,
        input_tokens_mean=1000.0,
        output_tokens_mean=200.0,
        pools=pools,
    )


# ---------------------------------------------------------------- metrics


def test_metrics_export_decision_and_observations() -> None:
    m = AgentMetrics()
    m.record(
        decision(0, {"prefill": 2, "decode": 3}, DecisionReason.PREDICTIVE_UP),
        [
            obs("prefill", 0, ready=1, starting=1),
            obs("decode", 0, ready=3, draining=1),
            obs("prefill", 0, ready=99, deployment="other"),
        ],
        GPUS,
        now_s=0,
    )
    get = m.registry.get_sample_value
    pool = {"deployment": DEP, "pool": "prefill"}
    assert get("fleet_agent_replicas", {**pool, "state": "target"}) == 2
    assert get("fleet_agent_replicas", {**pool, "state": "ready"}) == 1  # not the other deployment's 99
    assert get("fleet_agent_replicas", {**pool, "state": "starting"}) == 1
    assert get("fleet_agent_replicas", {"deployment": DEP, "pool": "decode", "state": "draining"}) == 1
    assert get("fleet_agent_gpus_held", pool) == 4
    assert get("fleet_agent_load_rps", {"deployment": DEP, "source": "forecast_upper"}) == pytest.approx(15.6)
    assert get("fleet_agent_planned_tokens_mean", {"deployment": DEP, "direction": "output"}) == 200
    assert get("fleet_agent_pool_admitted_rps", pool) == 10
    assert get("fleet_agent_observed_tokens_mean", {**pool, "direction": "input"}) == 1000
    assert get("fleet_agent_estimated_ttft_seconds", pool) == pytest.approx(0.3)
    assert get("fleet_agent_observed_itl_seconds", {**pool, "quantile": "p90"}) == pytest.approx(0.03)
    reason = {**pool, "fleet_agent_decision_reason": "predictive_scale_up"}
    assert get("fleet_agent_decision_reason", reason) == 1
    assert get("fleet_agent_decision_reason", {**reason, "fleet_agent_decision_reason": "hold"}) == 0

    m.record(decision(5, {"prefill": 2, "decode": 3}, DecisionReason.GRACE_PERIOD, loop="load"), [], GPUS, now_s=5)
    m.record(decision(10, {"prefill": 2, "decode": 3}, DecisionReason.GRACE_PERIOD, loop="load"), [], GPUS, now_s=10)
    assert get("fleet_agent_decision_reason", reason) == 0
    assert get("fleet_agent_decision_reason", {**reason, "fleet_agent_decision_reason": "grace_period"}) == 1
    assert get("fleet_agent_decisions_total", {**pool, "loop": "load", "reason": "grace_period"}) == 2
    assert get("fleet_agent_decisions_total", {**pool, "loop": "throughput", "reason": "predictive_scale_up"}) == 1


def test_missing_values_are_absent_not_zero() -> None:
    m = AgentMetrics(CollectorRegistry())
    get = m.registry.get_sample_value
    pool = {"deployment": DEP, "pool": "decode"}
    m.record(decision(0, {"decode": 2}), [obs("decode", 0, ready=2)], GPUS, now_s=0)
    assert get("fleet_agent_estimated_itl_seconds", pool) == pytest.approx(0.03)
    assert get("fleet_agent_observed_ttft_seconds", {**pool, "quantile": "p99"}) == pytest.approx(0.4)

    # The next step lacks the forecast, the estimates and the traffic metrics: the series vanish.
    m.record(
        decision(30, {"decode": 2}, estimates=False, forecast=None),
        [obs("decode", 30, ready=2, full=False)],
        GPUS,
        now_s=30,
    )
    assert get("fleet_agent_estimated_itl_seconds", pool) is None
    assert get("fleet_agent_estimated_ttft_seconds", pool) is None
    assert get("fleet_agent_load_rps", {"deployment": DEP, "source": "forecast"}) is None
    assert get("fleet_agent_load_rps", {"deployment": DEP, "source": "observed"}) == 10
    assert get("fleet_agent_pool_admitted_rps", pool) is None
    assert get("fleet_agent_observed_ttft_seconds", {**pool, "quantile": "p99"}) is None
    assert get("fleet_agent_observed_tokens_mean", {**pool, "direction": "input"}) is None
    assert get("fleet_agent_replicas", {**pool, "state": "ready"}) == 2  # present values stay
    text = m.registry.collect()
    assert not any(s.name == "fleet_agent_estimated_itl_seconds" for metric in text for s in metric.samples)


def test_infinite_estimate_is_exported_as_inf() -> None:
    m = AgentMetrics()
    d = decision(0, {"decode": 1})
    overloaded = d.model_copy(update={"pools": [d.pools[0].model_copy(update={"estimated_ttft_ms": math.inf})]})
    m.record(overloaded, [], GPUS, now_s=0)
    assert (
        m.registry.get_sample_value("fleet_agent_estimated_ttft_seconds", {"deployment": DEP, "pool": "decode"})
        == math.inf
    )


def test_gpu_hours_integrate_on_simulated_clock() -> None:
    m = AgentMetrics()
    hours = lambda role: m.registry.get_sample_value(  # noqa: E731
        "fleet_agent_gpu_hours_total", {"deployment": DEP, "pool": role}
    )
    # prefill: 2 replicas x 2 GPUs for 1 h, then 3 replicas (one draining) for 30 min; no obs at 7200 keeps it.
    m.record(decision(0, {"prefill": 2}), [obs("prefill", 0, ready=2)], GPUS, now_s=0)
    assert hours("prefill") == 0
    m.record(decision(3600, {"prefill": 2}), [obs("prefill", 3600, ready=2, draining=1)], GPUS, now_s=3600)
    assert hours("prefill") == pytest.approx(4.0)
    m.record(decision(5400, {"prefill": 2}), [], GPUS, now_s=5400)
    assert hours("prefill") == pytest.approx(4.0 + 3.0)
    m.record(decision(5000, {"prefill": 2}), [], GPUS, now_s=5000)  # clock stepped back: nothing accrues
    assert hours("prefill") == pytest.approx(7.0)
    m.record(decision(5400, {"prefill": 2}), [obs("prefill", 5400, ready=0)], GPUS, now_s=5400)
    m.record(decision(9000, {"prefill": 0}), [], GPUS, now_s=9000)
    assert hours("prefill") == pytest.approx(7.0 + 6 * 400 / 3600)  # 5000 -> 5400 at 6 GPUs, then 0 GPUs


def test_metrics_reject_pool_without_gpu_count() -> None:
    with pytest.raises(ValueError, match="gpus_per_replica"):
        AgentMetrics().record(decision(0, {"agg": 1}), [obs("agg", 0, ready=1)], GPUS, now_s=0)


# ---------------------------------------------------------------- diagnostics


def filled_recorder(**kwargs: object) -> DiagnosticsRecorder:
    rec = DiagnosticsRecorder(SLA_, DEP, **kwargs)
    for i, t in enumerate(range(0, 600, 30)):
        o = [obs("prefill", t, ready=1 + i % 2), obs("decode", t, ready=2, starting=1)]
        reason = DecisionReason.PREDICTIVE_UP if i % 2 else DecisionReason.REACTIVE_QUEUE
        rec.record(t, o, decision(t, {"prefill": 2, "decode": 3}, reason, loop="throughput" if i % 2 else "load"))
        rec.record(t + 5, o)  # the same delivered observation again: kept once
    return rec


def test_diagnostics_html_is_self_contained_with_all_charts() -> None:
    page = filled_recorder().render_html()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("plotly.js v") >= 1  # the library is inline
    assert " src=" not in page  # no external script (plotly.js only mentions a CDN for geo maps, unused)
    for trace in (
        "prefill target",
        "decode ready",
        "decode starting",
        "prefill draining",
        "SLA TTFT",
        "SLA ITL",
        "decode observed ITL p90",
        "prefill estimated TTFT",
        "forecast mean",
        "forecast upper",
        "observed",
        "predictive_scale_up",
        "reactive_queue",
    ):
        assert f'"name":"{trace}"' in page, trace


def test_diagnostics_series_and_state() -> None:
    rec = filled_recorder(max_points=15)
    replicas, latency, _load, timeline = rec.figures()
    ready = next(t for t in replicas.data if t.name == "decode ready")
    assert len(ready.x) == 15  # deduplicated, then bounded to the newest max_points
    assert list(ready.x)[-1] == 570
    sla = next(t for t in latency.data if t.name == "SLA TTFT")
    assert list(sla.y) == [500, 500]
    assert {t.name for t in timeline.data} == {"predictive_scale_up", "reactive_queue"}
    state = rec.state(last=3)
    assert state["now_s"] == 575 and len(state["decisions"]) == 3
    assert set(state["latest"]) == {"throughput", "load"}
    assert json.loads(rec.figures_json())[2]["data"][0]["name"] == "observed"


def test_diagnostics_leave_gaps_for_missing_values() -> None:
    rec = DiagnosticsRecorder(SLA_, DEP)
    rec.record(0, [obs("decode", 0, ready=1)], decision(0, {"decode": 1}))
    rec.record(30, [obs("decode", 30, ready=1, full=False)], decision(30, {"decode": 1}, estimates=False))
    d = rec.figures()[1].data
    assert list(next(t for t in d if t.name == "decode observed TTFT p90").y) == [300.0, None]
    estimated = next(t for t in d if t.name == "decode estimated TTFT")
    assert list(estimated.x) == [0] and list(estimated.y) == [300.0]
    with pytest.raises(ValueError, match="other"):
        rec.record(0, [], decision(0, {"decode": 1}).model_copy(update={"deployment": "other"}))


def test_periodic_reports_follow_the_given_clock(tmp_path: Path) -> None:
    rec = filled_recorder()
    written = [rec.maybe_write(t, tmp_path, every_s=3600) for t in range(0, 4 * 3600, 600)]
    paths = [p for p in written if p is not None]
    assert [p.name for p in paths] == [
        "diagnostics-t000003600s.html",
        "diagnostics-t000007200s.html",
        "diagnostics-t000010800s.html",
    ]
    assert rec.maybe_write(100, tmp_path, every_s=3600) is None  # clock stepped back
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temporary files left
    assert "prefill target" in paths[0].read_text(encoding="utf-8")

    # Wall-clock presentation: same schedule from the same numbers, dated file names.
    wall = DiagnosticsRecorder(SLA_, DEP, wall_clock=True)
    start = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    wall.record(start, [obs("decode", start, ready=1)], decision(start, {"decode": 1}))
    assert wall.maybe_write(start, tmp_path / "wall", every_s=3600) is None
    assert wall.maybe_write(start + 2000, tmp_path / "wall", every_s=3600) is None  # 22:46:40, same hour
    written_wall = wall.maybe_write(start + 3000, tmp_path / "wall", every_s=3600)  # 23:03:20: a new hour
    assert written_wall is not None and written_wall.name == "diagnostics-20231114T230320Z.html"
    assert "2023-11-14T22:13:20" in written_wall.read_text(encoding="utf-8")  # dates on the time axis
    with pytest.raises(ValueError):
        wall.maybe_write(start, tmp_path, every_s=0)


# ---------------------------------------------------------------- limits store


def test_limits_store_validates_and_notifies() -> None:
    store = LimitsStore({"prefill": 8, "decode": 16}, RuntimeLimits(max_replicas={"decode": 10}))
    seen: list[RuntimeLimits] = []
    unsubscribe = store.subscribe(seen.append)
    new = store.merge({"gpu_budget": 12, "min_replicas": {"decode": 2}})
    assert new.max_replicas == {"decode": 10} and new.min_replicas == {"decode": 2} and seen == [new]
    store.merge({"gpu_budget": 12})  # no change: no notification
    assert len(seen) == 1
    for bad in (
        {"max_replicas": {"decode": 17}},
        {"min_replicas": {"agg": 1}},
        {"min_replicas": {"prefill": -1}},
        {"min_replicas": {"decode": 11}},
        {"gpu_budget": float("nan")},
        {"gpu_budget": True},
        {"gpu_budget": "8"},
        {"colour": "red"},
        [1, 2],
    ):
        with pytest.raises(LimitsError):
            store.merge(bad)
    assert store.current == new and len(seen) == 1
    unsubscribe()
    store.replace({})
    assert store.current == RuntimeLimits() and len(seen) == 1
    with pytest.raises(LimitsError):
        LimitsStore({"decode": 4}, RuntimeLimits(max_replicas={"decode": 5}))


def test_limits_subscriber_failure_does_not_block_others() -> None:
    store = LimitsStore({"agg": 4})
    seen: list[RuntimeLimits] = []
    store.subscribe(lambda _: 1 / 0)
    store.subscribe(seen.append)
    store.replace({"advisory": True})
    assert seen and seen[0].advisory is True


# ---------------------------------------------------------------- dashboard and control endpoint


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, LimitsStore, list[RuntimeLimits]]]:
    metrics = AgentMetrics()
    rec = filled_recorder()
    metrics.record(decision(0, {"prefill": 2, "decode": 3}), [obs("prefill", 0, ready=2)], GPUS, now_s=0)
    store = LimitsStore({"prefill": 8, "decode": 16}, RuntimeLimits(gpu_budget=20))
    seen: list[RuntimeLimits] = []
    store.subscribe(seen.append)
    client = TestClient(TestServer(make_app(rec, metrics.registry, store, TOKEN, refresh_s=2)))
    await client.start_server()
    try:
        yield client, store, seen
    finally:
        await client.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_dashboard_read_endpoints(served: tuple[TestClient, LimitsStore, list[RuntimeLimits]]) -> None:
    client, _, _ = served
    page = await client.get("/")
    text = await page.text()
    assert page.status == 200 and "plotly.js v" in text and 'fetch("api/figures")' in text
    assert "REFRESH_MS = 2000" in text and text.count('id="chart-') == 4
    metrics = await client.get("/metrics")
    body = await metrics.text()
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    assert 'fleet_agent_replicas{deployment="chat",pool="prefill",state="target"} 2.0' in body
    state = await (await client.get("/api/state")).json()
    assert state["deployment"] == DEP and state["latest"]["throughput"]["pools"][0]["role"] == "prefill"
    figures = await (await client.get("/api/figures")).json()
    assert len(figures) == 4 and all("data" in f and "layout" in f for f in figures)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ],
)
async def test_limits_are_read_openly_and_changed_only_with_the_token(
    served: tuple[TestClient, LimitsStore, list[RuntimeLimits]], headers: dict[str, str]
) -> None:
    client, store, seen = served
    read = await client.get("/api/limits", headers=headers)  # reads are open, like /api/state
    assert read.status == 200 and (await read.json())["gpu_budget"] == 20
    for change in (client.put, client.patch):
        response = await change("/api/limits", headers=headers, json={"gpu_budget": 1})
        assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert store.current.gpu_budget == 20 and not seen


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1]",
        '{"gpu_budget": -1}',
        '{"gpu_budget": NaN}',
        '{"gpu_budget": 2.5}',
        '{"min_replicas": {"decode": 5}, "max_replicas": {"decode": 4}}',
        '{"max_replicas": {"decode": 17}}',
        '{"max_replicas": {"agg": 1}}',
        '{"max_replicas": {"gpu": 1}}',
        '{"min_replicas": {"prefill": -2}}',
        '{"advisory": "yes"}',
        '{"surprise": 1}',
    ],
)
async def test_bad_limits_are_refused_and_change_nothing(
    served: tuple[TestClient, LimitsStore, list[RuntimeLimits]], body: str
) -> None:
    client, store, seen = served
    before = store.current
    for method in (client.put, client.patch):
        response = await method("/api/limits", headers=AUTH, data=body)
        assert response.status == 400
        error = await response.json()
        assert error["error"]
    assert store.current == before and not seen


async def test_good_limits_are_applied(served: tuple[TestClient, LimitsStore, list[RuntimeLimits]]) -> None:
    client, store, seen = served
    response = await client.patch("/api/limits", headers=AUTH, json={"max_replicas": {"decode": 6}})
    assert response.status == 200
    assert await response.json() == {
        "gpu_budget": 20,
        "min_replicas": {},
        "max_replicas": {"decode": 6},
        "advisory": None,
    }
    response = await client.put(
        "/api/limits", headers=AUTH, json={"gpu_budget": 8, "min_replicas": {"prefill": 1}, "advisory": True}
    )
    assert response.status == 200
    assert store.current == RuntimeLimits(gpu_budget=8, min_replicas={"prefill": 1}, advisory=True)
    assert [s.gpu_budget for s in seen] == [20, 8] and seen[-1].max_replicas == {}  # PUT replaces the document
    current = await (await client.get("/api/limits", headers=AUTH)).json()
    assert current["min_replicas"] == {"prefill": 1}


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError):
        make_app(DiagnosticsRecorder(SLA_, DEP), CollectorRegistry(), LimitsStore({"agg": 1}), "")
