"""FleetSimulation: delayed observations, no peeking at the future, routing across the deployments
of one endpoint, the decision log and the timeline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fleet_planner.planning import Decision, FleetObservation, Policy, ReplicaTarget
from fleet_sim.outputs import TIMELINE_COLUMNS, write_outputs
from fleet_sim.results import COMPLETED, SimulationResult
from fleet_sim.runner import FleetSimulation
from fleet_sim.scenario import parse_scenario
from fleet_sim.workload import build_workload

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "examples" / "profiles"
H200 = PROFILES / "llama3.1-8b_h200_vllm_tp1"
A100 = PROFILES / "llama3.1-8b_a100_vllm_tp1"

Row = tuple[float, int, int]


def write_trace(path: Path, rows: list[Row]) -> Path:
    lines = ["arrival_s,input_tokens,output_tokens"] + [f"{a!r},{i},{o}" for a, i, o in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def random_rows(
    seed: int, n: int, end_s: float, start_s: float = 0.0, inputs=(100, 3000), outputs=(20, 400)
) -> list[Row]:
    rng = np.random.default_rng(seed)
    arrivals = np.sort(rng.uniform(start_s, end_s, n))
    return [
        (float(a), int(i), int(o)) for a, i, o in zip(arrivals, rng.integers(*inputs, n), rng.integers(*outputs, n))
    ]


def pool(profile: Path = H200, gpu_type: str = "h200", **overrides) -> dict:
    config = {"profile": str(profile), "gpu_type": gpu_type, "min": 0, "max": 8, "initial": 1, "startup_s": 30}
    config.update(overrides)
    return config


def single_deployment(
    tmp_path: Path,
    rows: list[Row],
    *,
    mode: str = "agg",
    duration: float = 180,
    interval_s: float = 30,
    delay_s: float = 15,
    trace_name: str = "trace.csv",
    **pool_overrides,
):
    roles = ("prefill", "decode") if mode == "disagg" else ("agg",)
    data = {
        "name": "runner-test",
        "duration": duration,
        "seed": 1,
        "gpus": {"h200": 16},
        "planner": {"policy": "static", "interval_s": interval_s, "observation_delay_s": delay_s},
        "deployments": [
            {
                "name": "d",
                "tenant": "t",
                "endpoint": "e",
                "mode": mode,
                "sla": {"ttft_ms": 500, "itl_ms": 50},
                "trace": {"path": str(write_trace(tmp_path / trace_name, rows)), "format": "csv"},
                "pools": {role: pool(**pool_overrides) for role in roles},
            }
        ],
    }
    return parse_scenario(data, base_dir=tmp_path)


def shared_endpoint(
    tmp_path: Path,
    rows: list[Row],
    deployments: dict[str, dict],
    *,
    duration: float = 180,
    trace_name: str = "shared.csv",
    gpus: dict | None = None,
):
    """One endpoint ``e`` served by agg deployments ``{name: pool config}``."""
    data = {
        "name": "routing-test",
        "duration": duration,
        "seed": 1,
        "gpus": gpus or {"h200": 16, "a100": 16},
        "planner": {"policy": "static", "interval_s": 30, "observation_delay_s": 15},
        "endpoints": {
            "e": {
                "sla": {"ttft_ms": 500, "itl_ms": 50},
                "trace": {"path": str(write_trace(tmp_path / trace_name, rows)), "format": "csv"},
            }
        },
        "deployments": [
            {"name": name, "tenant": "t", "endpoint": "e", "mode": "agg", "pools": {"agg": config}}
            for name, config in deployments.items()
        ],
    }
    return parse_scenario(data, base_dir=tmp_path)


class Recording(Policy):
    """Records what it is shown; ``react`` turns the latest observation into targets/routing."""

    name = "recording"

    def __init__(
        self, deployments, tick_s: float, react: Callable[[float, FleetObservation | None], Decision] | None = None
    ):
        super().__init__(deployments, tick_s)
        self.react = react or (lambda now, obs: Decision())
        self.calls: list[tuple[float, FleetObservation | None]] = []
        self.decisions: list[tuple[float, Decision]] = []

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        self.calls.append((now_s, observation))
        decision = self.react(now_s, observation)
        self.decisions.append((now_s, decision))
        return decision


def run(scenario, policy_factory=Recording, **kwargs) -> tuple[SimulationResult, Policy]:
    policy = policy_factory(scenario.deployment_specs(), scenario.planner.interval_s, **kwargs)
    result = FleetSimulation(scenario, build_workload(scenario), policy).run()
    return result, policy


# ---------------------------------------------------------------------------------------------
# observations
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("delay_s", [0.0, 15.0, 45.0, 60.0])
def test_observations_arrive_after_the_delay(tmp_path: Path, delay_s: float) -> None:
    scenario = single_deployment(tmp_path, random_rows(1, 300, 180), mode="disagg", delay_s=delay_s)
    _, policy = run(scenario)
    ticks = [now for now, _ in policy.calls]
    assert ticks == [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]  # every interval, starting at 0
    for now, observation in policy.calls:
        if now < delay_s:
            assert observation is None, f"at {now} s nothing can have been scraped yet"
            continue
        assert observation is not None
        # The window that closed exactly the delay before the tick: as stale as a live scrape,
        # never staler (it used to be the window closed at the previous tick) and never newer.
        assert observation.time_s == now - delay_s
        assert {(p.deployment, p.role) for p in observation.pools} == {("d", "prefill"), ("d", "decode")}
        assert all(p.time_s == observation.time_s and p.window_s == 30 for p in observation.pools)


@pytest.mark.parametrize("delay_s", [0.0, 15.0])
def test_observation_counts_the_window_arrivals(tmp_path: Path, delay_s: float) -> None:
    rows = random_rows(2, 200, 180)
    scenario = single_deployment(tmp_path, rows, delay_s=delay_s)
    _, policy = run(scenario)
    arrivals = np.array([a for a, _, _ in rows])
    for now, observation in policy.calls[1:]:
        (agg,) = observation.pools
        end = now - delay_s  # the 30 s window closed the delay before the tick
        expected = int(((arrivals > end - 30) & (arrivals <= end)).sum())
        assert agg.admitted == expected and expected > 0
        assert agg.ready == 1 and agg.pending == 0


def _reactive(now: float, observation: FleetObservation | None) -> Decision:
    """Scale with the last delivered window's arrivals: decisions depend on the data."""
    if observation is None:
        return Decision()
    admitted = sum(p.admitted or 0 for p in observation.pools if p.role in ("prefill", "agg"))
    replicas = 1 + admitted // 40
    return Decision(
        targets=[
            ReplicaTarget(deployment=p.deployment, role=p.role, replicas=replicas, reason=f"saw {admitted}")
            for p in observation.pools
        ]
    )


