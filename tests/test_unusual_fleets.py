"""Fleet shapes no example has, found by a sweep of random valid scenarios
(``benchmarks/sweep_scenarios.py``): each once served almost nothing without an error."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fleet_planner_cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROFILE = str(EXAMPLES / "profiles/llama3.1-8b_h100_vllm_tp1")
RATES = str(EXAMPLES / "traces/servegen_m-large_rate_10min.csv")
LENGTHS = str(EXAMPLES / "traces/azure2023_conv.csv")


def _simulate(tmp_path: Path, scenario: dict, tenants: dict, policy: str) -> dict:
    (tmp_path / "tenants.yaml").write_text(yaml.safe_dump(tenants))
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = tmp_path / policy
    assert main(["simulate", str(path), "--out", str(out), "--policy", policy, "--no-progress"]) == 0
    return json.loads((out / "summary.json").read_text())


def _header(name: str, duration: str, gpus: dict[str, int], interval_s: int) -> dict:
    """A scenario's fields besides its deployments and endpoints (the policy file beside it)."""
    planner = {"policy": "global", "interval_s": interval_s, "policy_file": "tenants.yaml"}
    return {"name": name, "duration": duration, "seed": 1, "gpus": gpus, "planner": planner}


def _trace(peak_rps: float, start_s: int) -> dict:
    return {
        "synth": {"rate": RATES, "peak_rps": peak_rps, "start_s": start_s, "lengths": LENGTHS, "arrival": "poisson"}
    }


def _h100_pair(sla: dict, peak_rps: float, prefill: tuple[int, int, int], decode: tuple[int, int, int]) -> dict:
    """One disaggregated deployment on H100s; each pool's (min, max, initial), 60 s start-ups."""

    def pool(bounds: tuple[int, int, int]) -> dict:
        low, high, initial = bounds
        return {"profile": PROFILE, "gpu_type": "h100", "min": low, "max": high, "initial": initial, "startup_s": 60}

    return {
        "name": "d0",
        "tenant": "acme",
        "endpoint": "chat",
        "mode": "disagg",
        "sla": sla,
        "trace": _trace(peak_rps, 0),
        "pools": {"prefill": pool(prefill), "decode": pool(decode)},
    }


def test_a_prefill_pool_at_zero_under_more_load_than_its_maximum_serves_goes_to_its_maximum(tmp_path: Path) -> None:
    """150 req/s against a prefill pool that starts at 0 and may run 2 replicas: no count meets
    the SLA, so every count's attainment is 0, and the cheapest pair was none at all (every
    request queued for the whole run). The pool now runs its maximum and serves what it can."""
    scenario = {
        **_header("overload-from-zero", "5m", {"h100": 4}, 30),
        "deployments": [_h100_pair({"ttft_ms": 1000, "itl_ms": 60}, 150.0, prefill=(0, 2, 0), decode=(1, 2, 1))],
    }
    summary = _simulate(tmp_path, scenario, {"tenants": {"acme": {"priority": 1}}}, "local")
    deployment = summary["deployments"]["d0"]
    assert deployment["completed"] > 0.5 * deployment["requests"]  # none did: all queued, never served


def test_an_endpoint_whose_other_deployment_has_no_gpus_is_served_whole_by_the_one_that_does(tmp_path: Path) -> None:
    """About 1.7 req/s for an endpoint served from an H100 deployment (no H100 in the fleet) and
    an H200 one whose replica carries about 26 req/s: `global` shed half the endpoint's traffic,
    crediting the H200 replica with its own planned 0.8 req/s only."""
    pools = {"min": 0, "max": 4, "startup_s": 60}
    scenario = {
        **_header("one-side-dark", "10m", {"h100": 0, "h200": 4}, 60),
        "endpoints": {"chat": {"sla": {"ttft_ms": 1000, "itl_ms": 60}, "trace": _trace(1.76, 1060040)}},
        "deployments": [
            {
                "name": "dark",
                "tenant": "acme",
                "endpoint": "chat",
                "mode": "agg",
                "pools": {"agg": {"profile": PROFILE, "gpu_type": "h100", "initial": 0, **pools}},
            },
            {
                "name": "lit",
                "tenant": "beta",
                "endpoint": "chat",
                "mode": "agg",
                "pools": {
                    "agg": {
                        "profile": str(EXAMPLES / "profiles/llama3.1-8b_h200_vllm_tp1"),
                        "gpu_type": "h200",
                        "initial": 2,
                        **{**pools, "min": 1},
                    }
                },
            },
        ],
    }
    tenants = {
        "fleet": {"gpus": {"h100": 0, "h200": 4}},
        "tenants": {"acme": {"priority": 1}, "beta": {"priority": 10}},
    }
    summary = _simulate(tmp_path, scenario, tenants, "global")
    assert summary["fleet"]["slo_attainment"] >= 0.99


