"""The planner over real gRPC on loopback: happy path, auth, bad input, health, fallback, explain."""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from planner_helpers import loopback_planner
from prometheus_client import CollectorRegistry

from fleet_planner.api.v1 import planner_pb2 as pb
from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc
from fleet_planner.clock import SimulatedClock
from fleet_planner.contract import convert
from fleet_planner.contract.models import AgentReport, Forecast, PoolRegistration, PoolReport
from global_planner.cli import main as cli_main
from global_planner.policy_file import TenantPolicy
from global_planner.service.audit import AuditLog, last_record
from global_planner.service.auth import Identity, TokenAuthenticator
from global_planner.service.metrics import ServiceMetrics
from global_planner.service.server import SERVICE_NAME, PlannerServer
from global_planner.service.state import PlannerState
from local_agent.planner_link.client import PlannerClient, PlannerRejected
from local_agent.session import Lease, effective_targets

TOKENS = {
    "token-a-0123456789abcdef": Identity(deployment="chat-a", tenant="acme"),
    "token-b-0123456789abcdef": Identity(deployment="chat-b", tenant="beta"),
    "token-ghost-0123456789ab": Identity(deployment="ghost", tenant="beta"),
}
TOKEN_A, TOKEN_B, TOKEN_GHOST = TOKENS


@pytest.fixture
async def planner(tmp_path):
    policy = TenantPolicy.model_validate(
        {"fleet": {"gpus": {"h200": 8}}, "tenants": {"acme": {"priority": 10}, "beta": {"priority": 1}}}
    )
    async with loopback_planner(policy, TOKENS, tmp_path) as server:
        yield server


def _pools(max_replicas: int = 8) -> list[PoolRegistration]:
    return [
        PoolRegistration(role="agg", gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=max_replicas)
    ]


def _curve(need: int, length: int = 9) -> list[float]:
    return [min(1.0, k / need) for k in range(length)]


def _register_pb(deployment: str = "chat-a", tenant: str = "acme") -> pb.RegisterRequest:
    return pb.RegisterRequest(
        deployment=deployment,
        tenant=tenant,
        endpoint="chat",
        pools=[pb.PoolSpec(role=pb.POOL_ROLE_AGG, gpu_type="h200", gpus_per_replica=1, min_replicas=0, max_replicas=8)],
    )


def _auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_register_report_targets_and_acks(planner, tmp_path) -> None:
    async with PlannerClient(planner.target, TOKEN_A, "chat-a", "acme", "chat", _pools(), floor=1) as client:
        await client.register()
        holding = await client.report(
            [PoolReport(role="agg", ready=2, curve=_curve(4))], Forecast(mean_rps=5, upper_rps=6)
        )
        assert holding.decision_id == 0 and holding.replicas == {"agg": 2}, "before a round: hold what is counted"
        round_ = await planner.run_round()
        assert round_ is not None
        got = await client.report([PoolReport(role="agg", ready=2, curve=_curve(4))], Forecast(mean_rps=5, upper_rps=6))
        assert got.source == "planner" and got.decision_id == round_.decision_id
        assert got.replicas == {"agg": 4}
        assert got.routing == {"chat-a": 1.0}
        await client.ack_applied(got.decision_id, got.replicas)
        await client.ack_drained(got.decision_id, "agg", 0)
    record = last_record(tmp_path / "decisions.jsonl")
    assert record is not None and record.decision_id == round_.decision_id
    assert record.committed_gpus["h200"] <= record.inventory["h200"]
    assert planner.registry.get_sample_value("fleet_planner_granted_gpus", {"tenant": "acme", "gpu_type": "h200"}) == 4
    assert planner.registry.get_sample_value("fleet_planner_rounds_total", {"status": round_.record.status}) == 1


