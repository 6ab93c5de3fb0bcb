"""Seeded fuzzing of the input boundaries: does bad input ever end in anything but a clear error?

    python benchmarks/fuzz_inputs.py                                  # every target, 300 inputs each
    python benchmarks/fuzz_inputs.py --targets agent grpc --iterations 1000 --seed 3

Targets: the YAML files users write (tenant policy, scenario, agent config), engine profiles,
request traces (Azure CSV, Mooncake JSONL), ServeGen rate series (read, then synthesised from), the
local agent's tick (observations up to the contract's bounds), the planner's gRPC service
(random messages over a real socket, while another tenant keeps reporting), the engine emulator's
OpenAI-compatible HTTP endpoints, whole replays of random valid fleets under every policy, and
damaged agent checkpoints (resumed intact or set aside, never raised). A file input must load
or raise the product's ``InputError``; an agent tick must return valid targets and curves; a gRPC
call must be answered OK or with a status that names the caller's fault, and the other tenant must
still be served. Anything else is printed once per kind with its traceback; the exit code is the
number of kinds (0 = clean). ``tests/test_fuzz_inputs.py`` runs every target briefly.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.cli import guarded  # noqa: E402
from fleet_planner.errors import InputError  # noqa: E402

EXAMPLES = ROOT / "examples"
PROFILE = EXAMPLES / "profiles" / "llama3.1-8b_h100_vllm_tp1"
TRACES = EXAMPLES / "traces"
ODD_VALUES: list[Any] = [
    math.nan, math.inf, -1, -1e9, 1e308, 0, "", "x" * 5000, [], {}, None, True, "abc", 3.5, 10**30, [1, 2], {"a": 1},
]  # fmt: skip
ODD_CELLS = ["", "nan", "inf", "-5", "1e400", "abc", "9" * 40, "1.5", "0", "1e308", " ", '"', "2023-13-45 99:99:99"]


class Findings:
    """Outcomes per target, and each unexpected failure once per (target, type, message)."""

    def __init__(self) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.failures: dict[tuple[str, str, str], str] = {}

    def run(self, target: str, attempt: Callable[[], Any]) -> None:
        try:
            attempt()
            self.outcomes[f"{target}: accepted"] += 1
        except InputError:
            self.outcomes[f"{target}: refused (InputError)"] += 1
        except Exception as exc:  # anything else is what this script looks for
            self.fail(target, exc)

    def fail(self, target: str, exc: BaseException) -> None:
        self.outcomes[f"{target}: UNEXPECTED"] += 1
        key = (target, type(exc).__name__, str(exc)[:120])
        self.failures.setdefault(key, "".join(traceback.format_exception(exc)[-8:]))


def mutate(tree: Any, rng: random.Random) -> Any:
    """A copy of a YAML/JSON tree with one leaf replaced by an odd value, one key dropped, or one
    unknown key (or list item) added."""
    tree = copy.deepcopy(tree)
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if path:
            paths.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            walk(child, (*path, key))

    walk(tree, ())
    if not paths:
        return rng.choice(ODD_VALUES)
    path = rng.choice(paths)
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    roll = rng.random()
    if roll < 0.6:
        parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif roll < 0.8 and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[f"unknown_{rng.randint(0, 9)}"] = copy.deepcopy(rng.choice(ODD_VALUES))
    else:
        parent.append(copy.deepcopy(rng.choice(ODD_VALUES)))
    return tree


def fuzz_yaml(findings: Findings, rng: random.Random, n: int, target: str, source: Path, load: Callable) -> None:
    """Mutated copies of ``source``, written beside it (its relative paths still resolve)."""
    base = yaml.safe_load(source.read_text())
    for _ in range(n):
        data = base
        for _ in range(rng.randint(1, 3)):
            data = mutate(data, rng)
        with tempfile.NamedTemporaryFile("w", dir=source.parent, prefix=".fuzz-", suffix=".yaml", delete=False) as f:
            f.write(yaml.safe_dump(data, allow_unicode=True))
        try:
            findings.run(target, lambda path=Path(f.name): load(path))
        finally:
            Path(f.name).unlink()


def fuzz_files(findings: Findings, rng: random.Random, n: int) -> None:
    from fleet_sim.scenario import load_scenario
    from global_planner.policy_file import load_policy_file
    from local_agent.config import load_config

    sources = [
        ("policy file", EXAMPLES / "shortage" / "tenants.yaml", load_policy_file),
        ("policy file", ROOT / "policies" / "tenants.yaml", load_policy_file),
        ("scenario", EXAMPLES / "shortage" / "scenario.yaml", load_scenario),
        ("scenario", EXAMPLES / "knobs-short-chat" / "scenario.yaml", load_scenario),
        ("agent config", EXAMPLES / "agent" / "agent.yaml", load_config),
        ("agent config", EXAMPLES / "agent" / "agent-kubernetes.yaml", load_config),
    ]
    for target, source, load in sources:
        fuzz_yaml(findings, rng, max(1, n // 2), target, source, load)


def fuzz_profiles(findings: Findings, rng: random.Random, n: int, workdir: Path) -> None:
    from fleet_planner.perf import PerfModel, load_profile

    def attempt(folder: Path) -> None:
        model = PerfModel(load_profile(folder))
        model.itl_ms(8, 1000)
        model.ttft_ms(1000)

    for i in range(n):
        folder = workdir / f"profile-{i}"
        shutil.copytree(PROFILE, folder)
        name = rng.choice(["prefill_raw_data.json", "decode_raw_data.json", "meta.json"])
        data = json.loads((folder / name).read_text())
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(list(data)) if isinstance(data, dict) and data else None
            if key is not None and isinstance(data[key], list) and data[key] and rng.random() < 0.5:
                data[key][rng.randrange(len(data[key]))] = rng.choice([math.nan, -1.0, 0.0, 1e308, "x", None])
            elif key is not None and rng.random() < 0.3:
                data[key] = data[key][: rng.randrange(len(data[key]) + 1)] if isinstance(data[key], list) else None
            else:
                data = mutate(data, rng)
        (folder / name).write_text(json.dumps(data))
        findings.run("profile", lambda folder=folder: attempt(folder))
        shutil.rmtree(folder)


def fuzz_traces(findings: Findings, rng: random.Random, n: int, workdir: Path) -> None:
    from fleet_planner.traces import read_rate_series, read_trace
    from fleet_planner.traces.synth import synthesize

    sources = {
        "azure": (TRACES / "azure2023_conv.csv").read_text().splitlines()[:200],
        "mooncake": (TRACES / "mooncake_fast25_synthetic.jsonl").read_text().splitlines()[:200],
        "rates": (TRACES / "servegen_m-large_rate_10min.csv").read_text().splitlines()[:60],
    }
    lengths = read_trace(TRACES / "azure2023_conv.csv", "azure")
    for i in range(n):
        kind = rng.choice(list(sources))
        lines = list(sources[kind])
        for _ in range(rng.randint(1, 4)):
            j = rng.randrange(len(lines))
            if kind == "mooncake" and rng.random() < 0.7 and lines[j].endswith("}"):  # not already cut short
                record = json.loads(lines[j])
                record[rng.choice(list(record))] = copy.deepcopy(rng.choice(ODD_VALUES))
                lines[j] = json.dumps(record)
            elif kind == "mooncake":
                lines[j] = lines[j][: rng.randrange(len(lines[j]) + 1)]
            else:
                cells = lines[j].split(",")
                cells[rng.randrange(len(cells))] = rng.choice(ODD_CELLS)
                lines[j] = ",".join(cells)
        path = workdir / f"trace-{i}.{'jsonl' if kind == 'mooncake' else 'csv'}"
        path.write_text("\n".join(lines) + "\n")
        if kind == "rates":
            findings.run(
                "rate series",
                lambda p=path, seed=i: synthesize(read_rate_series(p), lengths=lengths, duration_s=600, seed=seed),
            )
        else:
            findings.run(f"trace ({kind})", lambda p=path, k=kind: read_trace(p, k))
        path.unlink()


def fuzz_agent(findings: Findings, rng: random.Random, n: int) -> None:
    """Runs of ticks whose observations are valid but absurd, up to the contract's bounds."""
    from pydantic import ValidationError

    from fleet_planner.deployment import DeploymentConfig, PoolConfig
    from fleet_planner.perf import PerfModel, load_profile
    from fleet_planner.planning import MAX_OBSERVED, SLA, Distribution, PoolObservation
    from local_agent.agent import AgentOptions, LocalAgent
    from local_agent.models import AgentInput

    model = PerfModel(load_profile(PROFILE))
    # Up to the contract's bound, and past it (refused at the boundary: the tick must not see it).
    counts = [0, 1, 30, 10**6, int(MAX_OBSERVED), 10**300]
    figures = [0.0, 1e-9, 0.5, 50.0, 1e6, MAX_OBSERVED, 1e300, math.inf]

    def summary() -> Distribution:
        values = sorted(rng.choice(figures[:-1]) for _ in range(4))  # no inf: Distribution refuses it first
        return Distribution(count=rng.choice(counts), mean=values[1], p50=values[0], p90=values[2], p99=values[3])

    def run(mode: str, predictor: str) -> None:
        roles = ["agg"] if mode == "agg" else ["prefill", "decode"]
        pool = {"profile": str(PROFILE), "gpu_type": "h100", "max": rng.choice([1, 8, 100])}
        config = DeploymentConfig[PoolConfig].model_validate(
            {"name": "d", "tenant": "t", "endpoint": "e", "mode": mode, "pools": dict.fromkeys(roles, pool)}
        )
        spec = config.to_spec(SLA(ttft_ms=500, itl_ms=50))
        pools = spec.pools
        agent = LocalAgent(spec, dict.fromkeys(roles, model), AgentOptions(predictor=predictor), 30.0)
        now = 0.0
        for _ in range(rng.choice([5, 30])):
            now += rng.choice([30.0, 30.0, 1e-3, 1e6])
            observations = []
            for role in roles:
                fields: dict[str, Any] = dict(
                    deployment="d", role=role, time_s=now, window_s=rng.choice([30.0, 1e-6, 1e9]),
                    ready=rng.choice([0, 1, 10_000]), starting=rng.choice([0, 3]), draining=0, pending=0,
                )  # fmt: skip
                for name in ("admitted", "endpoint_admitted", "endpoint_shed", "queued_requests"):
                    if rng.random() < 0.5:
                        fields[name] = rng.choice(counts)
                for name in ("queued_prefill_tokens", "active_kv_tokens", "kv_capacity_tokens", "iteration_ms"):
                    if rng.random() < 0.4:
                        fields[name] = rng.choice(figures)
                with contextlib.suppress(ValidationError):  # past the contract: refused, the point
                    for name in ("input_tokens", "output_tokens", "ttft_ms", "itl_ms"):
                        if rng.random() < 0.6:
                            fields[name] = summary()
                    observations.append(PoolObservation(**fields))
            effects = agent.step(AgentInput(now_s=now, observations=observations if rng.random() < 0.9 else None))
            for role, count in effects.targets.items():
                if not pools[role].min_replicas <= count <= pools[role].max_replicas:
                    raise AssertionError(f"{role}: target {count} outside its bounds")
            for role, curve in effects.curves.items():
                if not all(0.0 <= value <= 1.0 for value in curve):
                    raise AssertionError(f"{role}: curve value outside [0, 1]")

    for _ in range(n):
        mode, predictor = rng.choice(["agg", "disagg"]), rng.choice(["moving_average", "constant", "holt", "kalman"])
        findings.run("agent tick", lambda mode=mode, predictor=predictor: run(mode, predictor))