def test_a_pool_at_zero_with_requests_waiting_is_granted_under_global_when_local_would_take_it(tmp_path: Path) -> None:
    """A prefill pool that starts at 0 under traffic asks for a replica at its first tick (requests
    wait with none to serve them), before its model has sized anything. Its bid had no curve, so the
    planner held it at 0 for a tick more than the agent alone would have: with free GPUs and no
    contention `global` must give what `local` takes, at the same tick."""
    scenario = {
        **_header("from-zero-under-global", "4m", {"h100": 4}, 30),
        "deployments": [
            {
                "name": "d0",
                "tenant": "acme",
                "endpoint": "chat",
                "mode": "disagg",
                "sla": {"ttft_ms": 1000, "itl_ms": 100},
                "trace": {"path": LENGTHS, "format": "azure", "rate_scale": 2.0},
                "pools": {
                    "prefill": {"profile": PROFILE, "gpu_type": "h100", "min": 0, "max": 1, "initial": 0},
                    "decode": {"profile": PROFILE, "gpu_type": "h100", "min": 1, "max": 2, "initial": 2},
                },
            }
        ],
    }
    tenants = {"fleet": {"gpus": {"h100": 4}}, "tenants": {"acme": {"priority": 1}}}
    first_up = {}
    for policy in ("local", "global"):
        _simulate(tmp_path, scenario, tenants, policy)
        rows = [json.loads(line) for line in (tmp_path / policy / "decisions.jsonl").read_text().splitlines()]
        first_up[policy] = min(r["time_s"] for r in rows if r["pool"] == "prefill" and r["to"] > r["from"])
    assert first_up["global"] == first_up["local"], first_up


def test_a_pool_idle_before_its_first_sizing_releases_its_gpus_under_global(tmp_path: Path) -> None:
    """A pool holding the fleet's only H100 whose endpoint has no traffic yet never had a curve, so
    its bid said "hold" and `global` kept the GPU there while another pool with traffic asked for it
    the whole run (a sweep fleet: that pool served nothing). Its agent's idle release now reaches
    the planner, as it would act alone."""
    agg = {"profile": PROFILE, "gpu_type": "h100", "min": 0, "max": 1, "startup_s": 30}
    scenario = {
        **_header("idle-holder", "10m", {"h100": 1}, 30),
        "endpoints": {
            "late": {"sla": {"ttft_ms": 1000, "itl_ms": 100}, "trace": {**_trace(1.0, 0), "offset_s": 540}},
            "busy": {"sla": {"ttft_ms": 1000, "itl_ms": 100}, "trace": _trace(1.0, 0)},
        },
        "deployments": [
            {
                "name": "holder",
                "tenant": "acme",
                "endpoint": "late",
                "mode": "agg",
                "pools": {"agg": {**agg, "initial": 1}},
            },
            {
                "name": "asker",
                "tenant": "acme",
                "endpoint": "busy",
                "mode": "agg",
                "pools": {"agg": {**agg, "initial": 0}},
            },
        ],
    }
    tenants = {"fleet": {"gpus": {"h100": 1}}, "tenants": {"acme": {"priority": 1}}}
    summary = _simulate(tmp_path, scenario, tenants, "global")
    assert summary["deployments"]["asker"]["completed"] > 0.5 * summary["deployments"]["asker"]["requests"]


