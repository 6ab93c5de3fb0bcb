"""The live agent end to end: config file, fake Prometheus, virtual connector, dashboard and control
endpoint, failing ticks, the CLI and a clean SIGTERM shutdown."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from agent_link_helpers import chat_deployment
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleet_planner.clock import SimulatedClock
from fleet_planner.errors import InputError
from fleet_planner.knobs import EngineKnobs
from fleet_planner.planning import DeploymentSpec, PoolObservation
from local_agent import cli
from local_agent.config import AgentConfig, load_config, parse_config
from local_agent.connectors.base import ReplicaCounts
from local_agent.connectors.virtual import VirtualConnector, VirtualStateError
from local_agent.observe.prometheus import PrometheusSource
from local_agent.runtime import AgentRuntime, open_runtime, serve

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
TOKEN = "t0ken-for-tests"

# A steady 2 req/s over the 60 s window with moderate lengths and healthy latencies.
ANSWERS = [
    ("requests_total", 120.0),
    ("histogram_quantile(0.5,", None),
    ("histogram_quantile(0.9,", None),
    ("histogram_quantile(0.99,", None),
    ("_count", 120.0),
    ("_sum", None),
    ("num_requests_waiting", 0.0),
    ("kvstats_active_blocks", 1000.0),
    ("kvstats_total_blocks", 20000.0),
    ("up{", 2.0),
]
HISTOGRAMS = {  # metric fragment -> (mean, p50, p90, p99) in the metric's unit
    "input_sequence": (1000.0, 800.0, 2000.0, 3000.0),
    "output_sequence": (200.0, 150.0, 400.0, 600.0),
    "time_to_first": (0.12, 0.1, 0.2, 0.3),
    "inter_token": (0.008, 0.007, 0.01, 0.012),
}


def answer(query: str) -> float | None:
    for fragment, stats in HISTOGRAMS.items():
        if fragment in query:
            if query.startswith("histogram_quantile("):
                q = query[len("histogram_quantile(") :].split(",")[0]
                return stats[{"0.5": 1, "0.9": 2, "0.99": 3}[q]]
            if "_sum" in query:
                return stats[0]
            return 120.0
    for needle, value in ANSWERS:
        if needle in query and value is not None:
            return value
    return None


async def prometheus_api(request: web.Request) -> web.Response:
    value = answer(request.query["query"])
    result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
    return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})


@pytest.fixture
async def prometheus_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/api/v1/query", prometheus_api)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def config_data(tmp_path: Path, prometheus_url: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "deployment": chat_deployment(startup_s="90s"),
        "options": {"throughput_interval_s": 30},
        "state_dir": str(tmp_path),
        "tick_s": 0.05,
        "prometheus": {"url": prometheus_url, "window": "60s", "timeout_s": 2},
        "connector": {"kind": "virtual", "path": "targets.json"},
        "telemetry": {
            "listen": "127.0.0.1:0",
            "token_env": "TEST_AGENT_TOKEN",
            "diagnostics_dir": "diag",
            "diagnostics_every": "1s",
        },
    }
    for key, value in overrides.items():
        data[key] = value
    return data


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def report(tmp_path: Path, **counts: int) -> None:
    """What the external orchestrator writes back into the virtual connector's file."""
    state = {"version": 1, "deployment": "chat", "targets": {}, "observed": {"agg": counts}, "observed_at": 0.0}
    (tmp_path / "targets.json").write_text(json.dumps(state), encoding="utf-8")


class Clock:
    """Five seconds pass between two readings."""

    def __init__(self, start: float = 1_000.0):
        self.time = start

    def now(self) -> float:
        self.time += 5.0
        return self.time