def _dumped(calls, decisions, until_s: float) -> list:
    return [
        (now, obs.model_dump() if obs is not None else None, dec.model_dump())
        for (now, obs), (_, dec) in zip(calls, decisions)
        if now <= until_s
    ]


def test_decisions_do_not_depend_on_the_future(tmp_path: Path) -> None:
    change_s = 90.0
    calm = random_rows(3, 400, 240)
    # Same requests before change_s; after it, three times the traffic with much longer answers.
    busy = [r for r in calm if r[0] < change_s] + random_rows(4, 1200, 240, start_s=change_s, outputs=(500, 1500))
    results = []
    for name, rows in (("calm.csv", calm), ("busy.csv", busy)):
        scenario = single_deployment(tmp_path, rows, mode="disagg", duration=240, trace_name=name)
        _, policy = run(scenario, react=_reactive)
        results.append(policy)
    a, b = results
    assert _dumped(a.calls, a.decisions, change_s) == _dumped(b.calls, b.decisions, change_s)
    # The test can see a difference: once the later traffic has been observed, decisions diverge.
    assert _dumped(a.calls, a.decisions, 240) != _dumped(b.calls, b.decisions, 240)


def test_routing_does_not_depend_on_the_future(tmp_path: Path) -> None:
    change_s = 90.0
    calm = random_rows(5, 3000, 180)
    busy = [r if r[0] < change_s else (r[0], 8000, 2000) for r in calm]
    deployments = {"fast": pool(H200, "h200", initial=2), "slow": pool(A100, "a100", initial=2)}
    policies = []
    for name, rows in (("calm.csv", calm), ("busy.csv", busy)):
        _, policy = run(shared_endpoint(tmp_path, rows, deployments, trace_name=name))
        policies.append(policy)
    a, b = policies
    assert _dumped(a.calls, a.decisions, change_s) == _dumped(b.calls, b.decisions, change_s)


