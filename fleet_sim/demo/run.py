"""``fleet-planner demo``: the scenario's traffic as real HTTP requests against emulated engines on
this machine, and beside it ``simulate`` on the same requests.

What runs live: one ``fleet-planner emulate`` process per replica, started and drained by the
local processes connector (``local_agent.connectors.processes``); the frontend of
:mod:`fleet_sim.demo.frontend`; a replay client that sends every request of the scenario's
workload at its arrival time (real time) as a streamed completion with its exact token counts, and
times its tokens. Replica counts are the scenario's ``initial`` ones, fixed (the ``static``
policy); the simulator runs the same workload with the same policy. SLO attainment counts a
request as met when TTFT and mean ITL meet the deployment's targets (prompts above the limit are
rejected, as the simulator does); GPU-hours are each worker process's lifetime within the run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from fleet_planner.errors import InputError
from fleet_planner.planning import DeploymentSpec, PoolObservation
from fleet_sim.adapters.local import build_agents
from fleet_sim.demo.frontend import Frontend
from fleet_sim.demo.observe import DirectSource
from fleet_sim.outputs.summary import summarize
from fleet_sim.policies import ARBITER_OPTIONS, _agent_options
from fleet_sim.scenario import Scenario, load_scenario, parse_scenario
from fleet_sim.simulate import run_scenario
from fleet_sim.workload import Workload, build_workload
from local_agent.connectors.processes import ProcessConnector, WorkerCommand
from local_agent.models import AgentInput

log = logging.getLogger(__name__)
DEMO_MODEL = "demo"


@dataclass
class Outcome:
    """One replayed request."""

    arrival_s: float
    ttft_s: float | None = None
    itl_s: float | None = None  # None for a one-token answer (no ITL, so it meets any target)

    def met(self, ttft_s: float, itl_s: float) -> bool:
        """Answered in full within both targets (an unanswered request is a miss)."""
        if self.ttft_s is None:
            return False
        return self.ttft_s <= ttft_s and (self.itl_s is None or self.itl_s <= itl_s)


async def run_demo(scenario_path: Path, slice_s: float, policy: str, work_dir: Path) -> dict[str, dict[str, float]]:
    """Replay live, then simulate with the start-up time measured live; both runs' figures."""
    scenario = load_scenario(scenario_path, overrides={"policy": policy, "duration": slice_s})
    if len(scenario.deployments) != 1:
        raise InputError(f"the demo runs one deployment (the scenario has {len(scenario.deployments)})")
    spec = scenario.deployment_specs()[0]
    roles: list[str] = list(spec.pools)
    connector = ProcessConnector(_commands(spec), work_dir / "workers.json", drain_timeout_s=60)
    initial: dict[str, int] = {role: pool.initial_replicas for role, pool in spec.pools.items()}
    try:
        started = time.monotonic()
        await connector.apply(dict(initial))
        await _wait_ready(connector, initial)
        startup_s = time.monotonic() - started
        live = await _live(scenario, spec, connector)
    finally:
        await connector.apply(dict.fromkeys(roles, 0))
        await _wait_gone(connector)
        await connector.close()
    log.info("engines took %.1f s to start; the simulation uses that start-up time", startup_s)
    simulated = summarize(run_scenario(_with_startup(scenario_path, slice_s, policy, startup_s)))["fleet"]
    return {
        "live": live,
        "simulated": {key: simulated[key] for key in ("requests", "slo_attainment", "gpu_hours")},
    }


def _commands(spec: DeploymentSpec) -> dict[str, WorkerCommand]:
    """One ``fleet-planner emulate`` per replica, with the pool's profile and engine knobs."""
    return {
        role: WorkerCommand(
            argv=[sys.executable, "-m", "fleet_planner.emulate", "--profile", pool.profile_path]
            + ["--port", "{port}", "--ready-file", "{ready_file}", "--role", role, "--model", DEMO_MODEL]
            + ["--max-batch-tokens", str(pool.max_batch_tokens), "--max-num-seqs", str(pool.max_num_seqs)]
            + ["--no-frontend-metrics"]
        )
        for role, pool in spec.pools.items()
    }


async def _live(scenario: Scenario, spec: DeploymentSpec, connector: ProcessConnector) -> dict[str, float]:
    """The replay with the frontend, the GPU meter and (policy ``local``) the agent running beside it."""
    deployment = scenario.deployments[0]
    _, trace = scenario.endpoint_configs()[spec.endpoint]
    entry = next(iter(deployment.pools.values()))  # its KV leaves for decode in disaggregated mode
    start = time.monotonic()
    frontend = Frontend(
        spec.mode,
        lambda role: [
            f"http://127.0.0.1:{w.port}" for w in connector.workers() if w.role == role and w.state == "ready"
        ],
        kv_transfer_s_per_token=entry.kv_bytes_per_token * 8 / (entry.kv_transfer_gbps * 1e9),
        clock=lambda: time.monotonic() - start,
    )
    meter = GpuMeter(connector, {role: pool.gpus_per_replica for role, pool in spec.pools.items()}, start)
    background = [asyncio.create_task(meter.run(scenario.duration_s))]
    if scenario.planner.policy == "local":
        background.append(asyncio.create_task(_agent_loop(scenario, spec, frontend, connector, start)))
    try:
        workload = build_workload(scenario)
        outcomes = await _replay(frontend, workload, scenario.duration_s, trace.max_input_tokens, start)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    met = sum(1 for o in outcomes if o.met(spec.sla.ttft_ms / 1000, spec.sla.itl_ms / 1000))
    return {"requests": len(outcomes), "slo_attainment": met / max(1, len(outcomes)), "gpu_hours": meter.seconds / 3600}