def fuzz_grpc(findings: Findings, rng: random.Random, n: int, workdir: Path) -> None:
    """Random messages to every RPC over a real socket, as tenant a; tenant b reports after each."""
    import grpc
    from google.protobuf.descriptor import FieldDescriptor as FD
    from prometheus_client import CollectorRegistry

    from fleet_planner.api.v1 import planner_pb2 as pb
    from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc
    from fleet_planner.clock import SimulatedClock
    from global_planner.policy_file import TenantPolicy
    from global_planner.service.audit import AuditLog
    from global_planner.service.auth import Identity, TokenAuthenticator
    from global_planner.service.metrics import ServiceMetrics
    from global_planner.service.server import PlannerServer
    from global_planner.service.state import PlannerState

    caller_faults = {
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
    }  # fmt: skip
    tokens = {
        "token-a-0123456789abcdef": Identity(deployment="chat-a", tenant="acme"),
        "token-b-0123456789abcdef": Identity(deployment="chat-b", tenant="beta"),
    }
    auth_a, auth_b = ((("authorization", f"Bearer {token}"),) for token in tokens)
    scalars: dict[int, list[Any]] = {
        FD.TYPE_DOUBLE: [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e308, 5.0, 0.5, 1.0],
        FD.TYPE_INT32: [0, 1, -1, 2**31 - 1, -(2**31), 3, 8],
        FD.TYPE_UINT64: [0, 1, 2**64 - 1, 5],
        FD.TYPE_STRING: ["", "chat-a", "chat-b", "x" * 10_000, "\u0000", "h200", "chat", "../../etc"],
        FD.TYPE_BOOL: [True, False],
    }

    def fill(message: Any, depth: int = 0) -> None:
        for field in message.DESCRIPTOR.fields:
            if rng.random() < 0.5:
                continue
            repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == FD.LABEL_REPEATED
            if field.type == FD.TYPE_MESSAGE:
                if depth < 3:
                    for _ in range(rng.choice([0, 1, 3, 50]) if repeated else 1):
                        fill(
                            getattr(message, field.name).add() if repeated else getattr(message, field.name), depth + 1
                        )
                continue
            if field.type == FD.TYPE_ENUM:
                choices: list[Any] = [v.number for v in field.enum_type.values] + [99]
            else:
                choices = scalars.get(field.type, [])
            if not choices:
                continue
            if repeated:
                getattr(message, field.name).extend(rng.choice(choices) for _ in range(rng.choice([0, 2, 9, 2000])))
            else:
                setattr(message, field.name, rng.choice(choices))

    async def session() -> None:
        policy = TenantPolicy.model_validate(
            {"fleet": {"gpus": {"h200": 8}}, "tenants": {"acme": {"priority": 10}, "beta": {"priority": 1}}}
        )
        server = PlannerServer(
            PlannerState(policy, lease_s=30.0),
            auth=TokenAuthenticator(tokens),
            metrics=ServiceMetrics(CollectorRegistry()),
            audit=AuditLog(workdir),
            clock=SimulatedClock(1000.0),
        )
        port = await server.start("127.0.0.1:0")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.PlannerStub(channel)
                spec = pb.PoolSpec(role=pb.POOL_ROLE_AGG, gpu_type="h200", gpus_per_replica=1, max_replicas=8)
                register = pb.RegisterRequest(deployment="chat-a", tenant="acme", endpoint="chat", pools=[spec])
                a = await stub.Register(register, metadata=auth_a)
                register_b = pb.RegisterRequest(deployment="chat-b", tenant="beta", endpoint="batch", pools=[spec])
                b = await stub.Register(register_b, metadata=auth_b)
                rpcs = {
                    "Register": (stub.Register, pb.RegisterRequest),
                    "Report": (stub.Report, pb.ReportRequest),
                    "AckApplied": (stub.AckApplied, pb.AckAppliedRequest),
                    "AckDrained": (stub.AckDrained, pb.AckDrainedRequest),
                }
                for sequence in range(1, n + 1):
                    name = rng.choice(["Report", "Report", "Register", "AckApplied", "AckDrained"])
                    call, kind = rpcs[name]
                    message = kind()
                    fill(message)
                    if rng.random() < 0.8:
                        message.deployment = "chat-a"
                    if name == "Register" and rng.random() < 0.8:
                        message.tenant = "acme"
                    if name == "Report" and rng.random() < 0.7:
                        message.session_id = a.session_id
                    try:
                        reply = await call(message, metadata=auth_a, timeout=30)
                        findings.outcomes[f"grpc {name}: OK"] += 1
                        if name == "Register":
                            a = reply
                    except grpc.aio.AioRpcError as error:
                        findings.outcomes[f"grpc {name}: {error.code().name}"] += 1
                        if error.code() not in caller_faults:
                            findings.fail(f"grpc {name}", error)
                    report = pb.ReportRequest(deployment="chat-b", session_id=b.session_id, sequence=sequence)
                    try:
                        await stub.Report(report, metadata=auth_b, timeout=30)
                    except grpc.aio.AioRpcError as error:
                        findings.fail(f"grpc: the other tenant after {name}", error)
        finally:
            await server.stop(0)

    asyncio.run(session())