async def test_one_tick_end_to_end(tmp_path: Path, prometheus_url: str) -> None:
    config = parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path)
    report(tmp_path, ready=3)
    async with open_runtime(config, clock=Clock()) as runtime:
        decision = await runtime.tick()
    assert runtime.agent is not None and decision.loop == "throughput"
    assert decision.observed_rps == pytest.approx(2.0)
    pool = decision.pools[0]
    assert pool.current == 3  # adopted what runs, not the configured initial 2
    written = json.loads((tmp_path / "targets.json").read_text())
    assert written["targets"] == {"agg": pool.target}
    assert written["observed"] == {
        "agg": {"ready": 3, "starting": 0, "draining": 0, "pending": 0}
    }  # the orchestrator's part kept
    registry = runtime.metrics.registry
    assert (
        registry.get_sample_value("fleet_agent_replicas", {"deployment": "chat", "pool": "agg", "state": "target"})
        == pool.target
    )
    assert registry.get_sample_value(
        "fleet_agent_pool_admitted_rps", {"deployment": "chat", "pool": "agg"}
    ) == pytest.approx(2.0)


async def test_advisory_mode_writes_nothing(tmp_path: Path, prometheus_url: str) -> None:
    data = config_data(tmp_path, prometheus_url, options={"advisory": True, "throughput_interval_s": 30})
    config = parse_config(data, base_dir=tmp_path)
    report(tmp_path, ready=1)
    before = (tmp_path / "targets.json").read_bytes()
    async with open_runtime(config, clock=Clock()) as runtime:
        for _ in range(3):
            decision = await runtime.tick()
    assert decision.advisory
    assert (tmp_path / "targets.json").read_bytes() == before
    assert list((tmp_path / "diag").glob("diagnostics-*.html"))  # advice is still reported


async def test_missing_replica_report_holds(tmp_path: Path, prometheus_url: str) -> None:
    """No orchestrator report yet: the pool has no observation, the agent holds its initial target."""
    config = parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path)
    async with open_runtime(config, clock=Clock()) as runtime:
        decision = await runtime.tick()
    assert decision.pools[0].reason.value == "no_data" and decision.pools[0].target == 2
    assert json.loads((tmp_path / "targets.json").read_text())["targets"] == {"agg": 2}


async def test_virtual_connector_counts_from_prometheus(tmp_path: Path, prometheus_url: str) -> None:
    data = config_data(tmp_path, prometheus_url)
    data["connector"] = {"kind": "virtual", "path": "targets.json", "replicas_from": "prometheus"}
    config = parse_config(data, base_dir=tmp_path)
    async with open_runtime(config, clock=Clock()) as runtime:
        connector = runtime.connector
        assert await connector.observe_replicas() == {"agg": ReplicaCounts(ready=2)}
        await connector.apply({"agg": 4})
        assert await connector.observe_replicas() == {"agg": ReplicaCounts(ready=2, starting=2)}
        await connector.apply({"agg": 1})
        assert await connector.observe_replicas() == {"agg": ReplicaCounts(ready=1, draining=1)}


async def test_virtual_connector_refuses_foreign_or_stale_files(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"version": 1, "deployment": "other"}))
    with pytest.raises(VirtualStateError, match="belongs to deployment 'other'"):
        VirtualConnector(path, "chat", ["agg"])
    path.write_text(
        json.dumps({"version": 1, "deployment": "chat", "observed": {"agg": {"ready": 2}}, "observed_at": 100.0})
    )
    connector = VirtualConnector(path, "chat", ["agg"], max_report_age_s=60, clock=SimulatedClock(200.0))
    assert await connector.observe_replicas() == {}
    with pytest.raises(ValueError, match="unknown role"):
        await connector.apply({"decode": 1})