class GpuMeter:
    """GPU-seconds held by the workers (starting, ready or draining) from ``start`` for ``duration_s``,
    sampled every ``period_s``, as the simulator counts them."""

    def __init__(self, connector: ProcessConnector, gpus: dict[str, int], start: float, period_s: float = 0.5):
        self.connector = connector
        self.gpus = gpus
        self.start = start
        self.period_s = period_s
        self.seconds = 0.0

    async def run(self, duration_s: float) -> None:
        last = self.start
        while last < self.start + duration_s:
            await asyncio.sleep(self.period_s)
            now = min(time.monotonic(), self.start + duration_s)
            counts = await self.connector.observe_replicas()
            held = sum(self.gpus[role] * (c.ready + c.starting + c.draining) for role, c in counts.items())
            self.seconds += held * (now - last)
            last = now


async def _agent_loop(
    scenario: Scenario, spec: DeploymentSpec, frontend: Frontend, connector: ProcessConnector, start: float
) -> None:
    """The local agent of ``simulate --policy local``, on the live fleet: ticks every interval from
    0, observations delivered ``observation_delay_s`` late, targets applied through the connector."""
    interval = scenario.planner.interval_s
    agent = build_agents([spec], interval, _agent_options(scenario, ignore=ARBITER_OPTIONS))[spec.name]
    queue: deque[tuple[float, list[PoolObservation]]] = deque()
    delivered: list[PoolObservation] | None = None
    async with aiohttp.ClientSession() as session:
        source = DirectSource(frontend, connector, session, window_s=interval)
        tick = 0
        while True:
            await asyncio.sleep(max(0.0, start + tick * interval - time.monotonic()))
            now = tick * interval
            replicas = await connector.observe_replicas()
            queue.append((now, await source.observe(now, spec, replicas)))
            while queue and queue[0][0] <= now - scenario.planner.observation_delay_s + 1e-9:
                delivered = queue.popleft()[1]
            decision = agent.step(AgentInput(now_s=now, observations=delivered)).decision
            if not decision.advisory:
                await connector.apply({pool.role: pool.target for pool in decision.pools})
            tick += 1


async def _wait_ready(connector: ProcessConnector, wanted: dict[str, int], timeout_s: float = 120) -> None:
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
    frontend: Frontend, workload: Workload, duration_s: float, max_input: int | None, start: float
) -> list[Outcome]:
    """Send every request at its arrival time (after ``start``) and time its tokens."""
    runner = web.AppRunner(frontend.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/completions"
    arrivals, inputs, outputs = workload.arrival_s, workload.input_tokens, workload.output_tokens
    outcomes = [Outcome(float(a)) for a in arrivals]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = []
            for i, arrival in enumerate(arrivals.tolist()):
                delay = start + arrival - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if max_input is not None and inputs[i] > max_input:
                    continue  # rejected at the gateway, a miss (as simulated)
                tasks.append(asyncio.create_task(_one(session, url, int(inputs[i]), int(outputs[i]), outcomes[i])))
            grace = max(0.0, start + duration_s + 900 - time.monotonic())  # the simulator's 15 minutes
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
    finally:
        await runner.cleanup()
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


def _with_startup(scenario_path: Path, slice_s: float, policy: str, startup_s: float) -> Scenario:
    """The scenario for ``simulate``, its replicas starting as fast as the live engines did."""
    data = yaml.safe_load(scenario_path.read_text())
    for deployment in data["deployments"]:
        for pool in deployment["pools"].values():
            pool["startup_s"] = round(startup_s, 1)
    overrides = {"policy": policy, "duration": slice_s}
    return parse_scenario(data, base_dir=scenario_path.parent, file=scenario_path, overrides=overrides)


def render(result: dict[str, dict[str, float]]) -> str:
    live, sim = result["live"], result["simulated"]
    lines = [f"{'':10s} {'requests':>9s} {'SLO attainment':>15s} {'GPU-hours':>10s}"]
    for name, row in (("live", live), ("simulated", sim)):
        lines.append(f"{name:10s} {row['requests']:9.0f} {row['slo_attainment'] * 100:14.2f}% {row['gpu_hours']:10.3f}")
    diff = (live["slo_attainment"] - sim["slo_attainment"]) * 100
    rel = (live["gpu_hours"] / sim["gpu_hours"] - 1) * 100 if sim["gpu_hours"] else math.nan
    lines.append(f"live - simulated: {diff:+.2f} points attainment, {rel:+.1f}% GPU-hours")
    return "\n".join(lines)
