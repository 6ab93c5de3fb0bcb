"""Issue 8's findings, one test each (the audit log's are in ``test_audit_log.py``, the lapsed-lease
hold in ``test_service_state.py``): each reproduces the probe that broke the landed planner."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from planner_helpers import loopback_planner
from prometheus_client import CollectorRegistry

from fleet_planner.api.v1 import planner_pb2 as pb
from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc
from fleet_planner.clock import SimulatedClock
from fleet_planner.contract.models import AgentReport, PoolRegistration, PoolReport, Registration
from fleet_planner_cli import main as fleet_main
from global_planner.cli import main as cli_main
from global_planner.policy_file import PolicyWatcher, TenantPolicy
from global_planner.service.audit import AuditLog
from global_planner.service.auth import Identity
from global_planner.service.metrics import ServiceMetrics
from global_planner.service.server import SERVICE_NAME, PlannerServer
from global_planner.service.state import InvalidRequest, PlannerState

POLICY = {
    "fleet": {"gpus": {"h200": 32, "h100": 16}},
    "tenants": {
        "acme": {"priority": 100, "guaranteed_gpus": {"h200": 8}, "max_gpus": {"h200": 24, "h100": 8}},
        "beta": {"priority": 10},
    },
}
TOKENS = {
    "token-liar-0123456789abcdef": Identity(deployment="liar", tenant="acme"),
    "token-other-0123456789abcde": Identity(deployment="other", tenant="beta"),
}


def _registration(name: str, tenant: str, max_replicas: int = 8, gpu: str = "h200") -> Registration:
    pool = PoolRegistration(role="agg", gpu_type=gpu, gpus_per_replica=1, min_replicas=0, max_replicas=max_replicas)
    return Registration(deployment=name, tenant=tenant, endpoint=name, pools=[pool])


def _report(name: str, session: str, seq: int, ready: int, applied: int = 0) -> AgentReport:
    return AgentReport(
        deployment=name,
        session_id=session,
        sequence=seq,
        applied_decision_id=applied,
        pools=[PoolReport(role="agg", ready=ready)],
    )


@pytest.fixture
async def planner(tmp_path):
    async with loopback_planner(TenantPolicy.model_validate(POLICY), TOKENS, tmp_path) as server:
        yield server


def _auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


# --------------------------------------------------------------------- 1: lying agents


async def test_1_over_report_beyond_the_registration_is_refused(planner) -> None:
    """The probe: register max_replicas 8, report ready 10000 -> committed read 10000 of 32."""
    async with grpc.aio.insecure_channel(planner.target) as channel:
        stub = pb_grpc.PlannerStub(channel)
        spec = pb.PoolSpec(role=pb.POOL_ROLE_AGG, gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8)
        reg = await stub.Register(
            pb.RegisterRequest(deployment="liar", tenant="acme", endpoint="chat", pools=[spec]),
            metadata=_auth("token-liar-0123456789abcdef"),
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Report(
                pb.ReportRequest(
                    deployment="liar",
                    session_id=reg.session_id,
                    sequence=1,
                    pools=[pb.PoolReport(role=pb.POOL_ROLE_AGG, ready=10000)],
                ),
                metadata=_auth("token-liar-0123456789abcdef"),
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "exceeds the registered max_replicas 8" in error.value.details()
    assert planner.state.committed_gpus()["h200"] == 0


def test_1_claimed_usage_never_takes_gpus_another_pool_holds() -> None:
    """Within its bounds, an over-report is counted only into GPUs free and under the tenant cap."""
    policy = TenantPolicy.model_validate(
        {"fleet": {"gpus": {"h200": 32}}, "tenants": {"acme": {"max_gpus": {"h200": 24}}, "beta": {}}}
    )
    state = PlannerState(policy, lease_s=100.0)
    for name, tenant in (("l1", "acme"), ("l2", "acme"), ("l3", "acme"), ("honest", "beta")):
        state.register(_registration(name, tenant, max_replicas=20), f"s-{name}", 0.0)
    state.report(_report("honest", "s-honest", 1, ready=10), 0.0)  # holds 10 before any round
    for name in ("l1", "l2", "l3"):  # three liars of one tenant claim 20 each
        state.report(_report(name, f"s-{name}", 1, ready=20), 0.0)
    liars = sum(state.usage(name, "agg") for name in ("l1", "l2", "l3"))
    assert state.usage("honest", "agg") == 10
    assert liars == 22, "free GPUs (32 - 10) bound the liars, below the tenant's cap of 24"
    assert state.committed_gpus()["h200"] == 32
    state.report(_report("honest", "s-honest", 2, ready=10), 1.0)
    assert state.usage("honest", "agg") == 10


def test_1_tenant_cap_bounds_counted_claims() -> None:
    policy = TenantPolicy.model_validate(
        {"fleet": {"gpus": {"h200": 32}}, "tenants": {"acme": {"max_gpus": {"h200": 12}}, "beta": {}}}
    )
    state = PlannerState(policy)
    state.register(_registration("a", "acme", max_replicas=20), "sa", 0.0)
    state.report(_report("a", "sa", 1, ready=20), 0.0)
    assert state.usage("a", "agg") == 12
    with pytest.raises(InvalidRequest, match="max_replicas"):
        state.report(_report("a", "sa", 2, ready=21), 0.0)


def test_1_applied_decision_id_cannot_name_a_decision_never_sent_to_it() -> None:
    """A liar cannot claim to have applied someone else's (newer) decision to release a drain."""
    state = PlannerState(TenantPolicy.model_validate(POLICY))
    state.register(_registration("a", "acme"), "sa", 0.0)
    state.register(_registration("b", "beta"), "sb", 0.0)
    state.report(_report("b", "sb", 1, ready=0), 0.0)
    state.commit(state.plan(1.0))  # decision 1 goes to b only (a has not reported)
    with pytest.raises(InvalidRequest, match="never issued"):
        from fleet_planner.contract.models import AckDrained

        state.ack_drained(AckDrained(deployment="a", session_id="sa", decision_id=1, role="agg", gpus_freed=0), 2.0)