async def test_dashboard_metrics_state_and_limits(
    tmp_path: Path, prometheus_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_AGENT_TOKEN", TOKEN)
    config = parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path)
    report(tmp_path, ready=2)
    async with open_runtime(config, clock=Clock()) as runtime:
        host, port = await runtime.start_telemetry(config.control_token())
        await runtime.tick()
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
                assert (
                    response.status == 200
                    and 'fleet_agent_replicas{deployment="chat",pool="agg",state="ready"} 2.0' in text
                )
            async with http.get(f"{base}/api/state") as response:
                state = await response.json()
                assert state["deployment"] == "chat" and state["latest"]["throughput"]["pools"][0]["role"] == "agg"
            body = {"gpu_budget": 3, "max_replicas": {"agg": 4}}
            async with http.put(f"{base}/api/limits", json=body) as response:
                assert response.status == 401
            async with http.put(
                f"{base}/api/limits", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status == 200, await response.text()
        assert runtime.agent is not None
        assert runtime.agent.limits.gpu_budget == 3 and runtime.agent.limits.max_replicas == {"agg": 4}


async def test_failing_tick_is_logged_and_the_next_one_runs(
    tmp_path: Path, prometheus_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path)
    report(tmp_path, ready=2)

    class FlakySource:
        calls = 0

        async def observe(
            self, now_s: float, spec: DeploymentSpec, replicas: Mapping[str, ReplicaCounts]
        ) -> list[PoolObservation]:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("prometheus exploded")
            return [
                PoolObservation(
                    deployment=spec.name,
                    role="agg",
                    time_s=now_s,
                    window_s=60,
                    ready=2,
                    starting=0,
                    draining=0,
                    pending=0,
                )
            ]

    source = FlakySource()
    runtime = AgentRuntime(config, source, VirtualConnector(tmp_path / "targets.json", "chat", ["agg"]), clock=Clock())
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    for _ in range(200):
        if len(runtime.recorder.state()["decisions"]) >= 2:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=2)
    await runtime.close()
    assert "tick failed" in caplog.text and "prometheus exploded" in caplog.text
    assert runtime.metrics.registry.get_sample_value("fleet_agent_tick_failures_total", {"deployment": "chat"}) == 1
    assert source.calls >= 3 and len(runtime.recorder.state()["decisions"]) >= 2


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize(
    "mutate, field, problem",
    [
        (lambda d: d["deployment"].pop("sla"), "deployment.sla", "required field is missing"),
        (lambda d: d.update(tick="5s"), "tick", "unknown key"),
        (lambda d: d["deployment"]["pools"]["agg"].update(max=0), "deployment.pools.agg.max", "must be >= min"),
        (lambda d: d["deployment"]["pools"]["agg"].update(profile="nope"), "deployment.pools.agg.profile", "not found"),
        (lambda d: d["deployment"].update(mode="disagg"), "deployment.pools", "needs exactly pools prefill, decode"),
        (lambda d: d["options"].update(predictor_typo=1), "options.predictor_typo", "unknown key"),
        (lambda d: d["prometheus"].update(window="soon"), "prometheus.window", "not a duration"),
        (
            lambda d: d["prometheus"].update(queries={"admitted": "sum(x{$nope})"}),
            "prometheus.queries.admitted",
            "unknown placeholder $nope",
        ),
        (
            lambda d: d["prometheus"].update(histograms={"input_tokens": "bad name"}),
            "prometheus.histograms.input_tokens",
            "not a Prometheus metric name",
        ),
        (lambda d: d.update(connector={"kind": "k8s"}), "connector", "does not match any of the expected tags"),
        (lambda d: d.update(connector={"kind": "virtual"}), "connector.path", "required field is missing"),
        (
            lambda d: d.update(
                connector={
                    "kind": "processes",
                    "state_file": "s.json",
                    "roles": {"prefill": {"argv": ["w", "{ready_file}"]}},
                }
            ),
            "connector.roles",
            "need a worker command for exactly the pools agg",
        ),
        (
            lambda d: d.update(
                connector={"kind": "processes", "state_file": "s.json", "roles": {"agg": {"argv": ["w"]}}}
            ),
            "connector.roles.agg.argv",
            "{ready_file}",
        ),
        (
            lambda d: d.update(
                options={"tune_knobs": True},
                connector={
                    "kind": "processes",
                    "state_file": "s.json",
                    "roles": {"agg": {"argv": ["w", "{ready_file}"]}},
                },
            ),
            "connector.roles.agg.argv",
            "options.tune_knobs needs a '{knobs}' item",
        ),
        (
            lambda d: d["telemetry"].update(token_file="tok"),
            "telemetry.token_env",
            "exactly one of token_env or token_file",
        ),
        (lambda d: d["telemetry"].update(listen="localhost"), "telemetry.listen", "expected HOST:PORT"),
        (lambda d: d.update(planner="planner:99999"), "planner.address", "expected HOST:PORT"),
        (lambda d: d.update(planner={"address": "gp:1", "cert_file": "agent.yaml"}), "planner.key_file", "mutual TLS"),
        (lambda d: d.update(planner={"address": "gp:1", "ca_file": "nope.pem"}), "planner.ca_file", "not found"),
    ],
)
def test_config_errors_name_file_and_field(tmp_path: Path, mutate: Any, field: str, problem: str) -> None:
    data = config_data(tmp_path, "http://127.0.0.1:9")
    mutate(data)
    path = write_config(tmp_path, data)
    with pytest.raises(InputError) as caught:
        load_config(path)
    assert caught.value.file == str(path) and caught.value.field == field
    assert problem in caught.value.problem


