"""Acceptance (issue 4) on the shortage example: ``global`` keeps the high-priority tenant at or
above 99% SLO attainment and beats ``fcfs`` on priority-weighted and total attainment with the
same inventory, and never asks for more GPUs than the inventory — checked from its
``decisions.jsonl`` (replayed from the scenario's initial replica counts) and ``timeline.csv``."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from itertools import groupby
from pathlib import Path

import pytest

from fleet_planner_cli import main
from fleet_sim.outputs import priority_weighted_attainment
from fleet_sim.scenario import load_scenario
from global_planner.policy_file import load_policy_file

SCENARIO = Path(__file__).resolve().parents[1] / "examples/shortage/scenario.yaml"
SOFT = Path(__file__).resolve().parents[1] / "examples/soft-shortage/scenario.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The whole two-hour example under ``global`` and ``fcfs`` (about a minute together)."""
    out = tmp_path_factory.mktemp("shortage")
    for policy in ("global", "fcfs"):
        assert main(["simulate", str(SCENARIO), "--out", str(out / policy), "--policy", policy, "--no-progress"]) == 0
    return {policy: out / policy for policy in ("global", "fcfs")}


def test_global_protects_priority_and_beats_fcfs(runs: dict[str, Path]) -> None:
    scenario = load_scenario(SCENARIO)
    policy = load_policy_file(scenario.base_dir / scenario.planner.options["policy_file"])
    priorities = {name: tenant.priority for name, tenant in policy.tenants.items()}
    summary = {name: json.loads((path / "summary.json").read_text()) for name, path in runs.items()}
    top = max(priorities, key=priorities.get)
    assert summary["global"]["tenants"][top]["slo_attainment"] >= 0.99
    weighted = {name: priority_weighted_attainment(s, priorities) for name, s in summary.items()}
    assert weighted["global"] > weighted["fcfs"]
    assert summary["global"]["fleet"]["slo_attainment"] > summary["fcfs"]["fleet"]["slo_attainment"]


def test_shortage_global_never_exceeds_the_inventory(runs: dict[str, Path]) -> None:
    _never_exceeds_the_inventory(runs["global"], SCENARIO)


def test_shortage_global_hands_gpus_over_in_one_tick(runs: dict[str, Path]) -> None:
    _hands_over_in_one_tick(runs["global"], SCENARIO)


def test_every_grant_away_from_its_bid_says_the_planners_reason(runs: dict[str, Path]) -> None:
    """A pool the planner holds away from its agent's bid says why in ``decisions.jsonl`` (the
    planner's own reason, as ``explain`` gives it), not only what the agent bid."""
    decisions = [json.loads(line) for line in (runs["global"] / "decisions.jsonl").read_text().splitlines()]
    overruled = [
        d for d in decisions if (bid := re.search(r"agent bid for (\d+)", d["reason"])) and int(bid[1]) != d["to"]
    ]
    assert overruled, "the shortage example has no grant away from a bid"
    for row in overruled:
        assert "; planner: " in row["reason"], row
    assert all("; planner: " not in d["reason"] for d in decisions if d not in overruled)


def test_soft_shortage_global_never_exceeds_the_inventory(tmp_path: Path) -> None:
    """The same check where the planner moves GPUs least by design (it contests them only on
    observed shortage), so every grant change there is a bid's or an observed shortage's."""
    assert main(["simulate", str(SOFT), "--out", str(tmp_path), "--policy", "global", "--no-progress"]) == 0
    _never_exceeds_the_inventory(tmp_path, SOFT)
    # Never worse than first come for the top tenant: no lower priority takes what acme holds and
    # wants, and idle GPUs reach its asks at once (fcfs gives it 99.43% here).
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tenants"]["acme"]["slo_attainment"] >= 0.99


def _hands_over_in_one_tick(out: Path, path: Path) -> None:
    """A100s pass from one tenant to the other within a tick of the cut, even to a deployment
    whose agent reports before the drained one: once the drain is done its agent reports between
    ticks (as a live agent's next report, seconds later, would) and the waiting agent reports
    again, on replica counts as of then, not the scrape."""
    scenario = load_scenario(path)
    interval = scenario.planner.interval_s
    order = [spec.name for spec in scenario.deployment_specs()]
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    cuts = [(d["time_s"], d["deployment"]) for d in decisions if d["to"] < d["from"] and "a100" in d["deployment"]]
    quick = [
        d
        for d in decisions
        if d["to"] > d["from"]
        and "a100" in d["deployment"]
        and any(
            0 < d["time_s"] - at < interval and other in order[order.index(d["deployment"]) + 1 :] for at, other in cuts
        )
    ]
    assert quick, "no A100 reached an earlier-reporting pool within a tick of its holder's cut"


def _never_exceeds_the_inventory(out: Path, path: Path) -> None:
    """Replays ``decisions.jsonl`` from the initial replica counts: at no tick do the targets ask
    for more GPUs than the inventory, nor do the timeline's held GPUs exceed it."""
    scenario = load_scenario(path)
    inventory = dict(scenario.gpus)
    pools = {
        (spec.name, role): (pool.gpu_type, pool.gpus_per_replica)
        for spec in scenario.deployment_specs()
        for role, pool in spec.pools.items()
    }
    target = {
        key: pool.initial_replicas
        for spec in scenario.deployment_specs()
        for key, pool in (((spec.name, role), pool) for role, pool in spec.pools.items())
    }

    def within_budget() -> bool:
        used: dict[str, int] = defaultdict(int)
        for key, replicas in target.items():
            gpu, per = pools[key]
            used[gpu] += replicas * per
        return all(used[gpu] <= inventory[gpu] for gpu in used)

    assert within_budget()
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert decisions, "a shortage should change some targets"
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
