"""Acceptance: the shortage example under ``global`` never asks for more GPUs than the inventory,
checked from its ``decisions.jsonl`` (replayed from the scenario's initial replica counts) and
``timeline.csv`` alone."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from itertools import groupby
from pathlib import Path

from fleet_planner.cli import main
from fleet_sim.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "examples/shortage/scenario.yaml"


def test_shortage_global_never_exceeds_the_inventory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["simulate", str(SCENARIO), "--out", str(out), "--duration", "20m", "--policy", "global", "--no-progress"]) == 0
    scenario = load_scenario(SCENARIO)
    inventory = dict(scenario.gpus)
    pools = {
        (spec.name, role): (pool.gpu_type, pool.gpus_per_replica)
        for spec in scenario.deployment_specs()
        for role, pool in spec.pools.items()
    }
    target = {key: pool.initial_replicas for spec in scenario.deployment_specs() for key, pool in
              (((spec.name, role), pool) for role, pool in spec.pools.items())}

    def within_budget() -> bool:
        used: dict[str, int] = defaultdict(int)
        for key, replicas in target.items():
            gpu, per = pools[key]
            used[gpu] += replicas * per
        return all(used[gpu] <= inventory[gpu] for gpu in used)

    assert within_budget()
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert decisions, "a 20-minute shortage should change some targets"
    for _, changes in groupby(decisions, key=lambda d: d["time_s"]):  # one tick's changes at once
        for change in changes:
            key = (change["deployment"], change["pool"])
            assert target[key] == change["from"], change  # the log is complete and in order
            target[key] = change["to"]
        assert within_budget(), change["time_s"]

    held: dict[tuple[str, str], int] = defaultdict(int)
    targets: dict[tuple[str, str], int] = defaultdict(int)
    with (out / "timeline.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            held[(row["time_s"], row["gpu_type"])] += int(row["gpus"])
            gpu, per = pools[(row["deployment"], row["pool"])]
            targets[(row["time_s"], gpu)] += int(row["target"]) * per
    assert held and all(gpus <= inventory[gpu] for (_, gpu), gpus in held.items())
    assert all(gpus <= inventory[gpu] for (_, gpu), gpus in targets.items())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fleet"]["budget_violations"] == 0