def test_config_file_level_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("deployment: [unclosed\n")
    with pytest.raises(InputError, match=r"agent.yaml: invalid YAML at line 2"):
        load_config(path)
    with pytest.raises(InputError, match="cannot read the agent config"):
        load_config(tmp_path / "missing.yaml")
    config = load_config(write_config(tmp_path, config_data(tmp_path, "http://127.0.0.1:9")))
    monkeypatch.delenv("TEST_AGENT_TOKEN", raising=False)
    with pytest.raises(InputError) as caught:
        config.control_token()
    assert caught.value.field == "telemetry.token_env" and "TEST_AGENT_TOKEN is unset" in str(caught.value)
    path = write_config(tmp_path, config_data(tmp_path, "http://127.0.0.1:9"))
    with pytest.raises(InputError) as caught:
        load_config(path, overrides={"planner.address": "no-port"})
    assert caught.value.field == "planner.address" and "from the command line" in caught.value.problem
    overridden = load_config(path, overrides={"planner.address": "gp:50051"})
    assert overridden.planner is not None and overridden.planner.address == "gp:50051"


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "examples/agent/agent.yaml")
    assert isinstance(config, AgentConfig) and config.spec().pools["agg"].initial_replicas == 2
    assert set(config.engine_models()) == {"agg"}


# ------------------------------------------------------------------ CLI


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fleet-planner")
    cli.register(top.add_subparsers(dest="command", required=True))
    return top


def test_cli_once_prints_the_decision(tmp_path: Path, prometheus_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, config_data(tmp_path, prometheus_url))
    report(tmp_path, ready=2)
    args = parser().parse_args(["agent", "--config", str(path), "--once", "--planner", "gp:50051"])
    planner = cli.configure(args).planner
    assert planner is not None and planner.address == "gp:50051"
    assert args.run(args) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["deployment"] == "chat" and decision["pools"][0]["role"] == "agg"
    # The planner is unreachable and was never reached: what runs is min(floor, running) = min(1, 2),
    # whatever the agent wanted (with no observation it holds at 2 rather than shrink on no data).
    assert json.loads((tmp_path / "targets.json").read_text())["targets"] == {"agg": 1}