async def test_auth_errors(planner) -> None:
    async with grpc.aio.insecure_channel(planner.target) as channel:
        stub = pb_grpc.PlannerStub(channel)
        cases = [
            ((), grpc.StatusCode.UNAUTHENTICATED, "authorization"),
            (_auth("not-a-known-token-at-all"), grpc.StatusCode.UNAUTHENTICATED, "unknown token"),
            ((("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED, "Bearer"),
        ]
        for metadata, code, text in cases:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Register(_register_pb(), metadata=metadata)
            assert error.value.code() == code and text in error.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as error:  # a's token cannot register b
            await stub.Register(_register_pb("chat-b", "beta"), metadata=_auth(TOKEN_A))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED and "deployment" in error.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as error:  # nor claim another tenant for itself
            await stub.Register(_register_pb("chat-a", "beta"), metadata=_auth(TOKEN_A))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED and "tenant" in error.value.details()
        registered = await stub.Register(_register_pb("chat-b", "beta"), metadata=_auth(TOKEN_B))
        with pytest.raises(grpc.aio.AioRpcError) as error:  # nor report for another tenant's deployment
            await stub.Report(
                pb.ReportRequest(deployment="chat-b", session_id=registered.session_id, sequence=1),
                metadata=_auth(TOKEN_A),
            )
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        planner.registry.get_sample_value("fleet_planner_rejected_messages_total", {"code": "PERMISSION_DENIED"}) == 3
    )


def _bad_reports(session: str) -> list[tuple[str, pb.ReportRequest, grpc.StatusCode, str]]:
    def report(**pool: object) -> pb.ReportRequest:
        fields = {"role": pb.POOL_ROLE_AGG, "ready": 1, "curve": [0.0, 0.5, 1.0], **pool}
        return pb.ReportRequest(deployment="chat-a", session_id=session, sequence=99, pools=[pb.PoolReport(**fields)])

    inf_forecast = report()
    inf_forecast.forecast.CopyFrom(pb.Forecast(mean_rps=math.inf, upper_rps=math.inf))
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("nan", report(curve=[0.0, math.nan]), invalid, "pools[0].curve[1]"),
        ("inf", inf_forecast, invalid, "forecast.mean_rps"),
        ("negative", report(ready=-1), invalid, "pools[0].ready"),
        ("negative queue", report(queued_requests=-3.0), invalid, "pools[0].queued_requests"),
        ("nan queue", report(queued_requests=math.nan), invalid, "pools[0].queued_requests"),
        ("huge queue", report(queued_requests=1e13), invalid, "pools[0].queued_requests"),
        ("nan late", report(late_rps_per_replica=math.nan), invalid, "pools[0].late_rps_per_replica"),
        ("negative late", report(late_rps_per_replica=-1.0), invalid, "pools[0].late_rps_per_replica"),
        ("oversized curve", report(curve=[0.5] * 1025), invalid, "pools[0].curve"),
        ("oversized count", report(draining=20_000), invalid, "pools[0].draining"),
        ("attainment > 1", report(curve=[0.0, 1.5]), invalid, "pools[0].curve[1]"),
        ("no role", report(role=pb.POOL_ROLE_UNSPECIFIED), invalid, "pools[0].role"),
        ("unregistered role", report(role=pb.POOL_ROLE_DECODE), invalid, "pools[0].role"),
        (
            "long name",
            pb.ReportRequest(deployment="x" * 300, session_id=session),
            grpc.StatusCode.PERMISSION_DENIED,
            "deployment",
        ),
    ]


async def test_bad_input_is_rejected_and_others_keep_being_served(planner) -> None:
    async with grpc.aio.insecure_channel(planner.target) as channel:
        stub = pb_grpc.PlannerStub(channel)
        a = await stub.Register(_register_pb(), metadata=_auth(TOKEN_A))
        b = await stub.Register(_register_pb("chat-b", "beta"), metadata=_auth(TOKEN_B))
        good = pb.ReportRequest(
            deployment="chat-a",
            session_id=a.session_id,
            sequence=1,
            pools=[pb.PoolReport(role=pb.POOL_ROLE_AGG, ready=3, curve=[0.0, 1.0])],
        )
        await stub.Report(good, metadata=_auth(TOKEN_A))
        for label, request, code, field in _bad_reports(a.session_id):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Report(request, metadata=_auth(TOKEN_A))
            assert error.value.code() == code, label
            assert field in error.value.details(), (label, error.value.details())
            # b is still served, and nothing of a's bad message was applied
            reply = await stub.Report(
                pb.ReportRequest(deployment="chat-b", session_id=b.session_id, sequence=len(label)),
                metadata=_auth(TOKEN_B),
            )
            assert reply.targets.endpoint == "chat"
            assert planner.state.usage("chat-a", "agg") == 3
        with pytest.raises(grpc.aio.AioRpcError) as error:  # a valid token whose deployment never registered
            await stub.Report(
                pb.ReportRequest(deployment="ghost", session_id="s", sequence=1), metadata=_auth(TOKEN_GHOST)
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as error:
            bad = _register_pb()
            bad.pools[0].gpu_type = "tpu-v5"
            await stub.Register(bad, metadata=_auth(TOKEN_A))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pools[0].gpu_type" in error.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            bad = _register_pb()
            bad.pools[0].min_replicas = 9
            await stub.Register(bad, metadata=_auth(TOKEN_A))
        assert (
            error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "min_replicas 9 > max_replicas 8" in error.value.details()
        )
        for startup in (math.nan, math.inf, -1.0, 86_401.0):  # the cold start a churn cost is priced on
            with pytest.raises(grpc.aio.AioRpcError) as error:
                bad = _register_pb()
                bad.pools[0].startup_s = startup
                await stub.Register(bad, metadata=_auth(TOKEN_A))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, startup
            assert "pools[0].startup_s" in error.value.details(), error.value.details()


async def test_health_and_reflection(planner) -> None:
    async with grpc.aio.insecure_channel(planner.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for r in replies for s in r.list_services_response.service]
        assert SERVICE_NAME in names


async def test_client_falls_back_to_lease_then_floor(planner) -> None:
    clock = SimulatedClock(0.0)
    client = PlannerClient(
        planner.target,
        TOKEN_A,
        "chat-a",
        "acme",
        "chat",
        _pools(),
        floor=1,
        drain_margin_s=5.0,
        timeout_s=0.5,
        clock=clock,
    )
    pools = [PoolReport(role="agg", ready=0, curve=_curve(3))]
    await client.report(pools, Forecast(mean_rps=5, upper_rps=6))
    await planner.run_round()
    got = await client.report(pools, Forecast(mean_rps=5, upper_rps=6))
    assert got.replicas == {"agg": 3} and got.source == "planner"
    await planner.stop(0)
    clock.set(10.0)
    on_lease = await client.report(pools)
    assert on_lease.source == "lease" and on_lease.replicas == {"agg": 3}
    assert client.last_error is not None and "UNAVAILABLE" in client.last_error
    clock.set(26.0)  # lease 30 s from the send time, minus the 5 s drain margin
    on_floor = await client.report(pools)
    assert on_floor.source == "floor" and on_floor.replicas == {"agg": 1}
    await client.close()


async def test_client_raises_on_rejection(planner) -> None:
    client = PlannerClient(planner.target, TOKEN_B, "chat-a", "acme", "chat", _pools())
    with pytest.raises(PlannerRejected, match="PERMISSION_DENIED"):
        await client.report([PoolReport(role="agg")])
    await client.close()


def test_effective_targets_rules() -> None:
    lease = Lease(decision_id=4, replicas={"prefill": 3, "decode": 1}, fallback_at=100.0)
    floor = {"prefill": 2, "decode": 2}
    assert effective_targets(lease, floor, {}, 99.9).replicas == {"prefill": 3, "decode": 1}
    fallen = effective_targets(lease, floor, {}, 100.0)
    assert fallen.source == "floor" and fallen.replicas == {"prefill": 2, "decode": 1}, "never above the last grant"
    never = effective_targets(None, floor, {"prefill": 5, "decode": 1}, 0.0)
    assert never.replicas == {"prefill": 2, "decode": 1}, "never above what the planner has counted"


async def test_explain_prints_reasons(planner, tmp_path, capsys) -> None:
    async with PlannerClient(planner.target, TOKEN_A, "chat-a", "acme", "chat", _pools()) as client:
        await client.report([PoolReport(role="agg", curve=_curve(2))], Forecast(mean_rps=5, upper_rps=6))
        round_ = await planner.run_round()
        assert round_ is not None
    assert cli_main(["explain", str(round_.decision_id), "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"decision {round_.decision_id}" in out and "(timer)" in out and "chat-a" in out and "granted 2" in out
    assert "demand: forecast 5.00 rps" in out
    assert cli_main(["explain", "999", "--state-dir", str(tmp_path)]) == 2


async def test_policy_file_reloads_between_rounds(tmp_path) -> None:
    from global_planner.policy_file import PolicyWatcher

    path = tmp_path / "tenants.yaml"
    path.write_text("fleet: {gpus: {h200: 8}}\n")
    registry = CollectorRegistry()
    watcher = PolicyWatcher(path, registry=registry)
    server = PlannerServer(PlannerState(watcher.policy), auth=None, metrics=ServiceMetrics(registry), watcher=watcher)
    path.write_text("fleet: {gpus: {h200: 16}}\n")  # sizes differ: the watcher sees each edit
    await server.run_round()
    assert server.state.inventory == {"h200": 16}
    path.write_text("fleet: {gpus: {h200: -100}}\n")  # invalid edit: the old policy stays
    await server.run_round()
    assert server.state.inventory == {"h200": 16}
    assert registry.get_sample_value("fleet_planner_policy_reload_errors_total") == 1


async def test_round_on_ask_grants_free_gpus_in_the_reply_to_the_asking_report(tmp_path) -> None:
    """Without it a grant reaches the agent one report after its bid (the round decides on the
    reports it has); with it a report asking for GPUs that are free now, or for fewer replicas,
    runs a round first, and that round is in the audit log before the reply carries its grant."""
    policy = TenantPolicy.model_validate({"fleet": {"gpus": {"h200": 8}}, "tenants": {"acme": {}, "beta": {}}})
    for round_on_ask, expected in ((False, 0), (True, 3)):
        server = PlannerServer(
            PlannerState(policy, lease_s=30.0),
            auth=TokenAuthenticator(TOKENS),
            metrics=ServiceMetrics(CollectorRegistry()),
            audit=AuditLog(tmp_path / str(round_on_ask)),
            clock=SimulatedClock(1000.0),
            round_on_ask=round_on_ask,
        )
        port = await server.start("127.0.0.1:0")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.PlannerStub(channel)
                session = (await stub.Register(_register_pb(), metadata=_auth(TOKEN_A))).session_id
                report = pb.ReportRequest(
                    deployment="chat-a",
                    session_id=session,
                    sequence=1,
                    forecast=pb.Forecast(mean_rps=3.0, upper_rps=3.0),
                    pools=[pb.PoolReport(role=pb.POOL_ROLE_AGG, curve=_curve(3), wanted_replicas=3)],
                )
                reply = last = await stub.Report(report, metadata=_auth(TOKEN_A))
                if round_on_ask:  # asking for fewer is answered at once too
                    del report.pools[:]
                    report.pools.append(
                        pb.PoolReport(role=pb.POOL_ROLE_AGG, ready=3, curve=_curve(1), wanted_replicas=1)
                    )
                    report.sequence = 2
                    report.forecast.mean_rps = report.forecast.upper_rps = 1.0
                    last = await stub.Report(report, metadata=_auth(TOKEN_A))
                    assert {p.role: p.replicas for p in last.targets.pools} == {pb.POOL_ROLE_AGG: 1}
            granted = {p.role: p.replicas for p in reply.targets.pools}
            assert granted.get(pb.POOL_ROLE_AGG, 0) == expected, round_on_ask
            record = last_record(tmp_path / str(round_on_ask) / "decisions.jsonl")
            assert (record is not None) == round_on_ask
            if record is not None:
                assert last.targets.decision_id == record.decision_id  # the round that answered it
                assert record.trigger == "report of chat-a: agg asks for fewer replicas than its grant"
        finally:
            await server.stop(0)


async def test_asks_that_a_later_snapshot_holds_cost_no_round_of_their_own(tmp_path) -> None:
    """Round on ask runs a round for a report only if no round has snapshotted the bids since
    that report was applied: reports that arrive while a round solves share the next one."""
    policy = TenantPolicy.model_validate({"fleet": {"gpus": {"h200": 8}}, "tenants": {"acme": {}}})
    state = PlannerState(policy, lease_s=30.0)
    server = PlannerServer(
        state,
        auth=None,
        metrics=ServiceMetrics(CollectorRegistry()),
        audit=AuditLog(tmp_path),
        clock=SimulatedClock(10.0),
        round_on_ask=True,
    )
    registration = convert.registration_from_pb(_register_pb())
    state.register(registration, "s1", 10.0)
    report = AgentReport(
        deployment="chat-a",
        session_id="s1",
        sequence=1,
        forecast=Forecast(mean_rps=3.0, upper_rps=3.0),
        pools=[PoolReport(role="agg", curve=_curve(3), wanted_replicas=3)],
    )
    state.report(report, 10.0)
    reported_at = state.snapshots
    assert await server.run_round() is not None  # the timer's round snapshots after the report
    assert await server.run_round("report of chat-a: asks", reported_at) is None
    assert await server.run_round("report of chat-a: asks", state.snapshots) is not None
    assert last_record(tmp_path / "decisions.jsonl").trigger == "report of chat-a: asks"
    await server.stop(0)