# --------------------------------------------------------------------- 4, 6: TLS flags and files


def _serve(tmp_path: Path, *extra: str) -> list[str]:
    policy = tmp_path / "tenants.yaml"
    policy.write_text("fleet: {gpus: {h200: 8}}\ntenants: {acme: {}}\n")
    return ["serve", "--policy", str(policy), "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "s"), *extra]


def test_4_client_ca_without_a_server_certificate_is_an_error(tmp_path, capsys) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert cli_main(_serve(tmp_path, "--insecure", "--tls-client-ca", str(ca))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tls-client-ca: needs --tls-cert and --tls-key") and err.count("\n") == 1


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("pki")
    files = {}
    for name in ("server", "stranger"):
        key, cert = folder / f"{name}.key", folder / f"{name}.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
            + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"],
            check=True,
            capture_output=True,
        )
        files[f"{name}.key"], files[f"{name}.pem"] = key, cert
    garbage = folder / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    files["garbage"] = garbage
    return files


@pytest.mark.parametrize(
    ("cert", "key", "ca", "expected"),
    [
        ("garbage", "server.key", None, "--tls-cert/--tls-key are not a PEM certificate chain"),
        ("server.pem", "stranger.key", None, "matching private key"),
        ("server.pem", "server.key", "garbage", "--tls-client-ca is not a PEM CA certificate"),
        ("server.pem", "missing.key", None, "cannot read"),
    ],
)
def test_6_bad_certificate_or_key_is_one_clear_line(tmp_path, capsys, certificates, cert, key, ca, expected) -> None:
    def path(name: str) -> str:
        return str(certificates.get(name, tmp_path / name))

    extra = ["--insecure", "--tls-cert", path(cert), "--tls-key", path(key)]
    if ca:
        extra += ["--tls-client-ca", path(ca)]
    assert cli_main(_serve(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert "Traceback" not in err and "bind" not in err


def test_6_good_certificate_passes_the_check(certificates) -> None:
    from global_planner.service.auth import server_credentials

    assert server_credentials(certificates["server.pem"], certificates["server.key"], certificates["server.pem"])


# --------------------------------------------------------------------- 7: undecodable bytes


async def test_7_undecodable_bytes_are_invalid_argument_and_logged_rate_limited(planner, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(planner.target) as channel:
        raw = channel.unary_unary(f"/{SERVICE_NAME}/Report")  # no serializers: bytes on the wire
        for _ in range(50):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await raw(b"\xff\xff\xff\xff garbage")
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid fleet_planner.api.v1.ReportRequest" in error.value.details()
        stub = pb_grpc.PlannerStub(channel)  # and everyone else is still served
        await stub.Register(
            pb.RegisterRequest(
                deployment="liar",
                tenant="acme",
                endpoint="chat",
                pools=[pb.PoolSpec(role=pb.POOL_ROLE_AGG, gpu_type="h200", gpus_per_replica=1, max_replicas=4)],
            ),
            metadata=_auth("token-liar-0123456789abcdef"),
        )
    assert (
        planner.registry.get_sample_value("fleet_planner_rejected_messages_total", {"code": "INVALID_ARGUMENT"}) == 50
    )
    lines = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert 1 <= len(lines) <= 2, "50 bad messages in a burst log once"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------- 8: auth required, tenants, forgetting


def test_8_no_tokens_needs_explicit_insecure(tmp_path, capsys) -> None:
    assert cli_main(_serve(tmp_path)) == 2
    assert "error: --tokens: no --tokens: give a tokens file, or --insecure" in capsys.readouterr().err


def test_8_binary_tokens_file_is_one_clear_line(tmp_path, capsys) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_bytes(b"\x8f\xb7\x00not text")
    assert cli_main([*_serve(tmp_path), "--tokens", str(tokens)]) == 2
    err = capsys.readouterr().err
    assert "tokens.yaml: cannot read: 'utf-8' codec" in err and "Traceback" not in err


def test_8_unknown_tenant_is_rejected() -> None:
    state = PlannerState(TenantPolicy.model_validate(POLICY))
    with pytest.raises(InvalidRequest, match="tenant: 'mallory' is not in the tenant policy"):
        state.register(_registration("x", "mallory"), "s", 0.0)
    assert state.deployments() == []


async def test_8_silent_registrations_are_forgotten_and_records_stay_small(tmp_path) -> None:
    clock = SimulatedClock(0.0)
    state = PlannerState(TenantPolicy.model_validate(POLICY), lease_s=30.0)
    server = PlannerServer(state, auth=None, metrics=ServiceMetrics(CollectorRegistry()), audit=AuditLog(tmp_path))
    server.clock = clock
    for index in range(500):  # junk: registered once, never heard from again
        state.register(_registration(f"junk-{index}", "beta"), f"s{index}", 0.0)
    state.register(_registration("live", "acme"), "live", 0.0)
    for t in range(0, 100, 10):
        clock.set(float(t))
        state.report(_report("live", "live", t + 1, ready=1), clock.now())
        await server.run_round()
    assert state.deployments() == ["live"]
    size = (tmp_path / "decisions.jsonl").read_text().splitlines()[-1]
    assert len(size) < 5_000


# --------------------------------------------------------------------- 10: policy revert, dropped GPU types


def _bump(path: Path, text: str) -> None:
    import os

    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


async def test_10_revert_stops_the_rejection_log_and_dropped_types_lose_gauges(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    good = "fleet: {gpus: {h200: 8, h100: 4}}\ntenants: {acme: {}}\n"
    path = tmp_path / "tenants.yaml"
    path.write_text(good)
    registry = CollectorRegistry()
    watcher = PolicyWatcher(path, registry=registry)
    server = PlannerServer(
        PlannerState(watcher.policy),
        auth=None,
        metrics=ServiceMetrics(registry),
        watcher=watcher,
        clock=SimulatedClock(1000.0),
    )
    server.state.register(_registration("a", "acme"), "sa", 1000.0)
    server.state.report(_report("a", "sa", 1, ready=0), 1000.0)
    _bump(path, "fleet: {gpus: {h200: -1}}\n")
    for _ in range(3):
        await server.run_round()
    _bump(path, good)  # reverted to the identical, valid file
    caplog.clear()
    for _ in range(3):
        await server.run_round()
    assert watcher.last_error is None
    assert not [r for r in caplog.records if "rejected" in r.getMessage()]
    assert registry.get_sample_value("fleet_planner_inventory_gpus", {"gpu_type": "h100"}) == 4
    _bump(path, "fleet: {gpus: {h200: 8}}\ntenants: {acme: {}}\n")  # h100 dropped
    await server.run_round()
    assert registry.get_sample_value("fleet_planner_inventory_gpus", {"gpu_type": "h100"}) is None
    assert registry.get_sample_value("fleet_planner_committed_gpus", {"gpu_type": "h100"}) is None


def test_10_each_rejected_edit_is_logged_once(tmp_path, caplog) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("fleet: {gpus: {h200: 8}}\n")
    watcher = PolicyWatcher(path, registry=CollectorRegistry())
    _bump(path, "fleet: {gpus: {h200: -1}}\n")
    for _ in range(5):
        watcher.poll()
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1


# --------------------------------------------------------------------- 11: simulate --out


def test_11_simulate_out_naming_a_file_fails_before_running(tmp_path, capsys, monkeypatch) -> None:
    import fleet_sim.simulate

    def never(*args, **kwargs):
        raise AssertionError("the simulation must not start")

    monkeypatch.setattr(fleet_sim.simulate, "build_workload", never)
    taken = tmp_path / "result.txt"
    taken.write_text("keep me")
    scenario = Path(__file__).resolve().parents[1] / "examples/azure-disagg/scenario.yaml"
    for out in (taken, taken / "sub"):
        assert fleet_main(["simulate", str(scenario), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: --out: {taken} exists and is not a folder\n"
    assert taken.read_text() == "keep me"


# --------------------------------------------------------------------- restarts know every holding lease


async def test_holding_lease_is_durable_before_it_is_answered(planner, tmp_path) -> None:
    """Before its first round an agent is told to hold what it reported; a planner killed right
    after must still count those replicas (found by the randomized fault schedules)."""
    async with grpc.aio.insecure_channel(planner.target) as channel:
        stub = pb_grpc.PlannerStub(channel)
        spec = pb.PoolSpec(role=pb.POOL_ROLE_AGG, gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8)
        metadata = _auth("token-liar-0123456789abcdef")
        reg = await stub.Register(
            pb.RegisterRequest(deployment="liar", tenant="acme", endpoint="chat", pools=[spec]), metadata=metadata
        )
        answer = await stub.Report(
            pb.ReportRequest(
                deployment="liar",
                session_id=reg.session_id,
                sequence=1,
                pools=[pb.PoolReport(role=pb.POOL_ROLE_AGG, ready=3)],
            ),
            metadata=metadata,
        )
    assert answer.targets.decision_id == 0 and answer.targets.pools[0].replicas == 3
    restarted = PlannerState(TenantPolicy.model_validate(POLICY))
    audit = AuditLog(tmp_path)  # what a planner killed now finds
    restarted.resume(audit.recovery, 1000.0)
    audit.close()
    record = audit.recovery.record
    assert record is not None and record.status == "checkpoint" and record.trigger.startswith("a holding answer")
    assert restarted.usage("liar", "agg") == 3 and restarted.committed_gpus()["h200"] == 3