def fuzz_runs(findings: Findings, rng: random.Random, n: int, workdir: Path) -> None:
    """Random but valid fleets (1-3 deployments of any vendored profile, mode, replica size, SLA,
    start-up and trace rate, replayed or synthesised traffic, sometimes two deployments on one
    endpoint; one or two GPU types) replayed under a random policy: each run must
    end with a summary whose figures are in range (and, under ``global`` and ``fcfs``, no tick
    asking for more GPUs than the inventory), or be refused as input (an inventory too small for
    the pools' minima)."""
    from fleet_sim.outputs import summarize
    from fleet_sim.policies import make_policy
    from fleet_sim.runner import FleetSimulation
    from fleet_sim.scenario import load_scenario
    from fleet_sim.workload import build_workload

    profiles = sorted(p for p in (EXAMPLES / "profiles").iterdir() if p.is_dir())
    traces = [("azure2023_conv.csv", "azure"), ("mooncake_fast25_synthetic.jsonl", "mooncake")]

    def replay(path: Path) -> None:
        scenario = load_scenario(path)
        workload = build_workload(scenario)
        summary = summarize(FleetSimulation(scenario, workload, make_policy(scenario, workload)).run())
        fleet = summary["fleet"]
        attainment = fleet["slo_attainment"]
        if not (fleet["gpu_hours"] >= 0 and (attainment is None or 0.0 <= attainment <= 1.0)):
            raise AssertionError(f"figures out of range: {fleet}")
        if scenario.planner.policy in ("global", "fcfs") and fleet["budget_violations"]:
            # an arbiter of the inventory never asks for more (uncoordinated policies may: pending)
            raise AssertionError(f"{fleet['budget_violations']} budget violations")

    for i in range(n):
        types = rng.choice([["g"], ["g", "h"]])
        deployments = []
        for j in range(rng.choice([1, 1, 2, 3])):
            mode, per, top = rng.choice(["agg", "disagg"]), rng.choice([1, 2, 4, 8]), rng.choice([1, 2, 4, 10])
            gpu, profile = rng.choice(types), str(rng.choice(profiles))

            def pool(gpu: str = gpu, profile: str = profile, per: int = per, top: int = top) -> dict[str, Any]:
                low = rng.choice([0, 1])
                return {
                    "profile": profile, "gpu_type": gpu, "gpus_per_replica": per, "min": low, "max": top,
                    "initial": rng.choice([low, top]), "startup_s": rng.choice([0, 60, 600]),
                }  # fmt: skip

            name, fmt = rng.choice(traces)
            trace: dict[str, Any] = {"path": str(TRACES / name), "format": fmt}
            trace["rate_scale"] = rng.choice([0.01, 0.5, 1, 5, 30])
            if rng.random() < 0.3:  # synthesised from the ServeGen rates instead
                rates, lengths = str(TRACES / "servegen_m-large_rate_10min.csv"), str(TRACES / "azure2023_conv.csv")
                synth = {"rate": rates, "lengths": lengths, "peak_rps": rng.choice([0.1, 5, 80]), "start_s": "12h"}
                trace = {"synth": synth}
            deployments.append(
                {
                    "name": f"d{j}", "tenant": f"t{rng.choice([0, 1])}", "endpoint": f"e{j}", "mode": mode,
                    "sla": {"ttft_ms": rng.choice([1, 100, 2000]), "itl_ms": rng.choice([1, 10, 50])}, "trace": trace,
                    "pools": {"agg": pool()} if mode == "agg" else {"prefill": pool(), "decode": pool()},
                }
            )  # fmt: skip
        endpoints = {}
        if len(deployments) > 1 and rng.random() < 0.4:  # one endpoint served by the first two
            first, second = deployments[:2]
            endpoints["shared"] = {"sla": first.pop("sla"), "trace": first.pop("trace")}
            del second["sla"], second["trace"]
            first["endpoint"] = second["endpoint"] = "shared"
            second["tenant"] = first["tenant"]
        gpus = {gpu: rng.choice([2, 16, 128]) for gpu in types}
        policies = ["static", "static-peak", "local", "oracle"] + (["global", "fcfs"] if len(deployments) > 1 else [])
        planner: dict[str, Any] = {"policy": rng.choice(policies), "interval_s": rng.choice([10, 30, 60])}
        if planner["policy"] in ("global", "fcfs"):
            tenants = {"fleet": {"gpus": gpus}, "tenants": {"t0": {"priority": 100}, "t1": {"priority": 1}}}
            (workdir / f"tenants-{i}.yaml").write_text(yaml.safe_dump(tenants))
            planner["policy_file"] = f"tenants-{i}.yaml"
        scenario = {
            "name": f"fuzz-{i}", "duration": rng.choice(["1m", "5m"]), "seed": i, "gpus": gpus, "planner": planner,
            "deployments": deployments,
        }  # fmt: skip
        if endpoints:
            scenario["endpoints"] = endpoints
        path = workdir / f"scenario-{i}.yaml"
        path.write_text(yaml.safe_dump(scenario))
        findings.run(f"run ({planner['policy']})", lambda path=path: replay(path))


