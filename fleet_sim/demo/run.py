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
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from fleet_planner.errors import InputError
from fleet_planner.planning import PoolRole
from fleet_sim.demo.frontend import Frontend
from fleet_sim.outputs.summary import summarize
from fleet_sim.scenario import Scenario
from fleet_sim.simulate import run_scenario
from fleet_sim.workload import build_workload
from local_agent.connectors.processes import ProcessConnector, WorkerCommand

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


async def run_demo(scenario: Scenario, work_dir: Path) -> dict[str, dict[str, float]]:
    """Replay live and simulate; the two summaries' SLO attainment and GPU-hours."""
    if len(scenario.deployments) != 1:
        raise InputError(f"the demo runs one deployment (the scenario has {len(scenario.deployments)})")
    spec = scenario.deployment_specs()[0]
    deployment = scenario.deployments[0]
    workload = build_workload(scenario)
    roles: list[PoolRole] = list(spec.pools)
    _, trace = scenario.endpoint_configs()[spec.endpoint]
    commands: dict[str, WorkerCommand] = {
        role: WorkerCommand(
            argv=[sys.executable, "-m", "fleet_planner.cli", "emulate", "--profile", spec.pools[role].profile_path]
            + ["--port", "{port}", "--ready-file", "{ready_file}", "--role", role, "--model", DEMO_MODEL]
            + ["--max-batch-tokens", str(spec.pools[role].max_batch_tokens)]
            + ["--max-num-seqs", str(spec.pools[role].max_num_seqs), "--no-frontend-metrics"]
        )
        for role in roles
    }
    connector = ProcessConnector(commands, work_dir / "workers.json", drain_timeout_s=60)
    started = time.monotonic()
    try:
        await connector.apply({role: spec.pools[role].initial_replicas for role in roles})
        await _wait_ready(connector, {role: spec.pools[role].initial_replicas for role in roles})
        ready_at = time.monotonic()
        pool = next(iter(deployment.pools.values()))  # the entry pool: its KV leaves for decode
        frontend = Frontend(
            spec.mode,
            lambda role: [f"http://127.0.0.1:{w.port}" for w in connector.workers() if w.role == role and w.ready],
            kv_transfer_s_per_token=pool.kv_bytes_per_token * 8 / (pool.kv_transfer_gbps * 1e9),
        )
        outcomes = await _replay(frontend, workload, scenario.duration_s, trace.max_input_tokens)
        finished = time.monotonic()
    finally:
        await connector.apply(dict.fromkeys(roles, 0))
        await _wait_gone(connector)
        await connector.close()
    gpus = sum(spec.pools[r].initial_replicas * spec.pools[r].gpus_per_replica for r in roles)
    live_hours = gpus * min(finished - ready_at, scenario.duration_s) / 3600.0
    log.info("workers took %.0f s to start (not counted, as the simulator starts them ready)", ready_at - started)
    met = sum(1 for o in outcomes if o.met(spec.sla.ttft_ms / 1000, spec.sla.itl_ms / 1000))
    simulated = summarize(run_scenario(scenario))["fleet"]
    return {
        "live": {"requests": len(outcomes), "slo_attainment": met / max(1, len(outcomes)), "gpu_hours": live_hours},
        "simulated": {
            "requests": simulated["requests"],
            "slo_attainment": simulated["slo_attainment"],
            "gpu_hours": simulated["gpu_hours"],
        },
    }


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


async def _replay(frontend: Frontend, workload: object, duration_s: float, max_input: int | None) -> list[Outcome]:
    """Send every request at its arrival time (relative to now) and time its tokens."""
    runner = web.AppRunner(frontend.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/completions"
    arrivals = np.asarray(workload.arrival_s)  # type: ignore[attr-defined]
    inputs = np.asarray(workload.input_tokens)  # type: ignore[attr-defined]
    outputs = np.asarray(workload.output_tokens)  # type: ignore[attr-defined]
    outcomes = [Outcome(float(a)) for a in arrivals]
    start = time.monotonic()
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


def prepare(scenario_path: Path, slice_s: float) -> Scenario:
    """The scenario's first ``slice_s`` seconds with the ``static`` policy."""
    from fleet_sim.scenario import load_scenario

    return load_scenario(scenario_path, overrides={"policy": "static", "duration": slice_s})


def render(result: dict[str, dict[str, float]]) -> str:
    live, sim = result["live"], result["simulated"]
    lines = [f"{'':10s} {'requests':>9s} {'SLO attainment':>15s} {'GPU-hours':>10s}"]
    for name, row in (("live", live), ("simulated", sim)):
        lines.append(f"{name:10s} {row['requests']:9.0f} {row['slo_attainment'] * 100:14.2f}% {row['gpu_hours']:10.3f}")
    diff = (live["slo_attainment"] - sim["slo_attainment"]) * 100
    rel = (live["gpu_hours"] / sim["gpu_hours"] - 1) * 100 if sim["gpu_hours"] else math.nan
    lines.append(f"live - simulated: {diff:+.2f} points attainment, {rel:+.1f}% GPU-hours")
    return "\n".join(lines)
