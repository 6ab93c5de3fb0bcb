"""KV prefix-cache reuse: the simulator reuses cached prompt prefixes (Mooncake ``hash_ids``), routes
KV-aware, reports the hit rate, and the local agent sizes prefill for what is really computed.
(The public anchor ignored prefix-cache reuse.)"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fleet_sim.engine as engine
from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA, DeploymentSpec, Distribution, PoolObservation, PoolSpec
from fleet_sim.policies import make_policy
from fleet_sim.runner import FleetSimulation
from fleet_sim.scenario import parse_scenario
from fleet_sim.workload import build_workload
from local_agent.agent import AgentOptions, LocalAgent
from local_agent.models import AgentInput

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "examples" / "profiles" / "llama3.1-8b_h200_vllm_tp1"
BLOCK = engine.PREFIX_BLOCK_TOKENS


def write_trace(path: Path, *, hashes: bool, groups: int = 8, requests: int = 500, duration_s: float = 250.0) -> Path:
    """Requests sharing one of ``groups`` long system prompts (14 blocks) plus 2 own blocks."""
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0.0, duration_s, requests))
    next_id = groups * 100
    with path.open("w") as out:
        for t in times:
            group = int(rng.integers(groups))
            record = {"timestamp": int(t * 1000), "input_length": 16 * BLOCK - 100, "output_length": 40}
            if hashes:
                record["hash_ids"] = [group * 100 + b for b in range(14)] + [next_id, next_id + 1]
                next_id += 2
            out.write(json.dumps(record) + "\n")
    return path


def scenario(trace: Path, *, mode: str = "disagg", cache: bool = True, entry_replicas: int = 3):
    pool = {
        "profile": str(PROFILE),
        "gpu_type": "h200",
        "min": entry_replicas,
        "max": entry_replicas,
        "prefix_cache": cache,
    }
    pools = (
        {"prefill": pool, "decode": {"profile": str(PROFILE), "gpu_type": "h200", "min": 2, "max": 2}}
        if mode == "disagg"
        else {"agg": pool}
    )
    data = {
        "name": "prefix",
        "duration": 300,
        "seed": 1,
        "gpus": {"h200": 8},
        "planner": {"policy": "static", "interval_s": 30},
        "endpoints": {"chat": {"sla": {"ttft_ms": 1000, "itl_ms": 50}, "trace": {"path": str(trace)}}},
        "deployments": [{"name": "d", "tenant": "t", "endpoint": "chat", "mode": mode, "pools": pools}],
    }
    return parse_scenario(data, base_dir=trace.parent)


class Recorded(FleetSimulation):
    """Keeps every observation and which prefill replica each request was sent to."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.observations = []
        self.placed: dict[int, int] = {}
        for pool in self.pools.values():
            original = pool.prefill.enqueue

            def record(replica, request, now, original=original, pool=pool):
                self.placed[request] = pool.replicas.index(replica)
                original(replica, request, now)

            pool.prefill.enqueue = record

    def _observe(self, now):
        observation = super()._observe(now)
        self.observations.append(observation)
        return observation


def run(scn):
    workload = build_workload(scn)
    sim = Recorded(scn, workload, make_policy(scn, workload))
    result = sim.run()
    entry = [p for o in sim.observations for p in o.pools if p.role != "decode"]
    return sim, result, entry


@pytest.fixture
def traces(tmp_path: Path) -> tuple[Path, Path]:
    return write_trace(tmp_path / "shared.jsonl", hashes=True), write_trace(tmp_path / "plain.jsonl", hashes=False)


@pytest.mark.parametrize("mode", ["disagg", "agg"])
def test_shared_prefixes_cut_ttft_and_prefill_work(traces, mode: str) -> None:
    shared, plain = traces
    _, with_cache, entry = run(scenario(shared, mode=mode))
    _, without, entry_plain = run(scenario(plain, mode=mode))
    assert with_cache.requests.input_tokens.tolist() == without.requests.input_tokens.tolist()
    hits = [p.prefix_hit_rate for p in entry if p.prefix_hit_rate is not None]
    assert hits and np.mean(hits) > 0.5  # 14 of 16 blocks are shared by many requests
    assert all(p.prefix_hit_rate in (None, 0.0) for p in entry_plain)
    ttft_cached = np.nanmean(with_cache.requests.ttft_ms)
    ttft_plain = np.nanmean(without.requests.ttft_ms)
    assert ttft_cached < 0.7 * ttft_plain
    if mode == "disagg":  # prefill pools do prompt work only: computed tokens and busy time drop
        work = lambda ps: sum(p.scheduled_tokens_per_s * p.window_s for p in ps)  # noqa: E731
        busy = lambda ps: sum((p.iteration_ms or 0.0) for p in ps)  # noqa: E731
        assert work(entry) < 0.5 * work(entry_plain)
        assert busy(entry) < busy(entry_plain)