def test_once_with_the_example_writes_nothing_into_the_repository(
    tmp_path: Path, prometheus_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's connector file and diagnostics go to the state folder (default
    ``./fleet-agent-state``), never beside the config in ``examples/agent/``."""
    example = ROOT / "examples/agent"
    before = sorted(p.relative_to(example) for p in example.rglob("*"))
    monkeypatch.chdir(tmp_path)
    config = load_config(example / "agent.yaml", {"prometheus.url": prometheus_url})
    assert config.state_dir == tmp_path / "fleet-agent-state"
    assert config.connector.kind == "virtual" and config.connector.path.parent == config.state_dir
    decision = asyncio.run(cli.run_once(config))
    assert decision.deployment == "assistant-8b"
    assert sorted(p.relative_to(example) for p in example.rglob("*")) == before
    assert (tmp_path / "fleet-agent-state" / config.connector.path.name).exists()
    elsewhere = load_config(example / "agent.yaml", {"state_dir": str(tmp_path / "s")})
    assert elsewhere.state_dir == tmp_path / "s" and str(elsewhere.connector.path).startswith(str(tmp_path / "s"))


async def test_sigterm_stops_cleanly(
    tmp_path: Path, prometheus_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``serve`` runs until SIGTERM (sent to this very process: its handler must be installed)."""
    monkeypatch.setenv("TEST_AGENT_TOKEN", TOKEN)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = config_data(tmp_path, prometheus_url)
    data["telemetry"]["listen"] = f"127.0.0.1:{port}"
    data["tick_s"] = 0.2
    config = parse_config(data, base_dir=tmp_path)
    report(tmp_path, ready=2)
    caplog.set_level(logging.INFO, logger="local_agent.runtime")
    task = asyncio.create_task(serve(config))
    targets = tmp_path / "targets.json"
    for _ in range(500):
        if json.loads(targets.read_text())["targets"]:
            break
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/api/state") as response:
        assert (await response.json())["latest"]
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, timeout=5)
    assert "stopping: workers are left running" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers removed again
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/api/state"):
            pass


async def test_tuning_agent_writes_its_engine_knobs_for_the_orchestrator(tmp_path: Path, prometheus_url: str) -> None:
    """With ``tune_knobs`` the live agent hands its knobs to the connector each tick (the virtual
    connector writes them beside the targets); without it the file has none."""
    data = config_data(tmp_path, prometheus_url)
    data["options"]["tune_knobs"] = True
    data["deployment"]["pools"]["agg"]["max_num_seqs"] = 64
    report(tmp_path, ready=3)
    async with open_runtime(parse_config(data, base_dir=tmp_path), clock=Clock()) as runtime:
        await runtime.tick()
    written = json.loads((tmp_path / "targets.json").read_text())
    assert written["knobs"] == {"agg": {"max_batch_tokens": 8192, "max_num_seqs": 64}}
    with pytest.raises(ValueError, match="unknown role"):
        await VirtualConnector(tmp_path / "targets.json", "chat", ["agg"]).apply_knobs({"decode": EngineKnobs()})

    report(tmp_path, ready=3)
    async with open_runtime(parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path)) as runtime:
        await runtime.tick()
    assert json.loads((tmp_path / "targets.json").read_text())["knobs"] == {}


async def test_a_connector_refusing_knobs_does_not_stop_scaling(tmp_path: Path, prometheus_url: str) -> None:
    """Knobs are handed over after the targets: a connector that cannot set them fails the tick
    (logged, counted) with the targets already applied."""

    class NoKnobs(VirtualConnector):
        async def apply_knobs(self, knobs: Mapping[str, EngineKnobs]) -> None:
            raise NotImplementedError("cannot set engine knobs")

    data = config_data(tmp_path, prometheus_url)
    data["options"]["tune_knobs"] = True
    config = parse_config(data, base_dir=tmp_path)
    report(tmp_path, ready=3)
    async with aiohttp.ClientSession() as session:
        source = PrometheusSource.from_config(config.prometheus, session)
        runtime = AgentRuntime(config, source, NoKnobs(tmp_path / "targets.json", "chat", ["agg"]), clock=Clock())
        with pytest.raises(NotImplementedError, match="engine knobs"):
            await runtime.tick()
        await runtime.close()
    assert runtime.agent is not None
    assert json.loads((tmp_path / "targets.json").read_text())["targets"] == runtime.agent.targets()
