"""The discrete-event engine, driven through FleetSimulation on tiny hand-written traces.

Every number asserted here is derived from the engine profile (``PerfModel``) or from the
scenario, not copied from a previous run: a single request alone must see exactly the profile's
TTFT (+ KV transfer) and ITL, GPU-seconds must equal replicas x held time, and no request may be
lost whatever the policy does to the replicas.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import Decision, FleetObservation, Policy, ReplicaTarget
from fleet_sim.outputs import summarize
from fleet_sim.results import COMPLETED, REJECTED, UNFINISHED, SimulationResult
from fleet_sim.runner import FleetSimulation, ProfileCache
from fleet_sim.scenario import load_scenario, parse_scenario
from fleet_sim.simulate import run_scenario
from fleet_sim.workload import build_workload

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "examples" / "profiles" / "llama3.1-8b_h200_vllm_tp1"
AZURE_DISAGG = ROOT / "examples" / "azure-disagg" / "scenario.yaml"
KV_BYTES = 131072  # engine default: Llama-3.1-8B fp16


@pytest.fixture(scope="module")
def model() -> PerfModel:
    return PerfModel(load_profile(H200))


# ---------------------------------------------------------------------------------------------
# helpers: a scenario around a hand-written trace, and a policy that follows a script
# ---------------------------------------------------------------------------------------------
Row = tuple[float, int, int]  # arrival_s, input_tokens, output_tokens


def write_trace(path: Path, rows: list[Row]) -> Path:
    lines = ["arrival_s,input_tokens,output_tokens"] + [f"{a!r},{i},{o}" for a, i, o in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pool_config(**overrides) -> dict:
    config = {"profile": str(H200), "gpu_type": "h200", "min": 0, "max": 8, "initial": 1, "startup_s": 60}
    config.update(overrides)
    return config


def make_scenario(
    tmp_path: Path,
    rows: list[Row],
    *,
    mode: str = "agg",
    duration: float = 120,
    gpus: int = 8,
    interval_s: float = 30,
    delay_s: float = 0,  # windows close at the ticks: the timeline's rows are the ticks' states
    max_input_tokens: int | None = None,
    sla: dict | None = None,
    name: str = "d",
    **pool_overrides,
):
    trace: dict = {"path": str(write_trace(tmp_path / f"{name}.csv", rows)), "format": "csv"}
    if max_input_tokens is not None:
        trace["max_input_tokens"] = max_input_tokens
    roles = ("prefill", "decode") if mode == "disagg" else ("agg",)
    data = {
        "name": "engine-test",
        "duration": duration,
        "seed": 3,
        "gpus": {"h200": gpus},
        "planner": {"policy": "static", "interval_s": interval_s, "observation_delay_s": delay_s},
        "deployments": [
            {
                "name": name,
                "tenant": "t",
                "endpoint": "e",
                "mode": mode,
                "sla": sla or {"ttft_ms": 500, "itl_ms": 50},
                "trace": trace,
                "pools": {role: pool_config(**pool_overrides) for role in roles},
            }
        ],
    }
    return parse_scenario(data, base_dir=tmp_path)


class Scripted(Policy):
    """Targets from ``script(now) -> {(deployment, role): replicas}``; an empty dict keeps them."""

    name = "scripted"

    def __init__(self, deployments, tick_s: float, script: Callable[[float], dict]):
        super().__init__(deployments, tick_s)
        self.script = script

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        targets = [
            ReplicaTarget(deployment=d, role=r, replicas=n, reason=f"script@{now_s:g}")
            for (d, r), n in self.script(now_s).items()
        ]
        return Decision(targets=targets)


def simulate(scenario, policy_script: Callable[[float], dict] | None = None) -> SimulationResult:
    workload = build_workload(scenario)
    specs = scenario.deployment_specs()
    if policy_script is None:
        initial = {(s.name, r): p.initial_replicas for s in specs for r, p in s.pools.items()}
        policy_script = lambda now: initial  # noqa: E731
    return FleetSimulation(scenario, workload, Scripted(specs, scenario.planner.interval_s, policy_script)).run()


def timeline(result: SimulationResult, role: str, deployment: str = "d") -> dict[float, object]:
    return {row.time_s: row for row in result.timeline if row.deployment == deployment and row.role == role}


def kv_transfer_ms(input_tokens: int, gbps: float = 50.0) -> float:
    return input_tokens * KV_BYTES * 8 / (gbps * 1e9) * 1000.0


def max_overlap(starts: np.ndarray, ends: np.ndarray) -> int:
    """Largest number of [start, end) intervals alive at one instant."""
    events = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    alive = peak = 0
    for _, step in events:
        alive += step
        peak = max(peak, alive)
    return peak


# ---------------------------------------------------------------------------------------------
# determinism and conservation
# ---------------------------------------------------------------------------------------------
def _azure_short(seed: int | None = None):
    overrides = {"duration": 150.0}
    if seed is not None:
        overrides["seed"] = seed
    return load_scenario(AZURE_DISAGG, overrides=overrides)


def test_same_scenario_and_seed_give_identical_requests() -> None:
    first, second = run_scenario(_azure_short()), run_scenario(_azure_short())
    assert len(first.requests.arrival_s) > 1000
    for field in (
        "endpoint",
        "deployment",
        "arrival_s",
        "input_tokens",
        "output_tokens",
        "ttft_ms",
        "itl_ms",
        "e2e_ms",
        "status",
    ):
        np.testing.assert_array_equal(getattr(first.requests, field), getattr(second.requests, field), err_msg=field)
    assert first.timeline == second.timeline
    assert first.decisions == second.decisions
    assert first.gpu_seconds == second.gpu_seconds
    # ... and the seed matters (rate_scale 4 jitters the copies with it).
    other = run_scenario(_azure_short(seed=8))
    assert not np.array_equal(other.requests.arrival_s, first.requests.arrival_s)


def test_the_chunk_cost_memo_starting_over_changes_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefill stage memoises chunk costs and clears the memo when it is full (prefix-cache
    hits make the pairs arbitrary); a memo of four entries, cleared all the time, gives the same
    requests as the default one."""
    from fleet_sim.engine import prefill

    default = run_scenario(_azure_short())
    monkeypatch.setattr(prefill, "CHUNK_COSTS_KEPT", 4)
    cleared = run_scenario(_azure_short())
    for field in ("ttft_ms", "itl_ms", "e2e_ms", "status"):
        np.testing.assert_array_equal(getattr(default.requests, field), getattr(cleared.requests, field), err_msg=field)
    assert default.gpu_seconds == cleared.gpu_seconds