def test_requests_waiting_for_capacity_queue_where_a_whole_deployment_is_coming(tmp_path: Path) -> None:
    """An endpoint served by a pair whose prefill pool may run no replica (four decode replicas
    running) and by an aggregated deployment starting at 0: while nothing was ready anywhere the
    gateway queued requests at the pair, counting its decode replicas as promised capacity, and
    every one of them timed out there (random fleet seed 45 ``s22``: 136 requests under every
    policy). Now they wait for the aggregated deployment's replicas and are served."""
    h200 = str(EXAMPLES / "profiles/llama3.1-8b_h200_vllm_tp1")
    scenario = {
        **_header("half-a-pair", "10m", {"h200": 8}, 30),
        "endpoints": {"chat": {"sla": {"ttft_ms": 10000, "itl_ms": 60}, "trace": _trace(2.0, 1060040)}},
        "deployments": [
            {
                "name": "pair",
                "tenant": "acme",
                "endpoint": "chat",
                "mode": "disagg",
                "pools": {
                    "prefill": {"profile": h200, "gpu_type": "h200", "min": 0, "max": 0, "initial": 0},
                    "decode": {"profile": h200, "gpu_type": "h200", "min": 0, "max": 4, "initial": 4},
                },
            },
            {
                "name": "whole",
                "tenant": "acme",
                "endpoint": "chat",
                "mode": "agg",
                "pools": {
                    "agg": {"profile": h200, "gpu_type": "h200", "min": 0, "max": 4, "initial": 0, "startup_s": 60}
                },
            },
        ],
    }
    tenants = {"fleet": {"gpus": {"h200": 8}}, "tenants": {"acme": {"priority": 1}}}
    summary = _simulate(tmp_path, scenario, tenants, "local")
    assert summary["deployments"]["pair"]["requests"] == 0
    assert summary["deployments"]["whole"]["completed"] == summary["deployments"]["whole"]["requests"] > 0


def test_a_pair_started_with_every_gpu_on_one_side_serves_behind_the_first_come_gatekeeper(tmp_path: Path) -> None:
    """A prefill pool starts on all four H100s with its decode partner at 0. The anchor's
    gatekeeper (``fcfs``) refuses the decode pool's ask instead of queueing it, so nothing looked
    pending and no request completed in the run (sweep seed 75 ``s08``). The agent reads the
    refusal as a wait and gives prefill GPUs back until the decode pool runs."""
    scenario = {
        **_header("all-gpus-on-prefill", "6m", {"h100": 4}, 30),
        "deployments": [_h100_pair({"ttft_ms": 3000, "itl_ms": 60}, 8.0, prefill=(1, 4, 4), decode=(0, 4, 0))],
    }
    summary = _simulate(tmp_path, scenario, {"tenants": {"acme": {"priority": 1}}}, "fcfs")
    deployment = summary["deployments"]["d0"]
    assert deployment["completed"] > 0.5 * deployment["requests"], deployment
    rows = [json.loads(line) for line in (tmp_path / "fcfs" / "decisions.jsonl").read_text().splitlines()]
    assert any("its ask refused" in row["reason"] for row in rows if row["pool"] == "prefill")


def test_a_pool_at_zero_asking_for_more_than_the_fleet_has_is_served_behind_the_first_come_gatekeeper(
    tmp_path: Path,
) -> None:
    """Two A100s and an aggregated pool that starts at 0 and may run 4: its agent asked for 3, the
    anchor's all-or-nothing gatekeeper refused it every tick, and no request of 4,494 completed in
    15 minutes under ``fcfs`` (100% under ``local`` and ``global``). After a refusal outright the
    agent asks for half the step: 3 refused, 1 granted, 2 granted."""
    pool = {
        "profile": str(EXAMPLES / "profiles/llama3.1-8b_a100_vllm_tp1"),
        "gpu_type": "a100",
        "min": 0,
        "max": 4,
        "initial": 0,
        "startup_s": 226,
    }
    trace = {
        "synth": {"rate": RATES, "peak_rps": 5.56, "start_s": 477610, "lengths": LENGTHS, "arrival": "auto"},
        "offset_s": 30,
    }
    scenario = {
        **_header("a-pool-asking-past-the-fleet", "900s", {"a100": 2}, 30),
        "seed": 603,  # the sweep's traffic: its agent's first ask is 3
        "endpoints": {"chat": {"sla": {"ttft_ms": 3000, "itl_ms": 20}, "trace": trace}},
        "deployments": [{"name": "d0", "tenant": "acme", "endpoint": "chat", "mode": "agg", "pools": {"agg": pool}}],
    }
    scenario["planner"]["observation_delay_s"] = 0
    tenants = {"fleet": {"gpus": {"a100": 2}}, "tenants": {"acme": {"priority": 1}}}
    fleet = _simulate(tmp_path, scenario, tenants, "fcfs")["fleet"]
    assert fleet["completed"] > 0.9 * fleet["requests"], fleet
