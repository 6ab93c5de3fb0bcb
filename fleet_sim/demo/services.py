"""The demo's service processes besides the engines: the global planner (``fleet-planner serve``,
the production command, with a generated bearer token on loopback) and Prometheus (the system's
``prometheus`` binary, scraping the frontend and every engine through a file of targets the demo
rewrites as workers come and go)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from fleet_planner.errors import InputError
from fleet_planner.planning import DeploymentSpec
from fleet_planner.yaml_input import load_yaml
from fleet_sim.scenario import Scenario


@dataclass
class Service:
    """A child process whose output goes to ``log``."""

    name: str
    process: asyncio.subprocess.Process
    log: Path

    async def stop(self, timeout_s: float = 15) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def failed(self) -> InputError:
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        return InputError(f"{self.name} exited (code {self.process.returncode}): " + " | ".join(tail))


async def _spawn(name: str, argv: list[str], log: Path) -> Service:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    return Service(name, process, log)


@dataclass
class Planner:
    """The global planner process and what an agent needs to reach it."""

    service: Service
    address: str
    token_file: Path
    state_dir: Path


async def start_planner(scenario: Scenario, spec: DeploymentSpec, work: Path, speed: float) -> Planner:
    """``fleet-planner serve`` with the scenario's tenant policy (its fleet = the scenario's GPUs,
    as ``simulate`` does), one generated token for the deployment, allocation rounds every planner
    interval and leases of four intervals (the simulator's), both compressed by ``speed``."""
    path = scenario.planner.options.get("policy_file")
    if not path:
        raise InputError("policy global needs planner.policy_file (a tenant policy YAML)", field="planner.policy_file")
    policy = load_yaml((scenario.base_dir / path).read_text())
    policy["fleet"] = {"gpus": dict(scenario.gpus)}
    (work / "tenants.yaml").write_text(yaml.safe_dump(policy))
    token = secrets.token_hex(16)
    (work / "tokens.yaml").write_text(yaml.safe_dump({token: {"deployment": spec.name, "tenant": spec.tenant}}))
    token_file = work / "planner.token"
    token_file.write_text(token)
    round_s = scenario.planner.interval_s / speed
    argv = [sys.executable, "-m", "global_planner.cli", "serve", "--policy", str(work / "tenants.yaml")]
    argv += ["--listen", "127.0.0.1:0", "--tokens", str(work / "tokens.yaml"), "--state-dir", str(work / "planner")]
    argv += ["--round-s", f"{round_s:g}", "--lease-s", f"{4 * round_s:g}"]
    service = await _spawn("the global planner", argv, work / "planner.log")
    deadline = time.monotonic() + 60
    while not (line := _line_starting(service.log, "serving on ")):
        if service.process.returncode is not None:
            raise service.failed()
        if time.monotonic() > deadline:
            await service.stop()
            raise InputError(f"the global planner did not start within 60 s (see {service.log})")
        await asyncio.sleep(0.1)
    return Planner(service, line.removeprefix("serving on "), token_file, work / "planner")


def _line_starting(path: Path, prefix: str) -> str | None:
    return next((line for line in path.read_text(errors="replace").splitlines() if line.startswith(prefix)), None)


def planner_summary(state_dir: Path, deployment: str) -> dict[str, object]:
    """What the planner's audit log says it did: rounds, the rounds in which the deployment bid
    (its reports had arrived), and each pool's successive grants."""
    from fleet_planner.contract.models import RoundRecord
    from global_planner.service.audit import AUDIT_FILE

    rounds = bids = 0
    grants: dict[str, list[int]] = {}
    path = state_dir / AUDIT_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        record = RoundRecord.model_validate_json(line)
        rounds += 1
        for entry in record.deployments:
            if entry.deployment != deployment:
                continue
            bids += entry.bidding
            for pool in entry.pools:
                seen = grants.setdefault(pool.role, [])
                if not seen or seen[-1] != pool.granted:
                    seen.append(pool.granted)
    return {"rounds": rounds, "rounds_with_bids": bids, "grants": grants}


class Prometheus:
    """A Prometheus server scraping the demo's targets every ``scrape_s`` seconds."""

    def __init__(self, service: Service, url: str, targets_file: Path):
        self.service = service
        self.url = url
        self.targets_file = targets_file
        self._targets: list[str] | None = None

    def set_targets(self, targets: list[str]) -> None:
        """Rewrite the file-based service discovery (atomically) when the set changed."""
        if targets == self._targets:
            return
        tmp = self.targets_file.with_name(self.targets_file.name + ".tmp")
        tmp.write_text(json.dumps([{"targets": targets}]))
        tmp.replace(self.targets_file)
        self._targets = targets


async def start_prometheus(binary: str, work: Path, scrape_s: float, targets: list[str]) -> Prometheus:
    interval = f"{max(1, round(scrape_s * 1000))}ms"
    targets_file = work / "targets.json"
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "fleet-demo",
                        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
                    }
                ],
            }
        )
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    argv = [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'prometheus-data'}"]
    argv += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    prometheus = Prometheus(await _spawn("prometheus", argv, work / "prometheus.log"), url, targets_file)
    prometheus.set_targets(targets)
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while not await _scraped(session, url, len(targets)):
            if prometheus.service.process.returncode is not None:
                raise prometheus.service.failed()
            if time.monotonic() > deadline:
                await prometheus.service.stop()
                raise InputError(f"prometheus had not scraped every target within 60 s (see {prometheus.service.log})")
            await asyncio.sleep(0.2)
    return prometheus


async def _scraped(session: aiohttp.ClientSession, url: str, targets: int) -> bool:
    """Prometheus is ready and has scraped each of the ``targets`` successfully: only then does
    the replay start, as a production fleet's Prometheus is running long before its agents (the
    agent's first window would otherwise read nothing while the scrapes were still to come)."""
    with contextlib.suppress(aiohttp.ClientError, ValueError, KeyError):
        async with session.get(url + "/-/ready") as response:
            if response.status != 200:
                return False
        async with session.get(url + "/api/v1/targets", params={"state": "active"}) as response:
            active = (await response.json())["data"]["activeTargets"]
        return len(active) >= targets and all(t["health"] == "up" for t in active)
    return False
