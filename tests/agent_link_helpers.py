"""Shared by the tests of the agent's planner link (live runtime, TLS, live vs replay): one agg
deployment ``chat`` of tenant ``acme``, and an observation source that sees a fixed replica count."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleet_planner.planning import DeploymentSpec, PoolObservation
from local_agent.config import AgentConfig, parse_config
from local_agent.connectors.base import ReplicaCounts
from local_agent.models import AgentDecision, DecisionReason, PoolDecision

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "examples/profiles/llama3.1-8b_h100_vllm_tp1"


def chat_deployment(**pool: Any) -> dict[str, Any]:
    """The ``chat`` deployment block: one agg pool (min 1, max 6, initial 2), ``pool`` overriding."""
    return {
        "name": "chat",
        "tenant": "acme",
        "endpoint": "chat",
        "mode": "agg",
        "sla": {"ttft_ms": 800, "itl_ms": 25},
        "pools": {"agg": {"profile": str(PROFILE), "gpu_type": "h100", "min": 1, "max": 6, "initial": 2, **pool}},
    }


def chat_config(tmp_path: Path, planner: Any, **extra: Any) -> AgentConfig:
    """The ``chat`` agent talking to ``planner``; its state in ``tmp_path``."""
    data = {
        "deployment": chat_deployment(),
        "prometheus": {"url": "http://127.0.0.1:9"},
        "connector": {"kind": "virtual", "path": "targets.json"},
        "planner": planner,
        "state_dir": str(tmp_path),
        **extra,
    }
    return parse_config(data, base_dir=tmp_path)


def observation(deployment: str, now_s: float, ready: int) -> PoolObservation:
    """``ready`` agg replicas, no traffic statistics (the agent holds; its curves are empty)."""
    return PoolObservation(
        deployment=deployment, role="agg", time_s=now_s, window_s=60, ready=ready, starting=0, draining=0, pending=0
    )


class FixedReplicas:
    """An observation source that always sees ``ready`` replicas of the agg pool."""

    def __init__(self, ready: int = 2):
        self.ready = ready

    async def observe(
        self, now_s: float, spec: DeploymentSpec, replicas: Mapping[str, ReplicaCounts]
    ) -> list[PoolObservation]:
        return [observation(spec.name, now_s, self.ready)]


def agg_decision(name: str, tenant: str, target: int, current: int, curve: list[float] | None = None) -> AgentDecision:
    """One agg pool's decision: ``current`` is what the agent planned from, ``target`` its bid
    (``curve``: its demand curve, attainment for 0, 1, ... replicas; default reaching 1 at one)."""
    pool = PoolDecision(
        role="agg",
        current=current,
        wanted=target,
        target=target,
        reason=DecisionReason.HOLD,
        curve=curve if curve is not None else [0.0, 1.0],
    )
    return AgentDecision(
        time_s=10.0,
        deployment=name,
        tenant=tenant,
        loop="throughput",
        observed_rps=2.0,
        forecast_rps=2.0,
        forecast_upper_rps=2.0,
        input_tokens_mean=100.0,
        output_tokens_mean=10.0,
        pools=[pool],
    )
