"""``fleet-planner demo``: the scenario's traffic as real HTTP requests against emulated engines on
this machine, and beside it ``simulate`` on the same requests with the same policy.

What runs live (every piece the product's own code, started as it would be in production):

- one ``fleet-planner emulate`` process per replica, started (with the pool's ``startup_s`` as
  its model-loading time) and drained by the local processes connector;
- the frontend of :mod:`fleet_sim.demo.frontend`, exporting the Dynamo frontend metrics;
- Prometheus when a ``prometheus`` binary is on PATH, scraping the frontend and every engine, read
  by the agent's own Prometheus source; otherwise the direct source of :mod:`fleet_sim.demo.observe`;
- policy ``local``: the agent runtime of ``fleet-planner agent`` (:class:`AgentRuntime`) with the
  processes connector; ``global``: the same runtime linked over gRPC (bearer token) to a
  ``fleet-planner serve`` process, whose grants it applies; ``static``: the scenario's initial counts;
- a replay client sending every request of the scenario's first ``--slice`` at its arrival time,
  ``--speed`` times faster than recorded, as a streamed completion with its exact token counts.

Time: the scenario clock runs ``speed`` times the wall clock; the engines run ``speed`` times
faster, the agent ticks every ``interval_s / speed`` wall seconds, the planner's rounds and leases
are compressed alike, and every wall-clock duration measured (latencies, GPU time, start-up) is
multiplied by ``speed`` back into scenario time.

Counting, the same for both runs: SLO attainment is requests answered in full within TTFT and
mean ITL targets over all requests (prompts above the limit rejected, as simulated); GPU-hours are
every replica's GPUs from the replay's start to the slice's end while starting, ready or draining
(the initial replicas are ready at the start in both runs). The simulation is given the engines'
start-up time measured live (spawn to ready file) as its pools' ``startup_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web

from fleet_planner.deployment import PoolConfig
from fleet_planner.errors import InputError
from fleet_planner.planning import DeploymentSpec
from fleet_planner.yaml_input import load_yaml
from fleet_sim.demo.frontend import Frontend
from fleet_sim.demo.observe import DirectSource, ScenarioTimeSource
from fleet_sim.demo.services import Planner, Prometheus, planner_summary, start_planner, start_prometheus
from fleet_sim.outputs.summary import summarize
from fleet_sim.policies import ARBITER_OPTIONS, _agent_options
from fleet_sim.scenario import Scenario, load_scenario, parse_scenario
from fleet_sim.simulate import run_scenario
from fleet_sim.workload import Workload, build_workload
from local_agent.config import PrometheusQueries, parse_config
from local_agent.connectors.processes import ProcessConnector, WorkerCommand
from local_agent.observe.prometheus import PrometheusSource
from local_agent.runtime import AgentRuntime, ObservationSource

log = logging.getLogger(__name__)
DEMO_MODEL = "demo"
SETTLE_S = 0.2  # a tick runs this long after its instant (plus a scrape through Prometheus), so requests
# arriving at the instant are in its window, as the simulator counts them
Observe = Literal["auto", "prometheus", "direct"]


@dataclass(frozen=True)
class DemoOptions:
    slice_s: float
    policy: Literal["static", "local", "global"] = "local"
    speed: float = 1.0
    observe: Observe = "auto"


@dataclass
class Outcome:
    """One replayed request (seconds of wall time)."""

    arrival_s: float
    ttft_s: float | None = None
    itl_s: float | None = None  # None for a one-token answer (no ITL, so it meets any target)

    def met(self, ttft_s: float, itl_s: float) -> bool:
        """Answered in full within both targets (an unanswered request is a miss)."""
        if self.ttft_s is None:
            return False
        return self.ttft_s <= ttft_s and (self.itl_s is None or self.itl_s <= itl_s)


@dataclass
class AgentStats:
    ticks: int = 0
    failed: int = 0
    changes: list[tuple[float, str, int]] = field(default_factory=list)  # (scenario s, pool, new target) applied


async def run_demo(scenario_path: Path, options: DemoOptions, work_dir: Path) -> dict[str, Any]:
    """Replay live, then simulate with the start-up time measured live; both runs' figures."""
    scenario = load_scenario(scenario_path, overrides={"policy": options.policy, "duration": options.slice_s})
    if len(scenario.deployments) != 1:
        raise InputError(f"the demo runs one deployment (the scenario has {len(scenario.deployments)})")
    spec = scenario.deployment_specs()[0]
    prometheus_binary = _prometheus_binary(options, scenario.planner.interval_s)
    connector = ProcessConnector(_commands(spec, options.speed), work_dir / "workers.json", drain_timeout_s=60)
    services: list[Planner | Prometheus] = []
    try:
        initial: dict[str, int] = {str(role): pool.initial_replicas for role, pool in spec.pools.items()}
        await connector.apply(dict(initial))
        await _wait_ready(connector, initial)
        planner = await start_planner(scenario, spec, work_dir, options.speed) if options.policy == "global" else None
        services += [planner] if planner is not None else []
        live = await _live(scenario, spec, connector, options, work_dir, planner, prometheus_binary, services)
    finally:
        await connector.apply(dict.fromkeys(spec.pools, 0))
        await _wait_gone(connector)
        await connector.close()
        for service in services:
            await service.service.stop()
    live["engine_lag_ms"] = _worst_lag_ms(work_dir / "workers.json.run")
    simulation = run_scenario(_with_startup(scenario_path, options, live["startup_s"]))
    simulated = summarize(simulation)["fleet"]
    live["simulated"] = {key: simulated[key] for key in ("requests", "slo_attainment", "gpu_hours")}
    live["simulated"]["target_changes"] = len(simulation.decisions)
    live["simulated"]["changes"] = [f"{d.time_s:g}s {d.role}->{d.to_replicas}" for d in simulation.decisions]
    if planner is not None:
        live["planner"] = planner_summary(planner.state_dir, spec.name)
    return live