def test_every_request_ends_completed_rejected_or_unfinished(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arrivals = np.sort(rng.uniform(0.5, 110, 400))
    rows = [
        (float(a), int(i), int(o)) for a, i, o in zip(arrivals, rng.integers(50, 6000, 400), rng.integers(1, 600, 400))
    ]
    rows += [(50.25, 40000, 10), (60.5, 33000, 5)]  # above max_input_tokens / the profile's max_context
    scenario = make_scenario(tmp_path, sorted(rows), mode="disagg", max_input_tokens=6000)
    # A second endpoint whose only deployment never gets a replica: all its requests stay unfinished.
    data = scenario.model_dump(by_alias=True, mode="json")
    starved = copy.deepcopy(data["deployments"][0])
    starved.update(name="starved", endpoint="e2", mode="agg", pools={"agg": pool_config(initial=0, min=0)})
    starved["trace"]["path"] = str(
        write_trace(tmp_path / "e2.csv", [(10.5, 100, 10), (20.5, 100, 10), (119.0, 100, 10)])
    )
    data["deployments"].append(starved)
    scenario = parse_scenario(data, base_dir=tmp_path)

    result = run_scenario(scenario)
    req = result.requests
    n = len(build_workload(scenario))
    assert len(req.status) == n == 405
    status = req.status
    completed, rejected, unfinished = status == COMPLETED, status == REJECTED, status == UNFINISHED
    assert (completed | rejected | unfinished).all()
    assert rejected.sum() == int((req.input_tokens > 6000).sum()) >= 2
    assert unfinished.sum() == 3  # the starved endpoint's
    # Completed requests have a full latency record, in causal order.
    assert np.isfinite(req.ttft_ms[completed]).all() and np.isfinite(req.e2e_ms[completed]).all()
    assert (req.ttft_ms[completed] >= 0).all() and (req.e2e_ms[completed] >= req.ttft_ms[completed]).all()
    multi = completed & (req.output_tokens > 1)
    assert np.isfinite(req.itl_ms[multi]).all() and (req.itl_ms[multi] > 0).all()
    assert np.isnan(req.ttft_ms[rejected]).all() and np.isnan(req.e2e_ms[rejected]).all()
    assert np.isnan(req.e2e_ms[unfinished]).all()

    fleet = summarize(result)["fleet"]
    assert fleet["requests"] == n
    assert fleet["completed"] + fleet["rejected"] + fleet["unfinished"] == n
    assert (fleet["completed"], fleet["rejected"], fleet["unfinished"]) == (
        completed.sum(),
        rejected.sum(),
        unfinished.sum(),
    )


# ---------------------------------------------------------------------------------------------
# one request alone: the profile's numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("input_tokens,output_tokens,gbps", [(1000, 100, 50.0), (6000, 300, 50.0), (3000, 50, 10.0)])
def test_lone_request_disagg_matches_profile(
    tmp_path: Path, model: PerfModel, input_tokens, output_tokens, gbps
) -> None:
    scenario = make_scenario(tmp_path, [(1.0, input_tokens, output_tokens)], mode="disagg", kv_transfer_gbps=gbps)
    req = simulate(scenario).requests
    assert req.status.tolist() == [COMPLETED]
    expected_ttft = model.ttft_ms(input_tokens) + kv_transfer_ms(input_tokens, gbps)
    assert req.ttft_ms[0] == pytest.approx(expected_ttft, rel=1e-9, abs=1e-6)
    # The engine looks ITL up at the mean context (input + output/2), bucketed to 64 tokens.
    assert req.itl_ms[0] == pytest.approx(model.itl_ms(1, input_tokens + output_tokens / 2), rel=2e-3)
    assert req.e2e_ms[0] == pytest.approx(req.ttft_ms[0] + req.itl_ms[0] * (output_tokens - 1), rel=1e-9)


def test_lone_request_agg_matches_profile(tmp_path: Path, model: PerfModel) -> None:
    req = simulate(make_scenario(tmp_path, [(2.5, 2000, 80)], mode="agg")).requests
    assert req.ttft_ms[0] == pytest.approx(model.ttft_ms(2000), rel=1e-9)  # no KV transfer in agg
    assert req.itl_ms[0] == pytest.approx(model.itl_ms(1, 2040), rel=2e-3)


def test_long_prompt_is_prefilled_in_chunks(tmp_path: Path, model: PerfModel) -> None:
    # 20,000 tokens with a 8,192-token budget: three iterations, each on an idle engine (overhead).
    scenario = make_scenario(tmp_path, [(1.0, 20000, 10)], mode="disagg", max_batch_tokens=8192)
    req = simulate(scenario).requests
    expected = model.ttft_ms(20000) + 2 * model.prefill_overhead_ms + kv_transfer_ms(20000)
    assert req.ttft_ms[0] == pytest.approx(expected, rel=1e-9)


def test_prompts_arriving_together_share_a_prefill_iteration(tmp_path: Path, model: PerfModel) -> None:
    req = simulate(make_scenario(tmp_path, [(1.0, 1000, 20), (1.0, 3000, 20)], mode="agg")).requests
    together = model.ttft_ms(1000) + model.ttft_ms(3000) - model.prefill_overhead_ms
    np.testing.assert_allclose(req.ttft_ms, [together, together], rtol=1e-9)


def test_one_token_answer_has_no_itl(tmp_path: Path, model: PerfModel) -> None:
    req = simulate(make_scenario(tmp_path, [(1.0, 500, 1)], mode="disagg")).requests
    assert req.status.tolist() == [COMPLETED]
    assert math.isnan(req.itl_ms[0])
    assert req.e2e_ms[0] == pytest.approx(req.ttft_ms[0])


# ---------------------------------------------------------------------------------------------
# batching, KV capacity, agg interference
# ---------------------------------------------------------------------------------------------
def test_decode_itl_grows_with_concurrency(tmp_path: Path, model: PerfModel) -> None:
    itl = {}
    for n in (1, 8, 32, 96):
        rows = [(1.0, 1000, 200)] * n
        req = simulate(make_scenario(tmp_path, rows, mode="disagg")).requests
        assert (req.status == COMPLETED).all()
        itl[n] = float(np.mean(req.itl_ms))
        # Never faster than one sequence alone, never slower than the whole batch together.
        assert model.itl_ms(1, 1100) * 0.99 <= itl[n] <= model.itl_ms(n, 1100) * 1.01
    assert itl[1] < itl[8] < itl[32] < itl[96]


def _small_kv(monkeypatch: pytest.MonkeyPatch, tokens: int) -> None:
    """Every pool built after this sees a profile whose KV cache holds only ``tokens`` tokens."""
    original = ProfileCache.get

    def get(self, path: str) -> PerfModel:
        shrunk = copy.copy(original(self, path))
        shrunk.max_kv_tokens = tokens
        return shrunk

    monkeypatch.setattr(ProfileCache, "get", get)


def test_full_kv_cache_makes_requests_wait_not_vanish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(1.0, 1000, 100)] * 8  # each needs 1100 KV tokens
    roomy = simulate(make_scenario(tmp_path, rows, mode="disagg")).requests
    _small_kv(monkeypatch, 2500)  # two requests fit at a time
    tight = simulate(make_scenario(tmp_path, rows, mode="disagg")).requests
    assert (roomy.status == COMPLETED).all() and (tight.status == COMPLETED).all()
    # In disagg the first token is produced when the request joins the decode batch: at most two
    # requests hold KV between their first and last token.
    first = tight.arrival_s + tight.ttft_ms / 1000
    finish = tight.arrival_s + tight.e2e_ms / 1000
    assert max_overlap(first, finish) == 2
    assert max_overlap(roomy.arrival_s + roomy.ttft_ms / 1000, roomy.arrival_s + roomy.e2e_ms / 1000) == 8
    # Waiting for KV shows up in TTFT: the last pair waits for three pairs to decode 99 tokens.
    assert tight.ttft_ms.max() > roomy.ttft_ms.max() + 3 * 99 * float(np.min(tight.itl_ms)) * 0.9
    assert tight.ttft_ms.mean() > 2 * roomy.ttft_ms.mean()