def fuzz_http(findings: Findings, rng: random.Random, n: int) -> None:
    """Random bodies to the emulator's OpenAI-compatible endpoints over a real socket: each answered
    200 or 4xx (never 5xx), the server still healthy after every one."""
    import aiohttp
    from aiohttp import web

    from fleet_planner.emulate.server import EmulatorServer
    from fleet_planner.perf import PerfModel, load_profile

    keys = ["model", "prompt", "messages", "max_tokens", "stream", "temperature", "n", "stream_options", "ignore_eos"]
    raw_bodies = [b"{", b"null", b"[]", b"\xff\xfe", b'{"model": NaN}', b""]

    def body(chat: bool) -> bytes:
        if rng.random() < 0.1:
            return rng.choice(raw_bodies)
        data: dict[str, Any] = {"model": "m", "max_tokens": 4, "stream": True}
        data |= {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hello world"}
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(keys)
            if rng.random() < 0.2:
                data.pop(key, None)
            else:
                data[key] = copy.deepcopy(rng.choice(ODD_VALUES[:-2] + [10**12, -1, "m", 16]))
        if chat and rng.random() < 0.2:
            data["messages"] = [{"role": rng.choice(["user", "x", None, 5]), "content": rng.choice(ODD_VALUES[:-2])}]
        return json.dumps(data).encode()

    async def session() -> None:
        server = EmulatorServer(PerfModel(load_profile(PROFILE)), served_model="m", speed=100.0)
        runner = web.AppRunner(server.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                for _ in range(n):
                    path = rng.choice(["/v1/completions", "/v1/chat/completions"])
                    headers = {"Content-Type": "application/json"}
                    async with http.post(
                        base + path, data=body(path.endswith("chat/completions")), headers=headers
                    ) as reply:
                        await reply.read()
                        findings.outcomes[f"http {path}: {reply.status}"] += 1
                        if reply.status >= 500:
                            findings.fail(f"http {path}", RuntimeError(f"HTTP {reply.status}"))
                    async with http.get(base + "/health") as health:
                        if health.status != 200:
                            findings.fail("http: health after a bad request", RuntimeError(f"HTTP {health.status}"))
        finally:
            await runner.cleanup()

    asyncio.run(session())


def fuzz_checkpoints(findings: Findings, rng: random.Random, n: int, workdir: Path) -> None:
    """Damaged agent checkpoints (bytes flipped, cut, appended, the header's fields odd, a random
    body under a matching checksum): each is resumed intact or set aside with a reason, never raised."""
    import hashlib

    from fleet_sim.adapters.local import build_agents
    from fleet_sim.matrix import build_scenario, quick_cells
    from local_agent.checkpoint import load_checkpoint, plan_fingerprint, save_checkpoint
    from local_agent.decide.options import AgentOptions

    scenario = build_scenario(quick_cells()[1], "local", workdir / "checkpoint-cell")
    agent = next(iter(build_agents(scenario.deployment_specs(), 30.0, AgentOptions()).values()))
    fingerprint = plan_fingerprint(agent.spec, agent.options, agent.tick_s)
    path = workdir / "agent.ck"
    save_checkpoint(path, agent, fingerprint, 1000.0)
    good = path.read_bytes()
    first, _, body = good.partition(b"\n")
    for _ in range(n):
        data = bytearray(good)
        kind = rng.randrange(5)
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[rng.randrange(len(data)) :]
        elif kind == 2:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == 3:
            data = bytearray(json.dumps(mutate(json.loads(first), rng), default=str).encode() + b"\n" + body)
        else:  # garbage the checksum vouches for: only unpickling can refuse it
            junk = body[: rng.randrange(len(body))] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 256)))
            header = {**json.loads(first), "sha256": hashlib.sha256(junk).hexdigest()}
            data = bytearray(json.dumps(header).encode() + b"\n" + junk)
        path.write_bytes(bytes(data))
        try:
            restored = load_checkpoint(path, fingerprint, 1010.0, 900.0)
        except Exception as exc:  # the loader must answer, not raise
            findings.fail("checkpoint", exc)
            continue
        if restored.agent is None:
            findings.outcomes["checkpoint: set aside"] += 1
        else:
            findings.outcomes["checkpoint: resumed (accepted)"] += 1
            try:
                restored.agent.targets()
            except Exception as exc:
                findings.fail("checkpoint: resumed agent", exc)