def _worst_lag_ms(run_dir: Path) -> float | None:
    """The latest any engine delivered an iteration (``emulate`` prints it when it exits): how
    well the host kept up with the engines' schedule."""
    lags = [
        float(line.split()[-1])
        for log_file in run_dir.glob("*.log")
        for line in log_file.read_text(errors="replace").splitlines()
        if line.startswith("DRAINED worst-lag-ms ")
    ]
    return max(lags) if lags else None


def _prometheus_binary(options: DemoOptions, interval_s: float) -> str | None:
    """The Prometheus to start for the agent's observations (None: observe directly, or no agent)."""
    binary = shutil.which("prometheus") if options.observe != "direct" and options.policy != "static" else None
    if options.observe == "prometheus" and binary is None:
        raise InputError("no prometheus binary on PATH (install it, or use --observe direct)", field="--observe")
    if binary is not None and interval_s / options.speed < 2:
        if options.observe == "prometheus":
            raise InputError(
                f"the agent's window (interval {interval_s:g} s / speed) must be >= 2 wall seconds for Prometheus",
                field="--speed",
            )
        log.warning("speed %g leaves Prometheus too short a window: observing directly", options.speed)
        return None
    return binary


def _commands(spec: DeploymentSpec, speed: float) -> dict[str, WorkerCommand]:
    """One ``fleet-planner emulate`` per replica, with the pool's profile, engine knobs and start-up."""
    return {
        role: WorkerCommand(
            argv=[sys.executable, "-m", "fleet_planner.emulate", "--profile", pool.profile_path]
            + ["--port", "{port}", "--ready-file", "{ready_file}", "--role", role, "--model", DEMO_MODEL]
            + ["--max-batch-tokens", str(pool.max_batch_tokens), "--max-num-seqs", str(pool.max_num_seqs)]
            + ["--namespace", spec.name, "--no-frontend-metrics"]
            + ["--speed", f"{speed:g}", "--startup-s", f"{pool.startup_s / speed:g}"]
        )
        for role, pool in spec.pools.items()
    }


