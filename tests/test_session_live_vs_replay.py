"""The same scripted planner, answered to the live agent runtime and to the simulator's ``global``
policy: both must apply the same targets, acknowledge the same decisions (after applying them) and
learn the same routing weights and admission limits, tick by tick — including the fallbacks
(never reached, lease, floor). Before the session was shared, the two differed on the first tick
(the simulator ran ``min(floor, 0)`` while the live agent kept what runs), on acknowledgements
(the simulator acked every reply, even unapplied ones) and on routing/admission (dropped live).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from agent_link_helpers import FixedReplicas, chat_config, observation

from fleet_planner.api.v1 import planner_pb2 as pb
from fleet_planner.api.v1 import planner_pb2_grpc as pb_grpc
from fleet_planner.clock import SimulatedClock
from fleet_planner.contract import convert
from fleet_planner.contract.models import PoolTarget, Targets
from fleet_planner.planning import FleetObservation
from fleet_sim.adapters.local import load_models
from fleet_sim.adapters.planner import GlobalPolicy
from fleet_sim.scenario import load_scenario
from global_planner.policy_file import TenantPolicy, load_policy_file
from local_agent.agent import AgentOptions
from local_agent.config import AgentConfig
from local_agent.connectors.base import Connector, ReplicaCounts
from local_agent.runtime import AgentRuntime
from local_agent.sizing.shares import endpoint_shares

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
TICK = 5.0
START = 1000.0
SHARE = 0.6  # the endpoint share every reply tells

# What the planner answers at each tick: None = unreachable (UNAVAILABLE); otherwise
# (decision id, replicas, lease seconds, routing, admission requests/s).
SCRIPT: list[tuple[int, int, float, dict[str, float], float | None] | None] = [
    None,  # never reached: run min(floor, what runs)
    (0, 2, 8.0, {}, None),  # a holding lease on what was reported
    (1, 4, 8.0, {"chat": 0.6, "chat-b": 0.4}, 7.5),  # a grant with routing and shedding
    (2, 3, 8.0, {"chat": 0.5, "chat-b": 0.5}, None),
    None,  # away: the lease (decision 2, sent at 1015: until 1023) still holds
    None,  # 1025: past the lease: min(floor, last grant)
    (3, 5, 8.0, {"chat": 1.0}, None),  # back
]


class ScriptedPlanner(pb_grpc.PlannerServicer):
    """A planner that answers what SCRIPT says for the current tick and records acknowledgements."""

    def __init__(self) -> None:
        self.tick = 0
        self.acks: list[tuple[int, int, dict[str, int]]] = []  # (tick, decision, applied)

    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        if SCRIPT[self.tick] is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")
        now = START + self.tick * TICK
        return pb.RegisterResponse(session_id="s1", planner_time_s=now, targets=pb.Targets(planner_time_s=now))

    async def _answer(self, context: grpc.aio.ServicerContext) -> pb.Targets:
        answer = SCRIPT[self.tick]
        if answer is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")
        assert answer is not None
        decision, replicas, lease_s, routing, admission = answer
        now = START + self.tick * TICK
        targets = Targets(
            deployment="chat",
            decision_id=decision,
            planner_time_s=now,
            lease_expires_s=now + lease_s,
            pools=[PoolTarget(role="agg", replicas=replicas)],
            endpoint="chat",
            routing=routing,
            admission_rps=admission,
            endpoint_share=SHARE,
        )
        return convert.targets_to_pb(targets)

    async def Report(self, request: pb.ReportRequest, context: grpc.aio.ServicerContext) -> pb.ReportResponse:
        return pb.ReportResponse(targets=await self._answer(context))

    async def AckApplied(self, request: pb.AckAppliedRequest, context: grpc.aio.ServicerContext) -> pb.AckResponse:
        """Answers with the targets now, as the planner does; an ack naming no applied pool is an
        agent fetching its targets between decisions (``refresh_grant``), not an acknowledgement."""
        if request.applied:
            applied = {convert.ROLE_FROM_PB[p.role]: p.replicas for p in request.applied}
            self.acks.append((self.tick, request.decision_id, applied))
        return pb.AckResponse(targets=await self._answer(context))


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedPlanner, str]]:
    planner = ScriptedPlanner()
    server = grpc.aio.server()
    pb_grpc.add_PlannerServicer_to_server(planner, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield planner, f"127.0.0.1:{port}"
    await server.stop(0)


class Running(Connector):
    """Two replicas run; applied targets are recorded (the orchestrator is not simulated)."""

    def __init__(self) -> None:
        self.applied: list[dict[str, int]] = []

    async def apply(self, targets: dict[str, int]) -> None:
        self.applied.append(dict(targets))

    async def observe_replicas(self) -> dict[str, ReplicaCounts]:
        return {"agg": ReplicaCounts(ready=2)}

    async def close(self) -> None:
        return None


def _config(tmp_path: Path, address: str) -> AgentConfig:
    return chat_config(tmp_path, address, options={"predictor": "constant"}, tick_s=TICK)


async def _live(tmp_path: Path, planner: ScriptedPlanner, address: str) -> list[tuple]:
    clock = SimulatedClock(START)
    connector = Running()
    runtime = AgentRuntime(
        chat_config(tmp_path, address, options={"predictor": "constant"}, tick_s=TICK),
        FixedReplicas(),
        connector,
        clock=clock,
        lease_clock=clock,
    )
    seen = []
    try:
        for tick in range(len(SCRIPT)):
            planner.tick = tick
            clock.set(START + tick * TICK)
            await runtime.tick()
            effects = runtime.last_effects
            assert effects is not None
            state = runtime.recorder.state()["planner"]
            assert state["routing"] == effects.routing and state["admission_rps"] == effects.admission_rps
            assert runtime.agent is not None
            share = runtime.agent.endpoint_share
            seen.append(
                (
                    connector.applied[-1],
                    effects.source,
                    effects.decision_id,
                    effects.routing,
                    effects.admission_rps,
                    share,
                )
            )
    finally:
        await runtime.close()
    return seen


def _replay(config, planner: ScriptedPlanner, address: str) -> list[tuple]:
    policy = TenantPolicy.model_validate({"fleet": {"gpus": {"h100": 8}}, "tenants": {"acme": {"priority": 10}}})
    sim = GlobalPolicy([config.spec()], TICK, AgentOptions(predictor="constant"), policy)
    channel = sim._io.run(_channel(address))
    sim.clients["chat"]._stub = pb_grpc.PlannerStub(channel)  # the scripted planner answers instead
    seen = []
    try:
        for tick in range(len(SCRIPT)):
            planner.tick = tick
            now = START + tick * TICK
            decision = sim.decide(now, FleetObservation(time_s=now, pools=[observation("chat", now, 2)]))
            effects = sim.last_effects["chat"]
            applied = {t.role: t.replicas for t in decision.targets}
            assert f"({effects.source} #{effects.decision_id})" in decision.targets[0].reason
            seen.append(
                (
                    applied,
                    effects.source,
                    effects.decision_id,
                    dict(effects.routing),  # learnt; the simulator's gateway balances by load itself
                    decision.admission.get("chat"),
                    sim.agents["chat"].endpoint_share,
                )
            )
    finally:
        sim._io.run(channel.close())
        sim.close()
    return seen


async def _channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


async def test_live_and_replay_run_the_same_exchange(tmp_path: Path, scripted: tuple[ScriptedPlanner, str]) -> None:
    planner, address = scripted
    live = await _live(tmp_path, planner, address)
    live_acks = list(planner.acks)
    planner.acks.clear()
    config = _config(tmp_path, address)
    # the simulator blocks on its own loop thread: keep this loop free to serve the script
    replay = await asyncio.to_thread(_replay, config, planner, address)
    replay_acks = list(planner.acks)

    assert [row[0] for row in live] == [
        {"agg": 1},  # never reached: min(floor 1, running 2)
        {"agg": 2},
        {"agg": 4},
        {"agg": 3},
        {"agg": 3},  # on the lease
        {"agg": 1},  # past it: min(floor, last grant)
        {"agg": 5},
    ]
    assert [row[1] for row in live] == ["floor", "planner", "planner", "planner", "lease", "floor", "planner"]
    assert live[2][3] == {"chat": 0.6, "chat-b": 0.4} and live[2][4] == 7.5
    assert [row[5] for row in live] == [None] + [SHARE] * (len(SCRIPT) - 1), "the endpoint share is learnt"
    assert live == replay
    assert (
        live_acks
        == replay_acks
        == [
            (2, 1, {"agg": 4}),
            (3, 2, {"agg": 3}),
            (6, 3, {"agg": 5}),
        ]
    ), "only fresh grants are acknowledged, with what was applied"


def test_the_simulated_planner_tells_each_agent_the_share_the_simulator_used_to_assume() -> None:
    """Agents sharing an endpoint learn their share from the planner (registered capacities), and
    it is exactly what ``endpoint_shares`` computes from the scenario: replay figures unchanged."""
    scenario = load_scenario(ROOT / "examples/shortage/scenario.yaml")
    specs = scenario.deployment_specs()
    expected = endpoint_shares(specs, load_models(specs))
    policy = load_policy_file(scenario.base_dir / scenario.planner.options["policy_file"])
    sim = GlobalPolicy(specs, scenario.planner.interval_s, AgentOptions(predictor="constant"), policy)
    try:
        assert all(agent.endpoint_share is None for agent in sim.agents.values()), "not told yet"
        sim.decide(0.0, None)
        learnt = {name: agent.endpoint_share for name, agent in sim.agents.items()}
    finally:
        sim.close()
    assert set(learnt) == set(expected) and all(v is not None for v in expected.values())
    assert learnt == pytest.approx(expected, rel=1e-12)