TARGETS = ("files", "profiles", "traces", "agent", "grpc", "http", "runs", "checkpoint")


def fuzz(targets: list[str], iterations: int, seed: int) -> Findings:
    findings = Findings()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for target in targets:
            if target == "files":
                fuzz_files(findings, rng, iterations)
            elif target == "profiles":
                fuzz_profiles(findings, rng, iterations, workdir)
            elif target == "traces":
                fuzz_traces(findings, rng, iterations, workdir)
            elif target == "agent":
                fuzz_agent(findings, rng, max(1, iterations // 10))  # each run is up to 30 ticks
            elif target == "runs":
                fuzz_runs(findings, rng, max(1, iterations // 40), workdir)  # each a whole replay
            elif target == "http":
                fuzz_http(findings, rng, iterations)
            elif target == "checkpoint":
                fuzz_checkpoints(findings, rng, iterations, workdir)
            else:
                fuzz_grpc(findings, rng, iterations, workdir)
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument(
        "--iterations", type=int, default=300, help="inputs per target (agent: a tenth as many runs; runs: a fortieth)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the readers' warnings (a 0-token answer counted as 1) are expected
    findings = fuzz(args.targets, args.iterations, args.seed)
    for outcome, count in sorted(findings.outcomes.items()):
        print(f"{count:6d}  {outcome}")
    for (target, kind, message), trace in findings.failures.items():
        print(f"\nUNEXPECTED in {target}: {kind}: {message}\n{trace}")
    print(f"\n{len(findings.failures)} kind(s) of unexpected failure")
    return len(findings.failures)


if __name__ == "__main__":
    sys.exit(guarded(main))
