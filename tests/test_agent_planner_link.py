"""The live agent wired to a real planner over loopback gRPC: it registers, reports its demand,
applies the grant (not its own targets) and acknowledges it; with the planner gone it falls back
to its lease, then to its floor."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from agent_link_helpers import FixedReplicas, agg_decision, chat_config
from prometheus_client import CollectorRegistry

from fleet_planner.clock import SimulatedClock
from fleet_planner.contract.models import AgentReport, Forecast, PoolRegistration, PoolReport, Registration, Targets
from global_planner.policy_file import TenantPolicy
from global_planner.service.auth import Identity, TokenAuthenticator
from global_planner.service.metrics import ServiceMetrics
from global_planner.service.server import PlannerServer
from global_planner.service.state import PlannerState
from local_agent.config import PLANNER_TOKEN_ENV
from local_agent.connectors.virtual import VirtualConnector
from local_agent.planner_link.client import PlannerClient
from local_agent.planner_link.exchange import exchange, refresh_grant
from local_agent.runtime import AgentRuntime
from local_agent.session import PoolCounts, TickInput

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
TOKEN = "agent-token-0123456789abcdef"
RISING_TO_3 = [0.0, 1 / 3, 2 / 3, 1.0, 1.0]  # a bid for 3 replicas


def _orchestrator_reports(tmp_path: Path, ready: int) -> None:
    state = {
        "version": 1,
        "deployment": "chat",
        "targets": {},
        "observed": {"agg": {"ready": ready}},
        "observed_at": 0.0,
    }
    (tmp_path / "targets.json").write_text(json.dumps(state), encoding="utf-8")


def _written(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "targets.json").read_text())["targets"]


@pytest.fixture
async def planner():
    policy = TenantPolicy.model_validate({"fleet": {"gpus": {"h100": 3}}, "tenants": {"acme": {"priority": 10}}})
    clock = SimulatedClock(1000.0)
    server = PlannerServer(
        PlannerState(policy, lease_s=30.0),
        auth=TokenAuthenticator({TOKEN: Identity(deployment="chat", tenant="acme")}),
        metrics=ServiceMetrics(CollectorRegistry()),
        clock=clock,
    )
    port = await server.start("127.0.0.1:0")
    server.address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    server.test_clock = clock  # type: ignore[attr-defined]
    yield server
    await server.stop(0)


async def test_agent_applies_the_planner_grant_and_falls_back_to_its_floor(
    tmp_path: Path, planner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PLANNER_TOKEN_ENV, TOKEN)
    _orchestrator_reports(tmp_path, ready=2)
    clock = SimulatedClock(1000.0)
    runtime = AgentRuntime(
        chat_config(tmp_path, planner.address),
        FixedReplicas(),
        VirtualConnector(tmp_path / "targets.json", "chat", ["agg"]),
        clock=clock,
        lease_clock=clock,
    )
    try:
        await runtime.tick()  # registers and reports: a holding lease on what runs
        assert planner.state.deployments() == ["chat"]
        assert runtime.last_effects is not None and runtime.last_effects.source == "planner"
        assert _written(tmp_path) == {"agg": 2}

        assert await planner.run_round() is not None  # one allocation round on that report
        grant = planner.state.targets("chat", planner.test_clock.now()).pools[0].replicas
        clock.advance(5)
        await runtime.tick()
        effective = runtime.last_effects
        assert effective.source == "planner" and effective.decision_id >= 1
        assert _written(tmp_path) == {"agg": grant}  # the grant, not the agent's own target
        assert runtime.planner is not None and runtime.planner.applied_decision_id == effective.decision_id

        await planner.stop(0)  # the planner goes away
        clock.advance(5)
        await runtime.tick()
        assert runtime.last_effects.source == "lease" and _written(tmp_path) == {"agg": grant}
        clock.advance(60)  # past the lease
        await runtime.tick()
        assert runtime.last_effects.source == "floor"
        assert _written(tmp_path) == {"agg": min(1, grant)}  # the pool's min, never more than granted
    finally:
        await runtime.close()


async def test_agent_without_any_lease_runs_its_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planner unreachable from the first tick: no lease, nothing reported; the agent runs
    ``min(floor, what runs)`` (not zero: a restarting agent must not empty its deployment)."""
    monkeypatch.delenv(PLANNER_TOKEN_ENV, raising=False)
    _orchestrator_reports(tmp_path, ready=2)
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    connector = VirtualConnector(tmp_path / "targets.json", "chat", ["agg"])
    runtime = AgentRuntime(chat_config(tmp_path, closed), FixedReplicas(), connector, clock=SimulatedClock(1000.0))
    try:
        await runtime.tick()
        assert runtime.last_effects is not None and runtime.last_effects.source == "floor"
        assert runtime.last_effects.granted == {"agg": 1} and _written(tmp_path) == {"agg": 1}
    finally:
        await runtime.close()


