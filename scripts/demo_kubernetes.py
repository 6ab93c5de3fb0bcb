#!/usr/bin/env python3
"""Fleet Planner on a (test) Kubernetes API: the global planner, two agents and a real Prometheus.

    .venv/bin/python scripts/demo_kubernetes.py [--seconds 90] [--keep DIR]

What runs (all on 127.0.0.1):

- the API-compatible test server (``kube_testserver``) holding two DynamoGraphDeployments,
  ``chat-hi`` (tenant ``acme``, priority 100) and ``chat-lo`` (tenant ``beta``, priority 10), one
  HTTPRoute ``chat`` splitting the shared endpoint between their frontends, and a tiny fake
  controller that creates, starts and removes pods as the DGDs' replicas change;
- ``fleet-planner serve --leader-elect`` (the Lease lives in the test server) over a 6-GPU fleet;
- two ``fleet-planner agent`` processes with the Kubernetes connector, observing through Prometheus;
- a real ``prometheus`` (Debian package) scraping a traffic exporter (the frontends' request
  counters and length histograms), both agents and the planner.

The traffic script: both deployments see light load, then ``chat-hi``'s load jumps. The fleet is too
small for both: the planner moves GPUs from ``beta``'s ``chat-lo`` to ``acme``'s ``chat-hi``, the
agents patch the DGDs' replicas, the controller removes and creates pods, and the HTTPRoute weights
follow the planner's routing. The script prints a timeline and checks each of these at the end
(exit 1 if one did not happen). Without a ``prometheus`` binary it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kube_testserver import KubeTestServer  # noqa: E402
from kube_testserver import fixtures as fx  # noqa: E402

NS = "default"
PROFILE = REPO / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
DEPLOYMENTS = {"chat-hi": "acme", "chat-lo": "beta"}
POLICY = {
    "fleet": {"gpus": {"h100": 6}},
    "tenants": {"acme": {"priority": 100}, "beta": {"priority": 10}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Traffic:
    """Frontend metrics of both deployments: requests at a scripted rate, fixed-size requests."""

    def __init__(self, spike_at_s: float):
        self.t0 = time.time()
        self.spike_at_s = spike_at_s
        self.count = dict.fromkeys(DEPLOYMENTS, 0.0)
        self.last = self.t0

    def rate(self, deployment: str, elapsed_s: float) -> float:
        if deployment == "chat-lo":
            return 40.0  # about three replicas' worth (Llama-3.1-8B on H100, 1500/200 tokens, ITL 30 ms)
        return 10.0 if elapsed_s < self.spike_at_s else 90.0  # then five to six replicas' worth

    def collect(self) -> Any:
        now = time.time()
        for dep in DEPLOYMENTS:
            self.count[dep] += self.rate(dep, now - self.t0) * (now - self.last)
        self.last = now
        requests = CounterMetricFamily("dynamo_frontend_requests", "admitted requests", labels=["dynamo_namespace"])
        inputs = HistogramMetricFamily("dynamo_frontend_input_sequence_tokens", "prompt", labels=["dynamo_namespace"])
        outputs = HistogramMetricFamily("dynamo_frontend_output_sequence_tokens", "output", labels=["dynamo_namespace"])
        for dep, n in self.count.items():
            requests.add_metric([dep], n)
            inputs.add_metric([dep], [("1000", 0), ("2000", n), ("+Inf", n)], sum_value=n * 1500)
            outputs.add_metric([dep], [("100", 0), ("300", n), ("+Inf", n)], sum_value=n * 200)
        yield from (requests, inputs, outputs)


def agent_config(dep: str, kubeconfig: Path, prometheus: str, planner: str, port: int) -> dict[str, Any]:
    return {
        "deployment": {
            "name": dep,
            "tenant": DEPLOYMENTS[dep],
            "endpoint": "chat",
            "mode": "agg",
            "sla": {"ttft_ms": 1000, "itl_ms": 30},
            "pools": {
                "agg": {"profile": str(PROFILE), "gpu_type": "h100", "min": 1, "max": 6, "initial": 2, "startup_s": 3}
            },
        },
        "options": {"throughput_interval_s": 3, "predictor": "constant", "scale_down_grace_s": 2},
        "tick_s": "1s",
        "prometheus": {
            "url": prometheus,
            "window": "8s",
            "queries": {
                "queued_requests": None,
                "queued_prefill_tokens": None,
                "active_kv_tokens": None,
                "kv_capacity_tokens": None,
                "iteration_ms": None,
                "scheduled_tokens_per_s": None,
            },
            "histograms": {"ttft_seconds": None, "itl_seconds": None},
        },
        "connector": {
            "kind": "kubernetes",
            "dgd": dep,
            "namespace": NS,
            "kubeconfig": str(kubeconfig),
            "services": {"agg": "VllmWorker"},
            "resync_s": "30s",
            "httproute": {"name": "chat", "backends": {d: f"{d}-frontend" for d in DEPLOYMENTS}},
        },
        "telemetry": {"listen": f"127.0.0.1:{port}", "token_env": "FLEET_AGENT_TOKEN"},
        "planner": planner,
    }


async def start_exporter(traffic: Traffic) -> tuple[web.AppRunner, int]:
    registry = CollectorRegistry()
    registry.register(traffic)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env, cwd=REPO)


async def query(session: aiohttp.ClientSession, url: str, promql: str) -> list[dict[str, Any]]:
    try:
        async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
            body = await response.json()
    except aiohttp.ClientError:
        return []
    result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
    return result


def snapshot(server: KubeTestServer) -> dict[str, Any]:
    store = server.store
    dgd = store.resource_of("DynamoGraphDeployment")
    pods = store.list(store.resource_of("Pod"), NS, {})
    route = store.get(store.resource_of("HTTPRoute"), NS, "chat")
    out: dict[str, Any] = {"weights": {r["name"]: r.get("weight", 1) for r in route["spec"]["rules"][0]["backendRefs"]}}
    for dep in DEPLOYMENTS:
        mine = [p for p in pods if p["metadata"]["labels"][fx.DGD_LABEL] == dep]
        out[dep] = {
            "replicas": store.get(dgd, NS, dep)["spec"]["services"]["VllmWorker"]["replicas"],
            "running": sum(
                p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp") for p in mine
            ),
            "pending": sum(p["status"].get("phase") == "Pending" for p in mine),
            "terminating": sum(bool(p["metadata"].get("deletionTimestamp")) for p in mine),
        }
    return out


async def demo(seconds: float, work: Path) -> int:
    server = KubeTestServer(token="demo-token")
    api_url = await server.start()
    kubeconfig = fx.kubeconfig(work / "kubeconfig", api_url, "demo-token")
    store = server.store
    for dep in DEPLOYMENTS:
        store.create(store.resource_of("DynamoGraphDeployment"), NS, fx.dgd(dep, {"VllmWorker": ("worker", 2, "1")}))
    store.create(store.resource_of("HTTPRoute"), NS, fx.httproute("chat", [f"{d}-frontend" for d in DEPLOYMENTS]))
    controller = fx.FakeController(store, NS, startup_passes=3)
    stop = asyncio.Event()
    controller_task = asyncio.create_task(controller.run(stop, every_s=0.5))
    created_pods: set[str] = set()
    removed_pods: set[str] = set()

    def count_pods(kind: str, res: Any, obj: dict[str, Any]) -> None:
        if res.kind == "Pod" and kind in ("ADDED", "DELETED"):
            (created_pods if kind == "ADDED" else removed_pods).add(obj["metadata"]["name"])

    store.on_write.append(count_pods)
    traffic = Traffic(spike_at_s=seconds / 3)
    exporter, exporter_port = await start_exporter(traffic)
    planner_port, planner_metrics, prom_port = free_port(), free_port(), free_port()
    agent_ports = {dep: free_port() for dep in DEPLOYMENTS}
    prometheus_url = f"http://127.0.0.1:{prom_port}"
    (work / "tenants.yaml").write_text(yaml.safe_dump(POLICY))
    targets = [f"127.0.0.1:{p}" for p in (exporter_port, planner_metrics, *agent_ports.values())]
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: fleet\n    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
    )
    procs = {
        "prometheus": spawn(
            [
                "prometheus",
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            work / "prometheus.log",
        ),
        "planner": spawn(
            [
                sys.executable,
                "-m",
                "fleet_planner_cli",
                "serve",
                "--policy",
                str(work / "tenants.yaml"),
                "--listen",
                f"127.0.0.1:{planner_port}",
                "--metrics",
                f"127.0.0.1:{planner_metrics}",
                "--state-dir",
                str(work / "planner-state"),
                "--round-s",
                "1",
                "--lease-s",
                "6",
                "--insecure",  # a demo on loopback; the chart always runs with --tokens
                "--leader-elect",
                "--identity",
                "planner-0",
                "--kubeconfig",
                str(kubeconfig),
                "--lease-namespace",
                NS,
                "--election-lease-s",
                "4",
                "--election-renew-deadline-s",
                "3",
                "--election-retry-s",
                "0.5",
            ],
            work / "planner.log",
        ),
    }
    for dep, port in agent_ports.items():
        path = work / f"agent-{dep}.yaml"
        config = agent_config(dep, kubeconfig, prometheus_url, f"127.0.0.1:{planner_port}", port)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        procs[dep] = spawn(
            [sys.executable, "-m", "fleet_planner_cli", "agent", "--config", str(path)],
            work / f"agent-{dep}.log",
            env={"FLEET_AGENT_TOKEN": "demo-control-token"},
        )
    history: list[dict[str, Any]] = []
    scraped: dict[str, float] = {}
    t0 = time.time()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.time() - t0 < seconds:
                await asyncio.sleep(2)
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        print(f"{name} exited with {proc.returncode}; see {work}/{name}*.log")
                        return 1
                snap = snapshot(server)
                granted = await query(session, prometheus_url, "sum by (tenant) (fleet_planner_granted_gpus)")
                snap["granted"] = {r["metric"].get("tenant"): float(r["value"][1]) for r in granted}
                wanted = await query(session, prometheus_url, 'fleet_agent_replicas{state="wanted"}')
                snap["wanted"] = {r["metric"].get("deployment"): float(r["value"][1]) for r in wanted}
                load = await query(session, prometheus_url, "fleet_agent_load_rps")
                snap["load"] = {
                    f"{r['metric'].get('deployment')}/{r['metric'].get('source', '')}": round(float(r["value"][1]), 1)
                    for r in load
                }
                for metric in ("fleet_planner_granted_gpus", "fleet_agent_pod_gpus", "fleet_agent_replicas",
                               "dynamo_frontend_requests_total"):  # fmt: skip
                    scraped[metric] = float(len(await query(session, prometheus_url, metric)))
                snap["t"] = round(time.time() - t0)
                history.append(snap)
                print(
                    f"t={snap['t']:3d}s  rps hi={traffic.rate('chat-hi', time.time() - traffic.t0):4.0f}"
                    f"  chat-hi {snap['chat-hi']}  chat-lo {snap['chat-lo']}"
                    f"  weights {snap['weights']}  granted (Prometheus) {snap['granted']}"
                    f"  wanted {snap['wanted']}  load {snap['load']}",
                    flush=True,
                )
    finally:
        stop.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await controller_task
        await exporter.cleanup()
        await server.stop()
    return check(history, scraped, created_pods, removed_pods)


def check(history: list[dict[str, Any]], scraped: dict[str, float], created: set[str], removed: set[str]) -> int:
    """The demo's claims, each checked from what was recorded."""
    first, last = history[0], history[-1]
    hi_max = max(s["chat-hi"]["replicas"] for s in history)
    lo_min = min(s["chat-lo"]["replicas"] for s in history[len(history) // 3 :])
    weights = {json.dumps(s["weights"], sort_keys=True) for s in history}
    claims = {
        "DGD replicas changed": any(s[d]["replicas"] != first[d]["replicas"] for s in history for d in DEPLOYMENTS),
        "high-priority chat-hi grew after its load jumped": hi_max > first["chat-hi"]["replicas"],
        "low-priority chat-lo gave GPUs up in the shortage": lo_min < max(s["chat-lo"]["replicas"] for s in history),
        "HTTPRoute weights changed": len(weights) > 1,
        "pods were created and removed by the controller": bool(created) and bool(removed),
        "Prometheus scraped planner, agents and traffic": all(v > 0 for v in scraped.values()),
        "acme holds more GPUs than beta at the end (Prometheus)": last["granted"].get("acme", 0)
        > last["granted"].get("beta", 0),
    }
    print()
    for claim, held in claims.items():
        print(f"{'ok ' if held else 'NO '} {claim}")
    return 0 if all(claims.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="demo length")
    parser.add_argument("--keep", type=Path, help="keep logs, configs and state here (default: a temp dir)")
    args = parser.parse_args()
    if shutil.which("prometheus") is None:
        print("skipped: no `prometheus` binary on PATH (Debian: apt-get install prometheus; .ci/run installs it)")
        return 0
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return asyncio.run(demo(args.seconds, args.keep.resolve()))
    with tempfile.TemporaryDirectory(prefix="fleet-k8s-demo-") as work:
        return asyncio.run(demo(args.seconds, Path(work)))


if __name__ == "__main__":
    sys.exit(main())