async def _live(
    scenario: Scenario,
    spec: DeploymentSpec,
    connector: ProcessConnector,
    options: DemoOptions,
    work: Path,
    planner: Planner | None,
    prometheus_binary: str | None,
    services: list[Planner | Prometheus],
) -> dict[str, Any]:
    """The replay with the frontend, the GPU meter and (policies local and global) the agent beside it."""
    speed, interval = options.speed, scenario.planner.interval_s
    frontend = _frontend(scenario, spec, connector, speed)
    runner = web.AppRunner(frontend.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    frontend_url = _url(runner.addresses[0][1])
    prometheus = None
    settle_s = SETTLE_S
    if prometheus_binary is not None:
        scrape_s = min(1.0, interval / speed / 4)
        settle_s += scrape_s
        prometheus = await start_prometheus(prometheus_binary, work, scrape_s, _targets(frontend_url, connector))
        services.append(prometheus)
    stats = AgentStats()
    try:
        async with aiohttp.ClientSession() as session:
            workload = build_workload(scenario)  # everything slow is ready before the clock starts
            clock = ScenarioClock(speed)
            runtime = None
            if options.policy != "static":
                source = _source(scenario, frontend, connector, session, prometheus, speed)
                runtime = _runtime(scenario, spec, work, source, connector, planner, clock)
            start = clock.start = time.monotonic()
            meter = GpuMeter(connector, spec, start, prometheus, frontend_url)
            background = [asyncio.create_task(meter.run(scenario.duration_s / speed))]
            if runtime is not None:
                report_s = runtime.config.between_decisions_s
                between = report_s / speed if report_s is not None else None
                background.append(
                    asyncio.create_task(_agent_loop(runtime, start, interval / speed, settle_s, stats, between))
                )
            try:
                outcomes = await _replay(session, frontend_url, workload, scenario, start, speed)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                if runtime is not None and runtime.planner is not None:
                    await runtime.planner.close()
    finally:
        await runner.cleanup()
    sla = spec.sla
    met = sum(1 for o in outcomes if o.met(sla.ttft_ms / 1000 / speed, sla.itl_ms / 1000 / speed))
    observed = "prometheus" if prometheus is not None else "direct frontend records and /metrics scrapes"
    return {
        "setup": {
            "policy": options.policy,
            "speed": speed,
            "slice_s": options.slice_s,
            "observed_through": "nothing (static)" if runtime is None else observed,
        },
        "startup_s": meter.startup_s() * speed,
        "live": {
            "requests": len(outcomes),
            "slo_attainment": met / max(1, len(outcomes)),
            "gpu_hours": meter.gpu_seconds * speed / 3600,
            "target_changes": len(stats.changes),
            "changes": [f"{t:g}s {role}->{n}" for t, role, n in stats.changes],
        },
        "agent": None if runtime is None else {"ticks": stats.ticks, "failed_ticks": stats.failed},
    }


def _frontend(scenario: Scenario, spec: DeploymentSpec, connector: ProcessConnector, speed: float) -> Frontend:
    entry = next(iter(scenario.deployments[0].pools.values()))  # its KV leaves for decode in disaggregated mode
    origin = time.monotonic()
    return Frontend(
        spec.mode,
        lambda role: [_url(w.port) for w in connector.workers() if w.role == role and w.state == "ready"],
        kv_transfer_s_per_token=entry.kv_bytes_per_token * 8 / (entry.kv_transfer_gbps * 1e9) / speed,
        namespace=spec.name,
        model=DEMO_MODEL,
        clock=lambda: time.monotonic() - origin,
    )


def _source(
    scenario: Scenario,
    frontend: Frontend,
    connector: ProcessConnector,
    session: aiohttp.ClientSession,
    prometheus: Prometheus | None,
    speed: float,
) -> ScenarioTimeSource:
    """The agent's observations: Prometheus' (the agent's own queries) or the direct ones, over
    one planner interval, in scenario time, ``observation_delay_s`` late."""
    window_s = scenario.planner.interval_s / speed
    inner: ObservationSource
    if prometheus is not None:
        inner = PrometheusSource(prometheus.url, PrometheusQueries(), session, window_s=window_s)
        return ScenarioTimeSource(inner, time.time, speed, scenario.planner.observation_delay_s)
    inner = DirectSource(frontend, connector, session, window_s=window_s)
    return ScenarioTimeSource(inner, frontend.clock, speed, scenario.planner.observation_delay_s)


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _targets(frontend_url: str, connector: ProcessConnector) -> list[str]:
    """What Prometheus scrapes: the frontend and every engine alive (starting, ready or draining)."""
    return [frontend_url.removeprefix("http://")] + [f"127.0.0.1:{w.port}" for w in connector.workers()]


class GpuMeter:
    """GPU-seconds (wall) held by the workers — starting, ready or draining — from ``start`` for
    ``duration_s``, sampled every ``period_s``; also each worker's start-up (spawn to ready), and
    Prometheus' targets kept current."""

    def __init__(
        self,
        connector: ProcessConnector,
        spec: DeploymentSpec,
        start: float,
        prometheus: Prometheus | None,
        frontend_url: str,
        period_s: float = 0.5,
    ):
        self.connector = connector
        self.prometheus = prometheus
        self.frontend_url = frontend_url
        self.gpus: dict[str, int] = {str(role): pool.gpus_per_replica for role, pool in spec.pools.items()}
        self.start = start
        self.period_s = period_s
        self.gpu_seconds = 0.0
        self.startups: dict[str, float] = {}  # worker id -> wall seconds from spawn to ready (seen)
        self.spawned_before: set[str] = set()

    async def run(self, duration_s: float) -> None:
        self.spawned_before = {w.worker_id for w in self.connector.workers()}
        self._startups()
        last = self.start
        while True:
            await asyncio.sleep(self.period_s)
            now = min(time.monotonic(), self.start + duration_s)
            counts = await self.connector.observe_replicas()
            held = sum(self.gpus[role] * (c.ready + c.starting + c.draining) for role, c in counts.items())
            self.gpu_seconds += held * (now - last)
            last = now
            self._startups()
            if self.prometheus is not None:
                self.prometheus.set_targets(_targets(self.frontend_url, self.connector))
            if now >= self.start + duration_s:
                return

    def _startups(self) -> None:
        """Spawn to ready file (its modification time), for every worker seen ready."""
        for worker in self.connector.workers():
            if worker.state != "starting" and worker.worker_id not in self.startups:
                with contextlib.suppress(FileNotFoundError):
                    ready_at = Path(worker.ready_file).stat().st_mtime
                    self.startups[worker.worker_id] = ready_at - worker.started_at

    def startup_s(self) -> float:
        """Mean start-up of the workers spawned during the replay (else of the initial ones)."""
        during = [s for w, s in self.startups.items() if w not in self.spawned_before]
        chosen = during or list(self.startups.values())
        return sum(chosen) / len(chosen) if chosen else 0.0


def _runtime(
    scenario: Scenario,
    spec: DeploymentSpec,
    work: Path,
    source: ScenarioTimeSource,
    connector: ProcessConnector,
    planner: Planner | None,
    clock: ScenarioClock,
) -> AgentRuntime:
    """The live agent's runtime (``fleet-planner agent``) for the scenario's deployment and planner
    options, on the scenario clock; with ``planner``, linked to it over gRPC with its token."""
    deployment = scenario.deployments[0]
    pools = {
        role: {key: getattr(pool, key) for key in PoolConfig.model_fields} for role, pool in deployment.pools.items()
    }
    data: dict[str, Any] = {
        "deployment": {
            "name": spec.name,
            "tenant": spec.tenant,
            "endpoint": spec.endpoint,
            "mode": spec.mode,
            "sla": spec.sla.model_dump(),
            "pools": pools,
        },
        "options": _agent_options(scenario, ignore=ARBITER_OPTIONS).model_dump(),
        "tick_s": scenario.planner.interval_s,
        "prometheus": {"url": "http://127.0.0.1:9"},  # unused: the demo hands the runtime its source
        "connector": {
            "kind": "processes",
            "state_file": str(work / "workers.json"),
            "roles": {role: command.model_dump() for role, command in _commands(spec, clock.speed).items()},
        },
        "state_dir": str(work),
    }
    if planner is not None:
        data["planner"] = {"address": planner.address, "token_file": str(planner.token_file)}
    config = parse_config(data, base_dir=work)
    return AgentRuntime(config, source, connector, clock=clock)


@dataclass
class ScenarioClock:
    """Scenario seconds since the replay's start (set when it starts): the wall clock times ``speed``."""

    speed: float
    start: float = math.inf

    def now(self) -> float:
        return (time.monotonic() - self.start) * self.speed


async def _agent_loop(
    runtime: AgentRuntime,
    start: float,
    period_s: float,
    settle_s: float,
    stats: AgentStats,
    report_period_s: float | None,
) -> None:
    """Ticks every ``period_s`` wall seconds from ``start``, each ``settle_s`` after its instant; a
    failing tick is logged and counted, and the next one runs, as in the sidecar. With a planner,
    every ``report_period_s`` between ticks it sends what the sidecar sends between decisions."""
    tick = 0
    applied: dict[str, int] | None = None

    def record(targets: dict[str, int] | None, at_s: float) -> None:
        nonlocal applied
        if targets is None:
            return
        if applied is not None:  # one change per pool whose target moved, as the simulator records them
            stats.changes += [(at_s, role, n) for role, n in targets.items() if applied.get(role) != n]
        applied = targets

    while True:
        due = start + tick * period_s + settle_s
        while report_period_s is not None and tick and time.monotonic() + report_period_s < due:
            await asyncio.sleep(report_period_s)
            try:
                await runtime.between_decisions()
            except Exception:
                log.exception("agent report between decisions failed")
                continue
            effects = runtime.last_effects
            record(effects.apply if effects is not None else None, runtime.clock.now())
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tick += 1
        try:
            decision = await runtime.tick()
        except Exception:
            stats.failed += 1
            log.exception("agent tick failed")
            continue
        stats.ticks += 1
        effects = runtime.last_effects
        targets = effects.apply if effects is not None else None
        if runtime.config.planner is None and not decision.advisory:
            targets = {pool.role: pool.target for pool in decision.pools}
        record(targets, (tick - 1) * runtime.config.tick_s)


async def _wait_ready(connector: ProcessConnector, wanted: dict[str, int], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        counts = await connector.observe_replicas()
        if all(counts[role].ready >= n for role, n in wanted.items()):
            return
        if time.monotonic() > deadline:
            raise InputError(f"emulated engines not ready after {timeout_s:.0f} s (see {connector.workers()})")
        await asyncio.sleep(0.2)


async def _wait_gone(connector: ProcessConnector, timeout_s: float = 90) -> None:
    """Every drained worker has exited (the connector kills one still draining after its timeout)."""
    deadline = time.monotonic() + timeout_s
    while any(c.draining or c.ready or c.starting for c in (await connector.observe_replicas()).values()):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


async def _replay(
    session: aiohttp.ClientSession,
    frontend_url: str,
    workload: Workload,
    scenario: Scenario,
    start: float,
    speed: float,
) -> list[Outcome]:
    """Send every request at its arrival time / ``speed`` after ``start`` and time its tokens."""
    max_input = next(iter(scenario.endpoint_configs().values()))[1].max_input_tokens
    url = frontend_url + "/v1/completions"
    arrivals, inputs, outputs = workload.arrival_s, workload.input_tokens, workload.output_tokens
    outcomes = [Outcome(float(a) / speed) for a in arrivals]
    tasks = []
    for i, arrival in enumerate(arrivals.tolist()):
        delay = start + arrival / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if max_input is not None and inputs[i] > max_input:
            continue  # rejected at the gateway, a miss (as simulated)
        tasks.append(asyncio.create_task(_one(session, url, int(inputs[i]), int(outputs[i]), outcomes[i])))
    grace = max(0.0, start + (scenario.duration_s + 900) / speed - time.monotonic())  # the simulator's 15 minutes
    if tasks:
        await asyncio.wait(tasks, timeout=grace)
    return outcomes


async def _one(session: aiohttp.ClientSession, url: str, n_in: int, n_out: int, outcome: Outcome) -> None:
    body = {"model": DEMO_MODEL, "prompt": [1000] * n_in, "max_tokens": n_out, "stream": True}
    sent = time.monotonic()
    first = last = None
    tokens = 0
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                return
            async for line in response.content:
                if line.startswith(b"data: {"):
                    now = time.monotonic()
                    first = now if first is None else first
                    last = now
                    tokens += 1
    except aiohttp.ClientError:
        return
    if first is None or last is None or tokens != n_out:
        return
    outcome.ttft_s = first - sent
    outcome.itl_s = (last - first) / (tokens - 1) if tokens > 1 else None


def _with_startup(scenario_path: Path, options: DemoOptions, startup_s: float) -> Scenario:
    """The scenario for ``simulate``, its replicas starting as fast as the live engines did."""
    data = load_yaml(scenario_path.read_text())
    for deployment in data["deployments"]:
        for pool in deployment["pools"].values():
            pool["startup_s"] = round(startup_s, 1)
    overrides = {"policy": options.policy, "duration": options.slice_s}
    return parse_scenario(data, base_dir=scenario_path.parent, file=scenario_path, overrides=overrides)


def render(result: dict[str, Any]) -> str:
    live, sim, setup = result["live"], result["simulated"], result["setup"]
    lines = [
        f"policy {setup['policy']}, {setup['slice_s']:g} s of traffic at speed {setup['speed']:g}, "
        f"agent observing through {setup['observed_through']}, engines' start-up {result['startup_s']:.1f} s",
        f"{'':10s} {'requests':>9s} {'SLO attainment':>15s} {'GPU-hours':>10s} {'target changes':>15s}",
    ]
    for name, row in (("live", live), ("simulated", sim)):
        lines.append(
            f"{name:10s} {row['requests']:9.0f} {row['slo_attainment'] * 100:14.2f}% {row['gpu_hours']:10.3f}"
            f" {row['target_changes']:15d}"
        )
    diff = (live["slo_attainment"] - sim["slo_attainment"]) * 100
    rel = (live["gpu_hours"] / sim["gpu_hours"] - 1) * 100 if sim["gpu_hours"] else math.nan
    lines.append(f"live - simulated: {diff:+.2f} points attainment, {rel:+.1f}% GPU-hours")
    for name, row in (("live", live), ("simulated", sim)):
        lines.append(f"{name} target changes (scenario time): {', '.join(row['changes']) or 'none'}")
    if result.get("engine_lag_ms") is not None:
        lines.append(
            f"engines: worst late delivery of an iteration {result['engine_lag_ms']:.1f} ms of wall time (host load)"
        )
    if result.get("agent"):
        lines.append(f"agent: {result['agent']['ticks']} ticks, {result['agent']['failed_ticks']} failed")
    if result.get("planner"):
        planner = result["planner"]
        grants = ", ".join(f"{role} {' -> '.join(map(str, seq))}" for role, seq in planner["grants"].items())
        lines.append(
            f"global planner: {planner['rounds']} rounds, the deployment bid in {planner['rounds_with_bids']}; "
            f"grants {grants}"
        )
    return "\n".join(lines)