async def test_a_loan_of_idle_gpus_runs_while_the_agent_plans_from_its_own_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tenant policy ``fill_idle``: the planner lends the idle GPUs above the agent's ask over real
    gRPC; the runtime applies the whole grant, the agent's own target stays its own part."""
    monkeypatch.setenv(PLANNER_TOKEN_ENV, TOKEN)
    _orchestrator_reports(tmp_path, ready=2)
    policy = TenantPolicy.model_validate(
        {
            "fleet": {"gpus": {"h100": 5}},
            "tenants": {"acme": {"priority": 10}},
            "deployments": [{"selector": "acme/*", "fill_idle": True}],
        }
    )
    registry = CollectorRegistry()
    server = PlannerServer(
        PlannerState(policy, lease_s=30.0),
        auth=TokenAuthenticator({TOKEN: Identity(deployment="chat", tenant="acme")}),
        metrics=ServiceMetrics(registry),
        clock=SimulatedClock(1000.0),
    )
    address = f"127.0.0.1:{await server.start('127.0.0.1:0')}"
    clock = SimulatedClock(1000.0)
    runtime = AgentRuntime(
        chat_config(tmp_path, address),
        FixedReplicas(),
        VirtualConnector(tmp_path / "targets.json", "chat", ["agg"]),
        clock=clock,
        lease_clock=clock,
    )
    try:
        await runtime.tick()
        assert await server.run_round() is not None
        target = server.state.targets("chat", 1000.0).pools[0]
        assert target.replicas == 5 and target.headroom_replicas > 0  # up to the pool's max, within the fleet
        lent = registry.get_sample_value("fleet_planner_lent_gpus", {"tenant": "acme", "gpu_type": "h100"})
        assert lent == target.headroom_replicas
        clock.advance(5)
        await runtime.tick()
        effects = runtime.last_effects
        assert effects is not None and effects.source == "planner"
        assert _written(tmp_path) == {"agg": 5}  # the loan runs
        assert effects.headroom == {"agg": target.headroom_replicas}
        assert runtime.agent is not None and runtime.agent.targets()["agg"] == 5 - target.headroom_replicas
    finally:
        await runtime.close()
        await server.stop(0)


@pytest.mark.parametrize("round_on_ask", [False, True])
async def test_between_decisions_the_agent_confirms_its_drain_so_a_waiting_pool_is_granted_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_on_ask: bool
) -> None:
    """Live agents decide every ``tick_s`` (30 s) and, between decisions, send ``AckDrained`` as
    soon as their connector shows a cut pool drained to its grant: the GPUs it freed reach the
    pool that waits for them seconds after the drain, not at the cut agent's next decision. With
    rounds on ask (``serve``'s default) the confirmation itself runs the round that grants them."""
    monkeypatch.setenv(PLANNER_TOKEN_ENV, TOKEN)
    _orchestrator_reports(tmp_path, ready=3)
    policy = TenantPolicy.model_validate(
        {"fleet": {"gpus": {"h100": 3}}, "tenants": {"acme": {"priority": 1}, "gold": {"priority": 10}}}
    )
    capped = policy.model_copy(  # the operator caps acme: its agent holds no bid curve to cut it by
        update={
            "tenants": {**policy.tenants, "acme": policy.tenants["acme"].model_copy(update={"max_gpus": {"h100": 1}})}
        }
    )
    server = PlannerServer(
        PlannerState(policy, lease_s=120.0),
        auth=TokenAuthenticator({TOKEN: Identity(deployment="chat", tenant="acme")}),
        metrics=ServiceMetrics(CollectorRegistry()),
        clock=SimulatedClock(1000.0),
        round_on_ask=round_on_ask,
    )
    address = f"127.0.0.1:{await server.start('127.0.0.1:0')}"
    clock = SimulatedClock(1000.0)
    runtime = AgentRuntime(
        chat_config(tmp_path, address),
        FixedReplicas(ready=3),
        VirtualConnector(tmp_path / "targets.json", "chat", ["agg"]),
        clock=clock,
        lease_clock=clock,
    )
    state = server.state
    gold = Registration(
        deployment="gold",
        tenant="gold",
        endpoint="gold",
        pools=[PoolRegistration(role="agg", gpu_type="h100", gpus_per_replica=1, min_replicas=0, max_replicas=3)],
    )

    def gold_reports(sequence: int, ready: int) -> Targets:
        return state.report(
            AgentReport(
                deployment="gold",
                session_id="sg",
                sequence=sequence,
                forecast=Forecast(mean_rps=20.0, upper_rps=24.0),
                pools=[PoolReport(role="agg", ready=ready, curve=[0.0, 0.5, 1.0, 1.0], wanted_replicas=2)],
            ),
            1000.0,
        )

    try:
        await runtime.tick()  # chat holds its 3 replicas: the whole fleet
        state.register(gold, "sg", 1000.0)
        gold_reports(1, 0)
        state.set_policy(capped)
        assert await server.run_round() is not None
        waiting = state.targets("gold", 1000.0)
        assert waiting.waiting_for_gpus and waiting.pools[0].replicas == 0, "chat's replicas still hold the GPUs"
        await runtime.tick()  # chat's next decision runs the cut
        cut = _written(tmp_path)["agg"]
        assert cut <= 1 and state.usage("chat", "agg") == 3, "the planner counts them until the drain is confirmed"

        await runtime.between_decisions()  # nothing has drained yet: nothing to confirm
        assert state.usage("chat", "agg") == 3
        _orchestrator_reports(tmp_path, ready=cut)  # the drain is over
        await runtime.between_decisions()
        assert state.usage("chat", "agg") == cut
        if not round_on_ask:
            assert state.asks_for_change("gold", 1000.0), "gold's report again now finds its GPUs free"
            assert await server.run_round() is not None
        assert state.targets("gold", 1000.0).pools[0].replicas == 2
    finally:
        await runtime.close()
        await server.stop(0)