# ---------------------------------------------------------------------------------------------
# routing between the deployments of one endpoint
# ---------------------------------------------------------------------------------------------
def test_router_splits_an_endpoint_by_capacity(tmp_path: Path) -> None:
    rows = random_rows(6, 4000, 180)  # ~22 req/s: every replica has work most of the time
    scenario = shared_endpoint(tmp_path, rows, {"big": pool(initial=3), "small": pool(initial=1)})
    result, _ = run(scenario)
    req = result.requests
    assert (req.status == COMPLETED).all()
    shares = np.bincount(req.deployment, minlength=2) / len(req.deployment)
    assert shares[0] == pytest.approx(0.75, abs=0.08)  # 3 of 4 identical replicas
    assert shares.sum() == pytest.approx(1.0)


def test_router_prefers_the_faster_gpu(tmp_path: Path) -> None:
    rows = random_rows(7, 3000, 180)
    scenario = shared_endpoint(
        tmp_path, rows, {"h200": pool(H200, "h200", initial=2), "a100": pool(A100, "a100", initial=2)}
    )
    result, _ = run(scenario)
    counts = np.bincount(result.requests.deployment, minlength=2)
    assert counts[0] > 1.5 * counts[1] > 0


def _weights(script: Callable[[float], dict]):
    return lambda now, obs: Decision(routing={"e": script(now)})


def test_policy_routing_weights_are_honoured(tmp_path: Path) -> None:
    rows = random_rows(8, 1500, 180, start_s=0.5)
    scenario = shared_endpoint(tmp_path, rows, {"a": pool(initial=2), "b": pool(initial=2)})
    result, _ = run(scenario, react=_weights(lambda now: {"a": 1.0, "b": 0.0} if now < 90 else {"a": 0.0, "b": 1.0}))
    req = result.requests
    before = req.arrival_s < 90
    assert (req.deployment[before] == 0).all()
    assert (req.deployment[~before] == 1).all()
    assert (req.status == COMPLETED).all()


def test_policy_routing_weights_set_the_split(tmp_path: Path) -> None:
    rows = random_rows(9, 4000, 180, start_s=0.5)
    scenario = shared_endpoint(tmp_path, rows, {"a": pool(initial=2), "b": pool(initial=2)})
    result, _ = run(scenario, react=_weights(lambda now: {"a": 0.8, "b": 0.2}))
    share_a = float(np.mean(result.requests.deployment == 0))
    assert share_a == pytest.approx(0.8, abs=0.08)


