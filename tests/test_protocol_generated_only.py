"""Protocol test speaking to a real planner process using only code generated from the .proto.

The planner runs as a subprocess (``python -m global_planner.cli serve``); this file imports
nothing of the project but ``fleet_planner.api.v1`` generated modules (checked below), so it
proves an agent in any language can be written from ``planner.proto`` alone.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from fleet_planner.api.v1 import planner_pb2 as pb
from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "generated-only-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def _start_planner(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    (tmp / "tenants.yaml").write_text("fleet: {gpus: {h200: 8, h100: 4}}\ntenants: {acme: {priority: 10}}\n")
    (tmp / "tokens.yaml").write_text(f"{TOKEN}: {{deployment: chat, tenant: acme}}\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "global_planner.cli",
            "serve",
            "--policy",
            str(tmp / "tenants.yaml"),
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(tmp / "state"),
            "--tokens",
            str(tmp / "tokens.yaml"),
            "--round-s",
            "0.2",
            "--lease-s",
            "5",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("serving on "), f"planner did not start: {line!r}"
    return process, line.removeprefix("serving on ").strip()


def test_register_report_receive_targets(tmp_path: Path) -> None:
    process, target = _start_planner(tmp_path)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.PlannerStub(channel)
            registered = stub.Register(
                pb.RegisterRequest(
                    deployment="chat",
                    tenant="acme",
                    endpoint="chat",
                    pools=[
                        pb.PoolSpec(role=pb.POOL_ROLE_PREFILL, gpu_type="h200", gpus_per_replica=2, max_replicas=4),
                        pb.PoolSpec(
                            role=pb.POOL_ROLE_DECODE,
                            gpu_type="h100",
                            gpus_per_replica=1,
                            max_replicas=4,
                            fallback_replicas=1,
                        ),
                    ],
                ),
                metadata=AUTH,
                timeout=5,
            )
            assert registered.session_id and registered.lease_s == 5.0
            targets = pb.Targets()
            deadline = time.monotonic() + 10
            sequence = 0
            while targets.decision_id == 0 and time.monotonic() < deadline:
                sequence += 1
                report = pb.ReportRequest(
                    deployment="chat",
                    session_id=registered.session_id,
                    sequence=sequence,
                    forecast=pb.Forecast(mean_rps=4.0, upper_rps=6.0, horizon_s=60),
                    pools=[
                        pb.PoolReport(role=pb.POOL_ROLE_PREFILL, curve=[0.0, 0.6, 0.95, 1.0, 1.0]),
                        pb.PoolReport(role=pb.POOL_ROLE_DECODE, curve=[0.0, 0.9, 1.0, 1.0, 1.0]),
                    ],
                )
                targets = stub.Report(report, metadata=AUTH, timeout=5).targets
                time.sleep(0.1)
            assert targets.decision_id > 0, "no allocation round answered"
            replicas = {p.role: p.replicas for p in targets.pools}
            assert replicas == {pb.POOL_ROLE_PREFILL: 3, pb.POOL_ROLE_DECODE: 2}
            assert targets.lease_expires_s > targets.planner_time_s
            assert [(r.deployment, r.weight) for r in targets.routing] == [("chat", 1.0)]
            ack = stub.AckApplied(
                pb.AckAppliedRequest(
                    deployment="chat",
                    session_id=registered.session_id,
                    decision_id=targets.decision_id,
                    applied=[pb.PoolReplicas(role=p.role, replicas=p.replicas) for p in targets.pools],
                ),
                metadata=AUTH,
                timeout=5,
            )
            assert ack.targets.decision_id >= targets.decision_id
            try:
                stub.Report(pb.ReportRequest(deployment="other", session_id="x"), metadata=AUTH, timeout=5)
                raise AssertionError("another deployment's report was accepted")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def test_imports_only_generated_code() -> None:
    allowed = {
        "__future__",
        "ast",
        "os",
        "signal",
        "subprocess",
        "sys",
        "time",
        "pathlib",
        "grpc",
        "fleet_planner.api.v1",
    }
    tree = ast.parse(Path(__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        assert all(name in allowed for name in names), f"non-generated import: {names}"