async def test_the_runtime_decides_every_tick_and_reports_between_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` decides every ``tick_s`` and, with a planner, calls ``between_decisions`` every
    ``report_s`` in between; without one, or with ``report_s`` not shorter than ``tick_s``, it
    only decides (timing asserted loosely: CI machines are busy)."""

    async def count(runtime: AgentRuntime, seconds: float) -> tuple[int, int]:
        calls = {"tick": 0, "between": 0}

        async def tick() -> None:
            calls["tick"] += 1

        async def between() -> None:
            calls["between"] += 1

        monkeypatch.setattr(runtime, "tick", tick)
        monkeypatch.setattr(runtime, "between_decisions", between)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await runtime.run(stop)
        return calls["tick"], calls["between"]

    connector = VirtualConnector(tmp_path / "targets.json", "chat", ["agg"])
    runtime = AgentRuntime(chat_config(tmp_path, "127.0.0.1:9", tick_s=0.5, report_s=0.1), FixedReplicas(), connector)
    ticks, between = await count(runtime, 1.2)
    assert ticks in (2, 3) and between >= 4  # decisions at 0, 0.5 (and 1.0) s, four reports after each
    runtime = AgentRuntime(chat_config(tmp_path, "127.0.0.1:9", tick_s=0.5, report_s=0.5), FixedReplicas(), connector)
    ticks, between = await count(runtime, 1.2)
    assert ticks in (2, 3) and between == 0
    runtime = AgentRuntime(chat_config(tmp_path, None, tick_s=0.5), FixedReplicas(), connector)
    ticks, between = await count(runtime, 1.2)
    assert ticks in (2, 3) and between == 0


async def test_between_decisions_a_grant_not_yet_heard_of_is_fetched_without_a_bid() -> None:
    """Where the grant in force is not what the last decision asked, the agent fetches its
    targets between decisions without bidding (``refresh_grant``): a round the planner ran on its
    own (here after the operator lifted a cap) runs seconds later, not at the next decision.
    Where the grant is the ask, nothing is sent."""
    capped = {"fleet": {"gpus": {"h100": 4}}, "tenants": {"acme": {"priority": 1, "max_gpus": {"h100": 1}}}}
    state = PlannerState(TenantPolicy.model_validate(capped), lease_s=120.0)
    clock = SimulatedClock(1000.0)
    server = PlannerServer(
        state,
        auth=TokenAuthenticator({TOKEN: Identity(deployment="chat", tenant="acme")}),
        metrics=ServiceMetrics(CollectorRegistry()),
        clock=clock,
    )
    address = f"127.0.0.1:{await server.start('127.0.0.1:0')}"
    pools = [PoolRegistration(role="agg", gpu_type="h100", gpus_per_replica=1, min_replicas=0, max_replicas=4)]
    client = PlannerClient(address, TOKEN, "chat", "acme", "chat", pools, clock=clock)
    applied: list[dict[str, int]] = []

    async def apply(targets: dict[str, int]) -> None:
        applied.append(targets)

    tick = TickInput(
        now_s=1000.0,
        decision=agg_decision("chat", "acme", 3, current=1, curve=RISING_TO_3),
        running={"agg": PoolCounts(ready=1)},
        window_s=30.0,
    )
    try:
        await exchange(client, tick, apply)
        assert await server.run_round() is not None
        await exchange(client, tick, apply)
        assert applied[-1] == {"agg": 1}, "held to the cap"
        state.set_policy(TenantPolicy.model_validate({**capped, "tenants": {"acme": {"priority": 1}}}))
        assert await server.run_round() is not None  # the planner's own round: the agent has not reported
        assert state.targets("chat", 1000.0).pools[0].replicas == 3
        effects = await refresh_grant(client, tick, apply)
        assert effects is not None and effects.apply == {"agg": 3} and applied[-1] == {"agg": 3}
        assert state._deployments["chat"].applied_decision_id == effects.decision_id, "and acknowledged"
        asked = TickInput(
            now_s=1000.0,
            decision=agg_decision("chat", "acme", 3, current=3, curve=RISING_TO_3),
            running={"agg": PoolCounts(ready=3)},
        )
        assert await refresh_grant(client, asked, apply) is None
    finally:
        await client.close()
        await server.stop(0)