def test_request_larger_than_the_kv_cache_runs_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _small_kv(monkeypatch, 1500)
    rows = [(1.0, 3000, 50), (1.0, 500, 50), (1.0, 500, 50)]
    req = simulate(make_scenario(tmp_path, rows, mode="agg")).requests
    assert (req.status == COMPLETED).all()


def test_agg_prefill_chunks_slow_down_decode(tmp_path: Path, model: PerfModel) -> None:
    """A long answer decoding while long prompts keep arriving: in agg every iteration that carries
    a prefill chunk is a slow one; in disagg the decode pool never sees the prompts."""
    long_answer = (1.0, 1000, 4000)
    prompts = [(1.5 + 0.25 * i, 6000, 1) for i in range(60)]  # one-token answers: never join a batch
    rows = [long_answer] + prompts
    alone = model.itl_ms(1, 1000 + 4000 / 2)
    disagg = simulate(make_scenario(tmp_path, rows, mode="disagg", initial=1)).requests
    agg = simulate(make_scenario(tmp_path, rows, mode="agg", initial=1)).requests
    assert (disagg.status == COMPLETED).all() and (agg.status == COMPLETED).all()
    assert disagg.itl_ms[0] == pytest.approx(alone, rel=2e-3)  # decode-only at batch 1
    assert agg.itl_ms[0] > 1.25 * alone  # same batch of 1, but prefill mixed in
    # Each prompt's prefill (without the idle-engine overhead) lands in some decode iteration.
    prefill_ms = len(prompts) * (model.ttft_ms(6000) - model.prefill_overhead_ms)
    assert agg.itl_ms[0] == pytest.approx(alone + prefill_ms / (4000 - 1), rel=0.02)