# ---------------------------------------------------------------------------------------------
# decisions and timeline
# ---------------------------------------------------------------------------------------------
def test_every_target_change_is_recorded(tmp_path: Path) -> None:
    script = {0.0: 2, 30.0: 2, 60.0: 0, 90.0: 9, 120.0: 3}  # 0 is below min 1, 9 above max 4

    def react(now, obs):
        return Decision(
            targets=[ReplicaTarget(deployment="d", role="agg", replicas=script[now], reason=f"step {now:g}")]
        )

    scenario = single_deployment(tmp_path, random_rows(10, 200, 150), duration=150, min=1, max=4, initial=1)
    result, _ = run(scenario, react=react)
    got = [(d.time_s, d.deployment, d.role, d.from_replicas, d.to_replicas, d.reason) for d in result.decisions]
    assert got == [
        (0.0, "d", "agg", 1, 2, "step 0"),
        # below min 1, applied as given: a planner may hold a pool below its minimum (a tenant cap
        # wins over a tenant's own minimum) and a live connector applies the grant; 30 s asked for
        # no change
        (60.0, "d", "agg", 2, 0, "step 60"),
        (90.0, "d", "agg", 0, 4, "step 90"),  # clamped to max
        (120.0, "d", "agg", 4, 3, "step 120"),
    ]
    assert result.scale_events == {"d": 4}

    summary = write_outputs(result, tmp_path / "out")
    lines = (tmp_path / "out" / "decisions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["time_s"], r["deployment"], r["pool"], r["from"], r["to"], r["reason"]) for r in records] == got
    assert all(set(r) == {"time_s", "deployment", "pool", "from", "to", "reason"} for r in records)
    assert summary["deployments"]["d"]["scale_events"] == 4


def test_timeline_has_one_row_per_interval_and_pool(tmp_path: Path) -> None:
    rows = random_rows(11, 400, 150)
    scenario = single_deployment(tmp_path, rows, mode="disagg", duration=150)
    result, _ = run(scenario)
    by_time: dict[float, list[str]] = {}
    for row in result.timeline:
        by_time.setdefault(row.time_s, []).append(row.role)
        assert row.gpus == row.ready + row.starting + row.draining  # gpus_per_replica 1
        assert row.gpu_type == "h200"
    times = sorted(by_time)
    # A row per scraped window (closing the 15 s delay before each tick) and the run's last one.
    assert times == [15.0, 45.0, 75.0, 105.0, 135.0, 150.0]
    assert all(sorted(roles) == ["decode", "prefill"] for roles in by_time.values())
    for role in ("prefill", "decode"):  # each row's GPU-seconds: together, the run's exact figure
        rows_of = [row.gpu_seconds for row in result.timeline if row.role == role]
        assert sum(rows_of) == pytest.approx(result.gpu_seconds[("d", role)], rel=1e-12)
    write_outputs(result, tmp_path / "out")
    lines = (tmp_path / "out" / "timeline.csv").read_text().splitlines()
    assert tuple(lines[0].split(",")) == TIMELINE_COLUMNS
    assert len(lines) == 1 + len(result.timeline)


def test_timeline_latencies_come_from_their_interval(tmp_path: Path) -> None:
    # Traffic only in (30, 60]: only the row at 60 (covering that window) has latencies and arrivals.
    rows = [(31.0 + i * 0.5, 500, 30) for i in range(50)]
    scenario = single_deployment(tmp_path, rows, duration=150, delay_s=0)
    result, _ = run(scenario)
    agg = {row.time_s: row for row in result.timeline}
    assert agg[60.0].arrivals == 50 and agg[60.0].ttft_p90_ms > 0 and agg[60.0].itl_p90_ms > 0
    for t in (0.0, 30.0, 90.0, 120.0):
        assert agg[t].arrivals == 0 and np.isnan(agg[t].ttft_p90_ms)


def test_timeline_accounts_for_every_arrival(tmp_path: Path) -> None:
    rows = random_rows(12, 300, 150)
    scenario = single_deployment(tmp_path, rows, duration=150)
    result, _ = run(scenario)
    assert sum(row.arrivals for row in result.timeline) == len(rows)


def test_a_policy_naming_an_unknown_pool_or_endpoint_is_an_error(tmp_path: Path) -> None:
    scenario = single_deployment(tmp_path, random_rows(13, 10, 60), duration=60)

    def bad_pool(now: float, obs: object) -> Decision:
        return Decision(targets=[ReplicaTarget(deployment="d", role="prefill", replicas=1, reason="x")])

    with pytest.raises(ValueError, match="unknown pool d/prefill"):
        run(scenario, react=bad_pool)
    bad_endpoint = lambda now, obs: Decision(routing={"elsewhere": {"d": 1.0}})  # noqa: E731
    with pytest.raises(ValueError, match="unknown endpoint elsewhere"):
        run(scenario, react=bad_endpoint)
