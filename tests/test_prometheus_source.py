"""PrometheusSource against a fake Prometheus HTTP API (canned replies per query), and — when a real
``prometheus`` binary is installed — against a real Prometheus scraping a tiny exporter."""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fleet_planner.planning import SLA, DeploymentSpec, PoolSpec
from local_agent.config import PrometheusQueries
from local_agent.connectors.base import ReplicaCounts
from local_agent.observe import PrometheusError, PrometheusSource

Reply = float | str | list[float] | tuple[int, str]  # sample value(s), or (HTTP status, raw body)


def pool(role: str) -> PoolSpec:
    return PoolSpec(
        deployment="chat",
        role=role,
        profile_path="unused",
        gpu_type="h100",
        gpus_per_replica=1,
        min_replicas=0,
        max_replicas=4,
        initial_replicas=1,
        startup_s=60,
    )


SPEC = DeploymentSpec(
    name="chat",
    tenant="acme",
    endpoint="chat",
    mode="disagg",
    sla=SLA(ttft_ms=500, itl_ms=30),
    pools={"prefill": pool("prefill"), "decode": pool("decode")},
)
REPLICAS = {"prefill": ReplicaCounts(ready=2, starting=1), "decode": ReplicaCounts(ready=1, draining=1)}

# What a healthy deployment answers: (substrings all in the query, value). First match wins.
HEALTHY: list[tuple[tuple[str, ...], Reply]] = [
    (("dynamo_frontend_requests_total", 'dynamo_namespace="chat"'), 120.4),
    (("histogram_quantile(0.5,", "input_sequence_tokens_bucket"), 800.0),
    (("histogram_quantile(0.9,", "input_sequence_tokens_bucket"), 2000.0),
    (("histogram_quantile(0.99,", "input_sequence_tokens_bucket"), 4000.0),
    (("input_sequence_tokens_sum",), 1000.0),
    (("input_sequence_tokens_count",), 118.0),
    (("histogram_quantile(0.5,", "output_sequence_tokens_bucket"), 150.0),
    (("histogram_quantile(0.9,", "output_sequence_tokens_bucket"), 400.0),
    (("histogram_quantile(0.99,", "output_sequence_tokens_bucket"), 900.0),
    (("output_sequence_tokens_sum",), 200.0),
    (("output_sequence_tokens_count",), 118.0),
    (("histogram_quantile(0.5,", "time_to_first_token_seconds_bucket"), 0.1),
    (("histogram_quantile(0.9,", "time_to_first_token_seconds_bucket"), 0.3),
    (("histogram_quantile(0.99,", "time_to_first_token_seconds_bucket"), 0.6),
    (("time_to_first_token_seconds_sum",), 0.15),
    (("time_to_first_token_seconds_count",), 118.0),
    (("histogram_quantile(0.5,", "inter_token_latency_seconds_bucket"), 0.01),
    (("histogram_quantile(0.9,", "inter_token_latency_seconds_bucket"), 0.02),
    (("histogram_quantile(0.99,", "inter_token_latency_seconds_bucket"), 0.04),
    (("dynamo_frontend_inter_token_latency_seconds_sum",), 0.012),
    (("dynamo_frontend_inter_token_latency_seconds_count",), 118.0),
    (("vllm:num_requests_waiting", 'dynamo_component="prefill"', "request_prompt_tokens"), 3000.0),
    (("vllm:num_requests_waiting", 'dynamo_component="prefill"'), 3.0),
    (("vllm:num_requests_waiting",), 0.0),
    (("kvstats_active_blocks", 'dynamo_component="decode"'), 4096.0),
    (("kvstats_total_blocks",), 16384.0),
    (("kvstats_active_blocks",), 0.0),
    (("vllm:inter_token_latency_seconds_sum",), 14.5),
    (("vllm:iteration_tokens_total_sum",), 9000.0),
]


class FakePrometheus:
    """``/api/v1/query`` answering from ``rules``; unmatched queries get an empty vector."""

    def __init__(self, rules: list[tuple[tuple[str, ...], Reply]]):
        self.rules = rules
        self.queries: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/api/v1/query", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        query = request.query["query"]
        for needles, reply in self.rules:
            if all(n in query for n in needles):
                if isinstance(reply, tuple):
                    return web.Response(status=reply[0], text=reply[1])
                return web.json_response(vector(*reply) if isinstance(reply, list) else vector(reply))
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})


