"""``fleet-planner demo``: real processes and HTTP requests, the same requests simulated beside them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from fleet_planner.planning import DeploymentSpec, Distribution, PoolObservation
from fleet_planner_cli import main
from fleet_sim.demo.observe import ScenarioTimeSource
from local_agent.connectors.base import ReplicaCounts

SCENARIO = Path(__file__).resolve().parents[1] / "examples/demo/scenario.yaml"


def test_the_whole_product_live_matches_the_simulation(capsys: pytest.CaptureFixture[str]) -> None:
    """A minute of the trace at speed 2: engines, frontend, Prometheus (when installed), the agent
    runtime and a global planner process over gRPC; the simulation of the same requests beside it."""
    assert main(["demo", str(SCENARIO), "--slice", "60s", "--policy", "global", "--speed", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    live, simulated = result["live"], result["simulated"]
    assert live["requests"] == simulated["requests"] > 100
    assert abs(live["slo_attainment"] - simulated["slo_attainment"]) <= 0.05
    assert live["gpu_hours"] == pytest.approx(simulated["gpu_hours"], rel=0.1)
    assert result["agent"]["ticks"] >= 2 and result["agent"]["failed_ticks"] == 0
    planner = result["planner"]
    assert planner["rounds"] >= 2 and planner["rounds_with_bids"] >= 1  # the planner process got the reports
    assert set(planner["grants"]) == {"prefill", "decode"}
    expected = "prometheus" if shutil.which("prometheus") else "direct"
    assert result["setup"]["observed_through"].startswith(expected)


class _Fixed:
    """An inner source measuring a 10 s (wall) window: 50 ms TTFT, 5 ms iterations, 300 tokens/s."""

    def __init__(self) -> None:
        self.asked_at: list[float] = []

    async def observe(
        self, now_s: float, spec: DeploymentSpec, replicas: Mapping[str, ReplicaCounts]
    ) -> list[PoolObservation]:
        self.asked_at.append(now_s)
        ttft = Distribution(count=4, mean=50.0, p50=40.0, p90=80.0, p99=90.0)
        return [
            PoolObservation(
                deployment="chat",
                role="prefill",
                time_s=now_s,
                window_s=10.0,
                ready=1,
                starting=0,
                draining=0,
                pending=0,
                admitted=4,
                ttft_ms=ttft,
                iteration_ms=5.0,
                scheduled_tokens_per_s=300.0,
            )
        ]


async def test_observations_arrive_late_and_in_scenario_time() -> None:
    inner = _Fixed()
    wall = iter([100.0, 110.0, 120.0])
    source = ScenarioTimeSource(inner, lambda: next(wall), speed=3, delay_s=15)
    spec: DeploymentSpec = None  # type: ignore[assignment]  # not read by the fake
    assert await source.observe(0.0, spec, {}) == []  # no window has closed 15 s before the run
    (late,) = await source.observe(30.0, spec, {})
    # On its own clock, the window closed 15 scenario s (5 wall s at speed 3) before the tick.
    assert inner.asked_at == [95.0]
    assert late.time_s == 15.0 and late.window_s == 30.0  # 10 wall s = 30 scenario s
    assert late.admitted == 4
    assert late.ttft_ms is not None and (late.ttft_ms.mean, late.ttft_ms.p90) == (150.0, 240.0)
    assert late.iteration_ms == 15.0 and late.scheduled_tokens_per_s == 100.0
    (later,) = await source.observe(60.0, spec, {})
    assert later.time_s == 45.0 and inner.asked_at == [95.0, 105.0]


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["demo", str(SCENARIO), "--slice", "1s"]) == 2
    assert "--slice" in capsys.readouterr().err
    assert main(["demo", str(SCENARIO), "--speed", "0"]) == 2
    assert "--speed" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["demo", str(SCENARIO), "--slice", "10s", "--observe", "prometheus"]) == 2
    assert "no prometheus binary" in capsys.readouterr().err
    two = tmp_path / "two.yaml"
    text = SCENARIO.read_text().replace("../", str(SCENARIO.parent.parent) + "/")
    text = text.replace("policy_file: tenants.yaml", f"policy_file: {SCENARIO.parent / 'tenants.yaml'}")
    head, deployments = text.replace("a100: 8", "a100: 16").split("deployments:\n")
    two.write_text(
        head
        + "deployments:\n"
        + deployments
        + deployments.replace("name: chat", "name: chat2").replace("endpoint: llama-8b-chat", "endpoint: other")
    )
    assert main(["demo", str(two), "--slice", "10s"]) == 2
    assert "one deployment" in capsys.readouterr().err
