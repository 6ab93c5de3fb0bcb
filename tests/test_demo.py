"""``fleet-planner demo``: real processes and HTTP requests, the same requests simulated beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_planner_cli import main

SCENARIO = Path(__file__).resolve().parents[1] / "examples/demo/scenario.yaml"


def test_a_short_live_replay_matches_the_simulation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", str(SCENARIO), "--slice", "20s", "--policy", "local", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    live, simulated = result["live"], result["simulated"]
    assert live["requests"] == simulated["requests"] > 20
    assert abs(live["slo_attainment"] - simulated["slo_attainment"]) <= 0.05
    assert live["gpu_hours"] == pytest.approx(simulated["gpu_hours"], rel=0.05)


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", str(SCENARIO), "--slice", "1s"]) == 2
    assert "--slice" in capsys.readouterr().err
    two = tmp_path / "two.yaml"
    text = SCENARIO.read_text().replace("../", str(SCENARIO.parent.parent) + "/")
    head, deployments = text.replace("h200: 8", "h200: 16").split("deployments:\n")
    two.write_text(
        head
        + "deployments:\n"
        + deployments
        + deployments.replace("name: chat", "name: chat2").replace("endpoint: llama-8b-chat", "endpoint: other")
    )
    assert main(["demo", str(two), "--slice", "10s"]) == 2
    assert "one deployment" in capsys.readouterr().err