def vector(*values: float | str) -> dict[str, Any]:
    result = [
        {"metric": {"i": str(i)}, "value": [1.0, str(v) if not isinstance(v, str) else v]} for i, v in enumerate(values)
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start a fake Prometheus with given rules; returns (fake, source)."""
    servers: list[TestServer] = []
    session = aiohttp.ClientSession()

    async def start(rules: list[tuple[tuple[str, ...], Reply]], queries: PrometheusQueries | None = None):
        fake = FakePrometheus(rules)
        server = TestServer(fake.app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        url = str(server.make_url("/"))
        return fake, PrometheusSource(url, queries or PrometheusQueries(), session, window_s=60)

    yield start
    await session.close()
    for server in servers:
        await server.close()


def by_role(observations: list) -> dict:
    return {obs.role: obs for obs in observations}


async def test_parses_every_field(serve: Callable[..., Any]) -> None:
    fake, source = await serve(HEALTHY)
    obs = by_role(await source.observe(1234.5, SPEC, REPLICAS))
    prefill, decode = obs["prefill"], obs["decode"]
    assert (prefill.ready, prefill.starting, prefill.draining, prefill.pending) == (2, 1, 0, 0)
    assert (decode.ready, decode.starting, decode.draining) == (1, 0, 1)
    assert prefill.time_s == 1234.5 and prefill.window_s == 60
    assert prefill.admitted == 120 and decode.admitted == 120  # frontend traffic, shared by both pools
    assert prefill.input_tokens.model_dump() == {
        "count": 118,
        "mean": 1000.0,
        "p50": 800.0,
        "p90": 2000.0,
        "p99": 4000.0,
    }
    assert prefill.output_tokens.p99 == 900.0
    assert prefill.ttft_ms.p90 == pytest.approx(300.0) and prefill.ttft_ms.mean == pytest.approx(150.0)
    assert decode.itl_ms.p50 == pytest.approx(10.0)
    assert prefill.queued_requests == 3 and decode.queued_requests == 0  # 0 reported is a real 0
    assert prefill.queued_prefill_tokens == 3000.0
    assert decode.active_kv_tokens == 4096.0 and decode.kv_capacity_tokens == 16384.0
    assert decode.iteration_ms == 14.5 and decode.scheduled_tokens_per_s == 9000.0
    # every query evaluated at the tick's instant, templates filled for the deployment and pool
    assert {q["time"] for q in fake.queries} == {"1234.500"}
    admitted = next(q["query"] for q in fake.queries if "requests_total" in q["query"])
    assert admitted == 'sum(increase(dynamo_frontend_requests_total{dynamo_namespace="chat"}[60s]))'


async def test_missing_series_are_none_not_zero(serve: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    _, source = await serve([(("vllm:num_requests_waiting",), 2.0)])
    caplog.set_level(logging.INFO, logger="local_agent.observe.prometheus")
    obs = by_role(await source.observe(0.0, SPEC, REPLICAS))["prefill"]
    assert obs.queued_requests == 2
    for field in (
        "admitted",
        "input_tokens",
        "output_tokens",
        "ttft_ms",
        "itl_ms",
        "active_kv_tokens",
        "kv_capacity_tokens",
        "iteration_ms",
        "scheduled_tokens_per_s",
    ):
        assert getattr(obs, field) is None, field
    assert "admitted: no series" in caplog.text
    lines = len(caplog.records)
    await source.observe(5.0, SPEC, REPLICAS)
    assert len(caplog.records) == lines  # logged once, not every tick


async def test_nan_and_inf_are_none(serve: Callable[..., Any]) -> None:
    rules: list = [
        (("requests_total",), "NaN"),
        (("histogram_quantile(0.99,", "input_sequence"), "+Inf"),
        (("vllm:num_requests_waiting",), 1.0),
    ] + HEALTHY
    _, source = await serve(rules)
    obs = by_role(await source.observe(0.0, SPEC, REPLICAS))["prefill"]
    assert obs.admitted is None
    assert obs.input_tokens is None  # one unusable quantile: the whole distribution is unknown
    assert obs.output_tokens is not None and obs.queued_requests == 1


async def test_values_past_any_real_fleet_are_none_and_logged(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An exporter's slip (1e300 requests, a latency of 1e10 s) is missing data, not a number
    that would overflow the agent's forecast and capacity model."""
    rules: list = [
        (("requests_total",), 1e300),
        (("histogram_quantile(0.99,", "time_to_first_token_seconds"), 1e10),
        (("vllm:num_requests_waiting",), 1.0),
    ] + HEALTHY
    fake, source = await serve(rules)
    with caplog.at_level(logging.WARNING):
        obs = by_role(await source.observe(0.0, SPEC, REPLICAS))["prefill"]
    assert obs.admitted is None
    assert obs.ttft_ms is None  # 1e13 ms once scaled: the whole distribution is unknown
    assert obs.input_tokens is not None and obs.queued_requests == 1
    assert "past any real fleet" in caplog.text
    fake.rules = [(("requests_total",), 120.0), *HEALTHY]  # the exporter is fixed
    with caplog.at_level(logging.INFO):
        obs = by_role(await source.observe(30.0, SPEC, REPLICAS))["prefill"]
    assert obs.ttft_ms is not None and obs.admitted == 120
    assert "ttft_ms: values are back" in caplog.text


async def test_no_traffic_in_window_gives_no_distribution(serve: Callable[..., Any]) -> None:
    rules: list = [(("requests_total",), 0.0), (("_count",), 0.0), (("_sum",), "NaN"), (("histogram_quantile",), "NaN")]
    _, source = await serve(rules)
    obs = by_role(await source.observe(0.0, SPEC, REPLICAS))["prefill"]
    assert obs.admitted == 0  # a real zero: the counter exists and did not move
    assert obs.input_tokens is None and obs.ttft_ms is None


@pytest.mark.parametrize(
    "reply, logged",
    [
        ((200, "{not json"), "malformed reply"),
        ((200, '{"status": "success", "data": {"resultType": "matrix", "result": []}}'), "malformed reply"),
        (
            (
                200,
                '{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]}}',
            ),
            "malformed sample value",
        ),
        ((500, "internal error"), "HTTP 500"),
        ((422, '{"status": "error", "errorType": "execution", "error": "many-to-many matching"}'), "many-to-many"),
    ],
)
async def test_bad_replies_are_none_and_logged(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture, reply: tuple[int, str], logged: str
) -> None:
    _, source = await serve([(("requests_total",), reply), *HEALTHY])
    obs = by_role(await source.observe(0.0, SPEC, REPLICAS))["prefill"]
    assert obs.admitted is None
    assert obs.input_tokens is not None  # the other queries still count
    assert "admitted: query failed, treated as missing" in caplog.text and logged in caplog.text
    assert caplog.records[0].levelno == logging.WARNING


async def test_several_series_are_refused(serve: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    _, source = await serve([(("requests_total",), [1.0, 2.0]), *HEALTHY])
    obs = by_role(await source.observe(0.0, SPEC, REPLICAS))["prefill"]
    assert obs.admitted is None  # summing would be a guess: a quantile cannot be summed
    assert "returned 2 series; aggregate it to one" in caplog.text


async def test_scalar_results_and_recovery(serve: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    fake, source = await serve(
        [(("scalar(",), (200, '{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}'))]
    )
    caplog.set_level(logging.INFO, logger="local_agent.observe.prometheus")
    assert await source.client.query("scalar(vector(7))") == [7.0]
    assert await source.value("k", "absent_metric") is None
    fake.rules.insert(0, (("absent_metric",), 5.0))
    assert await source.value("k", "absent_metric") == 5.0
    assert "k: values are back" in caplog.text


async def test_unreachable_prometheus_gives_none_fast(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    async with aiohttp.ClientSession() as session:
        source = PrometheusSource(f"http://127.0.0.1:{port}", PrometheusQueries(), session, timeout_s=2)
        started = time.monotonic()
        obs = by_role(await source.observe(0.0, SPEC, REPLICAS))
        assert time.monotonic() - started < 2
        assert obs["decode"].admitted is None and obs["decode"].ready == 1
        with pytest.raises(PrometheusError, match="cannot reach"):
            await source.client.query("up")
    assert "query failed" in caplog.text


async def test_disabled_queries_are_not_asked(serve: Callable[..., Any]) -> None:
    queries = PrometheusQueries(queued_prefill_tokens=None, iteration_ms=None)
    fake, source = await serve(HEALTHY, queries)
    obs = by_role(await source.observe(0.0, SPEC, {"prefill": ReplicaCounts(ready=1)}))
    assert set(obs) == {"prefill"}  # decode not reported by the connector: no observation for it
    assert obs["prefill"].queued_prefill_tokens is None and obs["prefill"].iteration_ms is None
    assert not any(
        "inter_token_latency_seconds_sum{dynamo" in q["query"] and "vllm" in q["query"] for q in fake.queries
    )


async def test_the_gateway_shed_count_is_read_when_configured(serve: Callable[..., Any]) -> None:
    """Off by default (no gateway metric is standard); configured, it is a traffic field like
    ``admitted``, rendered for the deployment and rounded to whole requests."""
    _, source = await serve(HEALTHY)
    assert by_role(await source.observe(0.0, SPEC, REPLICAS))["prefill"].endpoint_shed is None
    shed = 'sum(increase(gateway_ratelimit_rejected_total{route="$deployment"}[$window]))'
    fake, source = await serve(
        [*HEALTHY, (("gateway_ratelimit_rejected_total",), 41.6)], PrometheusQueries(endpoint_shed=shed)
    )
    obs = by_role(await source.observe(0.0, SPEC, REPLICAS))
    assert obs["prefill"].endpoint_shed == 42 and obs["prefill"].admitted == 120
    assert 'gateway_ratelimit_rejected_total{route="chat"}[60s]' in " ".join(q["query"] for q in fake.queries)


# ------------------------------------------------------------------ a real Prometheus, if installed

RATE = 10.0  # requests per second the exporter pretends to admit


class _SteadyTraffic:
    """Counters and histograms growing at a constant rate since ``t0``: half the prompts are 300
    tokens, half 800; ITL 10 ms. Exact expectations follow from the bucket layout alone."""

    def __init__(self) -> None:
        self.t0 = time.time()

    def collect(self):
        n = RATE * (time.time() - self.t0)
        labels = {"dynamo_namespace": "chat"}
        requests = CounterMetricFamily("dynamo_frontend_requests", "admitted", labels=list(labels))
        requests.add_metric(list(labels.values()), n)
        yield requests
        prompts = HistogramMetricFamily("dynamo_frontend_input_sequence_tokens", "input", labels=list(labels))
        prompts.add_metric(
            list(labels.values()),
            [("250", 0), ("500", n / 2), ("1000", n), ("2000", n), ("+Inf", n)],
            sum_value=n * 550,
        )
        yield prompts
        itl = HistogramMetricFamily("dynamo_frontend_inter_token_latency_seconds", "itl", labels=list(labels))
        itl.add_metric(list(labels.values()), [("0.005", 0), ("0.02", n), ("+Inf", n)], sum_value=n * 0.01)
        yield itl
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "waiting", labels=["dynamo_namespace", "dynamo_component"]
        )
        waiting.add_metric(["chat", "prefill"], 4)
        yield waiting


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary on PATH (CI installs it via apt)")
async def test_real_prometheus(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(_SteadyTraffic())
    exporter = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    exporter.router.add_get("/metrics", metrics)
    server = TestServer(exporter, host="127.0.0.1", port=0)
    await server.start_server()
    prom_port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 500ms, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: exporter\n    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            source = PrometheusSource(f"http://127.0.0.1:{prom_port}", PrometheusQueries(), session, window_s=2)
            deadline = time.monotonic() + 15
            obs = None
            while time.monotonic() < deadline:
                assert prometheus.poll() is None, prometheus.stderr.read().decode() if prometheus.stderr else ""
                try:
                    samples = await source.client.query("count_over_time(up[2s])", time.time())
                except PrometheusError:
                    samples = []  # not listening yet
                if samples and samples[0] >= 4:  # four scrapes in the window: rates are meaningful
                    obs = by_role(await source.observe(time.time(), SPEC, REPLICAS))["prefill"]
                    if obs.input_tokens is not None:
                        break
                await asyncio.sleep(0.25)
            assert obs is not None and obs.input_tokens is not None, "Prometheus never had a full window"
            assert obs.admitted == pytest.approx(RATE * 2, rel=0.2)
            dist = obs.input_tokens
            assert dist.mean == pytest.approx(550.0, rel=1e-6)
            assert (dist.p50, dist.p90, dist.p99) == (pytest.approx(500.0), pytest.approx(900.0), pytest.approx(990.0))
            assert dist.count == pytest.approx(RATE * 2, rel=0.2)
            assert obs.itl_ms is not None and obs.itl_ms.mean == pytest.approx(10.0)
            assert obs.queued_requests == 4
            assert obs.output_tokens is None and obs.ttft_ms is None  # not exported: missing, not 0
            assert obs.active_kv_tokens is None and not math.isnan(obs.itl_ms.p90)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
        await server.close()