@pytest.mark.parametrize("mode", ["disagg", "agg"])
def test_requests_without_hash_ids_are_unaffected(traces, mode: str) -> None:
    shared, plain = traces
    results = [
        run(scenario(plain, mode=mode, cache=True))[1],
        run(scenario(plain, mode=mode, cache=False))[1],
        run(scenario(shared, mode=mode, cache=False))[1],  # the feature off ignores hash_ids
    ]
    reference = results[0]
    for other in results[1:]:
        np.testing.assert_array_equal(reference.requests.ttft_ms, other.requests.ttft_ms)
        np.testing.assert_array_equal(reference.requests.e2e_ms, other.requests.e2e_ms)
        assert reference.gpu_seconds == other.gpu_seconds
    build = build_workload(scenario(plain, mode=mode))
    assert build.hash_ids is None


def test_kv_aware_routing_keeps_prefixes_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """150 system prompts (2100 blocks) do not fit one replica's cache (1733 blocks) but fit three:
    the KV-aware router partitions them, least-load routing smears them over every replica."""
    shared = write_trace(tmp_path / "many.jsonl", hashes=True, groups=150, requests=1500)

    def stickiness(sim) -> float:
        """Share of requests placed on their prefix group's most used replica."""
        groups: dict[int, Counter] = {}
        hashes = sim.sim.requests.hashes
        for request, replica in sim.placed.items():
            groups.setdefault(hashes[request][0], Counter())[replica] += 1
        return sum(c.most_common(1)[0][1] for c in groups.values()) / len(sim.placed)

    kv_sim, kv_result, kv_entry = run(scenario(shared))
    monkeypatch.setattr(engine.PrefixCache, "peek", lambda self, hashes, limit: 0)  # least-load only
    ll_sim, ll_result, ll_entry = run(scenario(shared))
    assert stickiness(kv_sim) > stickiness(ll_sim) + 0.1
    mean_hit = lambda ps: np.mean([p.prefix_hit_rate for p in ps if p.prefix_hit_rate is not None])  # noqa: E731
    assert mean_hit(kv_entry) > mean_hit(ll_entry) + 0.1
    assert np.nanmean(kv_result.requests.ttft_ms) < np.nanmean(ll_result.requests.ttft_ms)


def _spec(mode: str) -> DeploymentSpec:
    roles = ["agg"] if mode == "agg" else ["prefill", "decode"]
    return DeploymentSpec(
        name="d",
        tenant="t",
        endpoint="e",
        mode=mode,
        sla=SLA(ttft_ms=1000, itl_ms=50),
        pools={
            r: PoolSpec(
                deployment="d",
                role=r,
                profile_path=str(PROFILE),
                gpu_type="h200",
                gpus_per_replica=1,
                min_replicas=0,
                max_replicas=32,
                initial_replicas=1,
                startup_s=60,
            )
            for r in roles
        },
    )


@pytest.mark.parametrize("mode", ["disagg", "agg"])
def test_agent_sizes_prefill_for_prefix_reuse(mode: str) -> None:
    """Weakness of the anchor: prefix-cache reuse ignored. At the same load, a high observed hit
    rate needs fewer prefill (agg) replicas; decode keeps sizing for the full context."""
    model = PerfModel(load_profile(str(PROFILE)))
    spec = _spec(mode)
    inputs = Distribution(count=300, mean=12000, p50=9000, p90=24000, p99=40000)
    outputs = Distribution(count=300, mean=150, p50=80, p90=400, p99=900)

    def sized(hit: float | None) -> dict[str, int]:
        agent = LocalAgent(spec, dict.fromkeys(spec.pools, model), AgentOptions(predictor="constant"), 30.0)
        observations = [
            PoolObservation(
                deployment="d",
                role=role,
                time_s=0.0,
                window_s=30.0,
                ready=1,
                starting=0,
                draining=0,
                pending=0,
                admitted=150,
                input_tokens=inputs,
                output_tokens=outputs,
                prefix_hit_rate=hit if role != "decode" else None,
            )
            for role in spec.pools
        ]
        agent.step(AgentInput(now_s=0.0, observations=observations))
        return {role: state.predictive for role, state in agent.pools.items()}

    ignored, zero, high = sized(None), sized(0.0), sized(0.7)
    assert ignored == zero
    entry = "agg" if mode == "agg" else "prefill"
    assert high[entry] < zero[entry]
    if mode == "disagg":
        assert high["decode"] == zero["decode"]
