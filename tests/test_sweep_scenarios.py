"""The random-scenario sweep (benchmarks/sweep_scenarios.py; runs there): its draws are reproducible and
every file it writes is a scenario the loader accepts or refuses with a clear error, never anything else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from sweep_scenarios import (
    Run,
    behind_fcfs,
    generate,
    held_below_minimum,
    past_caps,
    serving_failures,
    write_scenario,
)

from fleet_sim.scenario import load_scenario


def test_drawn_scenarios_are_reproducible_and_load_or_are_refused_clearly(tmp_path: Path) -> None:
    drawn = generate(10, seed=7)
    assert drawn == generate(10, seed=7)
    assert drawn != generate(10, seed=8)
    accepted = 0
    for scenario in drawn:
        path = write_scenario(tmp_path, scenario)
        try:
            load_scenario(path)
            accepted += 1
        except ValueError as exc:  # InputError is a ValueError: one message naming the file and field
            assert str(exc) and "\n" not in str(exc), (scenario.name, str(exc))
        except Exception as exc:
            pytest.fail(f"{scenario.name}: {type(exc).__name__}: {exc}")
    assert accepted >= 5, accepted  # most draws are valid: the sweep is about runs, not refusals


def test_global_behind_fcfs_is_reported_by_issue_11s_bar() -> None:
    def run(scenario: str, policy: str, weighted: float, total: float) -> Run:
        return Run(scenario, policy, 0, 1.0, attainment=total, weighted=weighted)

    runs = [
        run("s01", "fcfs", 0.90, 0.90),
        run("s01", "global", 0.95, 0.897),  # ahead on priorities, within half a point of the total
        run("s02", "fcfs", 0.90, 0.90),
        run("s02", "global", 0.89, 0.95),  # behind on priorities
        run("s03", "fcfs", 0.90, 0.90),
        run("s03", "global", 0.95, 0.89),  # a point behind on the total
        run("s04", "global", 0.10, 0.10),  # no fcfs run to compare with
    ]
    assert [line.split(":")[0] for line in behind_fcfs(runs)] == ["s02", "s03"]


def test_a_cap_fcfs_went_past_is_named_where_global_trails_it(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline.csv"
    rows = [
        "time_s,deployment,pool,gpu_type,gpus,target",
        "0,d0,prefill,a100,3,3",
        "0,d0,decode,a100,2,2",  # acme holds 5 A100s at once
        "0,d1,agg,a100,4,4",
        "30,d0,prefill,a100,2,2",
        "30,d0,decode,a100,2,2",
        "30,d1,agg,h200,8,8",  # beta's cap is on A100s only
    ]
    timeline.write_text("\n".join(rows) + "\n")
    owners = {"d0": "acme", "d1": "beta"}
    assert past_caps(timeline, owners, {"acme": {"a100": 4}, "beta": {"a100": 4}}) == ["acme a100 5 > 4"]
    assert past_caps(timeline, owners, {"acme": {"a100": 5}}) == []
    # A pool override's max_replicas: d0's prefill ran 3 against an override of 2.
    assert past_caps(timeline, owners, {}, {("d0", "prefill"): 2, ("d1", "agg"): 8}) == [
        "acme/d0/prefill 3 replicas > 2"
    ]
    fcfs = Run("s01", "fcfs", 0, 1.0, attainment=0.9, weighted=0.9, over_caps=["acme a100 5 > 4"])
    (line,) = behind_fcfs([fcfs, Run("s01", "global", 0, 1.0, attainment=0.5, weighted=0.5)])
    assert line.endswith("(fcfs past the policy's limits: acme a100 5 > 4)")


def test_a_max_step_fcfs_went_past_is_named(tmp_path: Path) -> None:
    """fcfs ignores the policy's ``max_step``: a pool it cut 6 -> 2 in one round under ``max_step: 1``
    is named, one that moved a replica a round is not (seed 86 ``s07``)."""
    timeline = tmp_path / "timeline.csv"
    rows = [
        "time_s,deployment,pool,gpu_type,gpus,target",
        "0,d2,decode,h100,6,6",
        "0,d0,prefill,h100,0,0",
        "120,d2,decode,h100,2,2",
        "120,d0,prefill,h100,1,1",
        "240,d2,decode,h100,3,3",
    ]
    timeline.write_text("\n".join(rows) + "\n")
    owners = {"d0": "acme", "d2": "T.three"}
    steps = {("d2", "decode"): 1, ("d0", "prefill"): 1}
    assert past_caps(timeline, owners, {}, {}, steps) == ["T.three/d2/decode moved 4 in a round > max_step 1"]
    assert past_caps(timeline, owners, {}, {}, {("d2", "decode"): 4}) == []


def test_a_pool_minimum_fcfs_ran_below_is_named(tmp_path: Path) -> None:
    """fcfs ignores an override's ``min_replicas``: a decode pool it ran at 2 under a minimum of 3 is
    named, with the fewest replicas it targeted (seed 107 ``s04``); one that never went below is not."""
    timeline = tmp_path / "timeline.csv"
    rows = [
        "time_s,deployment,pool,gpu_type,gpus,target",
        "0,d0,decode,h200,3,3",
        "0,d0,prefill,h200,1,1",
        "60,d0,decode,h200,2,2",
        "60,d0,prefill,h200,1,1",
        "120,d0,decode,h200,3,3",
    ]
    timeline.write_text("\n".join(rows) + "\n")
    owners = {"d0": "acme"}
    floors = {("d0", "decode"): 3, ("d0", "prefill"): 1}
    assert past_caps(timeline, owners, {}, {}, {}, floors) == ["acme/d0/decode 2 replicas < min_replicas 3"]
    assert past_caps(timeline, owners, {}, {}, {}, {("d0", "decode"): 2}) == []


def test_a_serving_failure_is_fewer_requests_completed_and_fewer_served_in_time() -> None:
    def run(scenario: str, policy: str, completed: int, good: float) -> Run:
        return Run(scenario, policy, 0, 1.0, served={"endpoint chat": (completed, 100, good)})

    runs = [
        run("s01", "fcfs", 100, 95.0),
        run("s01", "global", 40, 38.0),  # completes 40% where fcfs completes all, and serves fewer in time
        run("s02", "fcfs", 100, 0.0),  # completes everything, nothing within the SLO
        run("s02", "global", 30, 14.0),  # sheds what nobody serves in time: not a failure
        run("s03", "fcfs", 100, 95.0),
        run("s03", "global", 60, 57.0),  # above the low bar
    ]
    assert [line.split(":")[0] for line in serving_failures(runs)] == ["s01 global"]


def test_pools_the_planner_says_it_holds_below_their_minimums_are_exempt_from_the_bounds_check() -> None:
    """Under ``global`` a tenant cap (or the inventory) below its pools' minimums holds a pool below
    its minimum, as the planner warns and its reasons say; any other pool below its minimum is
    still a failure of the bounds check."""
    stderr = (
        "WARNING global_planner.allocation.solver: allocation falls back to greedy: the pools' lower bounds "
        "cannot all be held: tenant acme's max_gpus h100 is 0, below the 2 its pools' lower bounds need "
        "(d0-disagg/decode: 2 x 1 (minimum 1), d2-agg/agg: 1 x 1)\n"
    )
    decisions = [
        '{"time_s": 30.0, "deployment": "d1-agg", "pool": "agg", "from": 8, "to": 1, "reason": '
        '"global (planner #2): agent bid for 8; planner: at the policy\'s max_replicas 1 (the deployment allows 8)"}',
        '{"time_s": 60.0, "deployment": "d3-agg", "pool": "agg", "from": 2, "to": 1, "reason": "global: agent bid for 1"}',
    ]
    held = held_below_minimum(stderr, decisions)
    assert held == {("d0-disagg", "decode"), ("d2-agg", "agg"), ("d1-agg", "agg")}