# ---------------------------------------------------------------------------------------------
# admission limits
# ---------------------------------------------------------------------------------------------
def test_prompts_above_max_input_tokens_are_rejected_and_counted(tmp_path: Path) -> None:
    rows = [(1.0, 100, 10), (2.0, 4000, 10), (3.0, 4001, 10), (4.0, 20000, 10)]
    result = simulate(make_scenario(tmp_path, rows, mode="disagg", max_input_tokens=4000))
    assert result.requests.status.tolist() == [COMPLETED, COMPLETED, REJECTED, REJECTED]
    fleet = summarize(result)["fleet"]
    assert (fleet["rejected"], fleet["completed"], fleet["requests"]) == (2, 2, 4)
    assert summarize(result)["endpoints"]["e"]["rejected"] == 2


def test_prompts_above_the_profile_max_context_are_rejected(tmp_path: Path, model: PerfModel) -> None:
    assert model.max_context == 32768
    rows = [(1.0, 32768, 10), (2.0, 32769, 10)]
    result = simulate(make_scenario(tmp_path, rows, mode="agg"))  # no max_input_tokens in the scenario
    assert result.requests.status.tolist() == [COMPLETED, REJECTED]
    assert summarize(result)["fleet"]["rejected"] == 1


def test_rejections_are_charged_to_the_deployment(tmp_path: Path) -> None:
    rows = [(1.0 + i, 20000 if i % 4 == 0 else 200, 10) for i in range(40)]
    summary = summarize(simulate(make_scenario(tmp_path, rows, mode="agg", max_input_tokens=8000)))
    deployment, endpoint = summary["deployments"]["d"], summary["endpoints"]["e"]
    assert summary["fleet"]["rejected"] == 10
    assert deployment["requests"] == 40
    assert deployment["rejected"] == 10
    assert deployment["slo_attainment"] == endpoint["slo_attainment"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------
# scaling: cold start, drain, inventory, scale to zero
# ---------------------------------------------------------------------------------------------
def test_cold_start_replicas_are_ready_after_startup_and_paid_from_the_decision(tmp_path: Path) -> None:
    rows = [(float(t), 500, 50) for t in range(1, 150, 5)]
    scenario = make_scenario(tmp_path, rows, mode="agg", duration=150, startup_s=45, initial=1)
    result = simulate(scenario, lambda now: {("d", "agg"): 3 if now >= 30 else 1})
    rows_by_time = timeline(result, "agg")
    assert [rows_by_time[t].ready for t in (0.0, 30.0, 60.0, 90.0, 120.0)] == [1, 1, 1, 3, 3]
    assert rows_by_time[60.0].starting == 2  # decided at 30, ready at 30 + 45 = 75
    assert rows_by_time[60.0].gpus == 3  # starting replicas hold their GPUs
    assert rows_by_time[90.0].starting == 0
    # GPU-seconds: one replica for the whole run, two more from the decision at t=30.
    assert result.gpu_seconds[("d", "agg")] == pytest.approx(1 * 150 + 2 * (150 - 30))
    assert result.max_gpus_in_use == {"h200": 3}
    assert (result.requests.status == COMPLETED).all()


def test_scale_down_drains_in_flight_requests(tmp_path: Path) -> None:
    # Two long answers start at t=25, one per replica; at t=30 the pool shrinks to one replica.
    rows = [(25.0, 500, 8000), (25.0, 500, 8000)] + [(float(t) + 0.5, 200, 20) for t in range(35, 100, 5)]
    scenario = make_scenario(tmp_path, rows, mode="agg", duration=150, initial=2)
    result = simulate(scenario, lambda now: {("d", "agg"): 2 if now < 30 else 1})
    req = result.requests
    assert (req.status == COMPLETED).all()  # nothing is cut off by the scale-down
    np.testing.assert_allclose(req.itl_ms[0], req.itl_ms[1], rtol=0.05)  # drained one was not slowed
    finish0 = req.arrival_s[0] + req.e2e_ms[0] / 1000
    assert 60 < finish0 < 90
    rows_by_time = timeline(result, "agg")
    assert (rows_by_time[60.0].ready, rows_by_time[60.0].draining, rows_by_time[60.0].gpus) == (1, 1, 2)
    assert (rows_by_time[90.0].ready, rows_by_time[90.0].draining, rows_by_time[90.0].gpus) == (1, 0, 1)
    # The draining replica's GPU counts until its last request finished.
    assert result.gpu_seconds[("d", "agg")] == pytest.approx(150 + finish0, rel=1e-9)


def test_draining_replica_gets_no_new_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet_sim import engine
    from fleet_sim.engine.admission import KvAdmission

    routed_to = []
    original = KvAdmission.admit_or_wait

    def spy(self, replica, request, now):
        routed_to.append((now, replica.state))
        return original(self, replica, request, now)

    monkeypatch.setattr(KvAdmission, "admit_or_wait", spy)
    rows = [(25.0, 500, 8000), (25.0, 500, 8000)] + [(float(t) + 0.5, 200, 20) for t in range(30, 100, 2)]
    scenario = make_scenario(tmp_path, rows, mode="agg", duration=120, initial=2)
    result = simulate(scenario, lambda now: {("d", "agg"): 2 if now < 30 else 1})
    assert (result.requests.status == COMPLETED).all()
    assert len(routed_to) == len(rows)
    assert all(state == engine.READY for _, state in routed_to)


def test_stopping_a_starting_replica_frees_its_gpus_at_once(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path, [(1.0, 100, 10)], mode="agg", duration=150, initial=1, startup_s=60)
    result = simulate(scenario, lambda now: {("d", "agg"): 3 if now < 30 else 1})
    assert result.gpu_seconds[("d", "agg")] == pytest.approx(150 + 2 * 30)
    assert all(row.ready <= 1 and row.draining == 0 for row in result.timeline)


def test_targets_above_inventory_stay_pending(tmp_path: Path) -> None:
    rows = [(float(t) + 0.5, 500, 50) for t in range(0, 120, 3)]
    scenario = make_scenario(tmp_path, rows, mode="agg", duration=120, gpus=2, initial=1, startup_s=10)
    result = simulate(scenario, lambda now: {("d", "agg"): 5})
    rows_by_time = timeline(result, "agg")
    assert rows_by_time[0.0].pending == 0  # recorded before the first decision
    for t in (30.0, 60.0, 90.0):
        assert rows_by_time[t].pending == 3
        assert rows_by_time[t].ready == 2
        assert rows_by_time[t].gpus == 2
    assert result.max_gpus_in_use["h200"] <= 2
    assert result.budget_violations == 4  # ticks at 0, 30, 60, 90 all asked for 5 GPUs
    assert summarize(result)["fleet"]["budget_violations"] == 4


def test_pending_replicas_start_when_gpus_free_up(tmp_path: Path) -> None:
    rows = [(float(t) + 0.5, 500, 50) for t in range(0, 150, 3)]
    scenario = make_scenario(tmp_path, rows, mode="disagg", duration=150, gpus=4, initial=1, startup_s=20)

    def script(now: float) -> dict:
        if now < 60:
            return {("d", "prefill"): 3, ("d", "decode"): 3}  # 6 GPUs wanted, 4 owned
        return {("d", "prefill"): 1, ("d", "decode"): 3}

    result = simulate(scenario, script)
    prefill, decode = timeline(result, "prefill"), timeline(result, "decode")
    # Both wanted at the same moment: pool order fills first.
    assert (prefill[30.0].ready, decode[30.0].ready, decode[30.0].pending) == (3, 1, 2)
    assert decode[90.0].pending == 0 and decode[90.0].ready == 3 and prefill[90.0].ready == 1
    assert result.max_gpus_in_use["h200"] == 4
    assert result.budget_violations == 2  # ticks 0 and 30
    assert (result.requests.status == COMPLETED).all()


def test_the_replica_waiting_longest_starts_first_whatever_the_pool_order(tmp_path: Path) -> None:
    """Pending replicas start in the order they were wanted (the Kubernetes scheduler's queue with one
    priority class), not in the order the pools were declared: a later deployment's replica that has
    waited since 30 s takes the first GPU freed before an earlier deployment's wanted at 60 s."""
    rows = [(float(t) + 0.5, 200, 20) for t in range(0, 150, 3)]
    scenario = make_scenario(tmp_path, rows, mode="agg", duration=150, gpus=3, initial=1, startup_s=10)
    data = scenario.model_dump(by_alias=True, mode="json")
    for name in ("late", "early"):
        other = copy.deepcopy(data["deployments"][0])
        other.update(name=name, endpoint=f"e-{name}")
        data["deployments"].append(other)
    scenario = parse_scenario(data, base_dir=tmp_path)

    def script(now: float) -> dict:
        wanted = {("d", "agg"): 1, ("late", "agg"): 1, ("early", "agg"): 1}  # 3 GPUs, all owned
        if now >= 30:
            wanted[("early", "agg")] = 2  # waits from 30 s
        if now >= 60:
            wanted[("late", "agg")] = 2  # waits from 60 s, declared before "early"
        if now >= 90:
            wanted[("d", "agg")] = 0  # frees one GPU
        return wanted

    result = simulate(scenario, script)
    late, early = timeline(result, "agg", "late"), timeline(result, "agg", "early")
    assert (early[90.0].pending, late[90.0].pending) == (1, 1)  # recorded before the tick's decision
    assert (early[120.0].pending, early[120.0].ready + early[120.0].starting) == (0, 2)
    assert (late[120.0].pending, late[120.0].ready) == (1, 1)
    assert result.max_gpus_in_use["h200"] == 3


def test_no_violation_within_inventory(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path, [(1.0, 100, 10)], mode="agg", duration=60, gpus=2)
    result = simulate(scenario, lambda now: {("d", "agg"): 2})
    assert result.budget_violations == 0
    assert all(row.pending == 0 for row in result.timeline)


def test_scale_to_zero_then_up_serves_queued_requests(tmp_path: Path) -> None:
    rows = [(float(t) + 0.5, 800, 40) for t in range(5, 60, 5)]
    scenario = make_scenario(tmp_path, rows, mode="agg", duration=150, initial=1, startup_s=30)
    result = simulate(scenario, lambda now: {("d", "agg"): 0 if now < 60 else 1})
    req = result.requests
    assert (req.status == COMPLETED).all()
    # Nobody could be served before the replica asked for at t=60 was ready at t=90.
    first_token_s = req.arrival_s + req.ttft_ms / 1000
    assert (first_token_s >= 90 - 1e-9).all()
    assert timeline(result, "agg")[60.0].ready == 0
    assert result.gpu_seconds[("d", "agg")] == pytest.approx(150 - 60)


def test_gpu_seconds_of_a_static_fleet(tmp_path: Path) -> None:
    rows = [(float(t) + 0.5, 500, 50) for t in range(0, 90, 2)]
    scenario = make_scenario(tmp_path, rows, mode="disagg", duration=90, initial=2, gpus_per_replica=2)
    result = simulate(scenario)
    assert result.gpu_seconds == {
        ("d", "prefill"): pytest.approx(2 * 2 * 90),
        ("d", "decode"): pytest.approx(2 * 2 * 90),
    }
    assert summarize(result)["fleet"]["gpu_hours"] == pytest.approx(8 * 90 / 3600)
