"""``recommend`` against a brute-force search, against the simulator, and its CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.perf.recommend import recommend
from fleet_planner_cli import main
from fleet_sim.closed_loop import run_closed_loop

PROFILES = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples/profiles").iterdir() if p.is_dir())
CASES = [(3000, 300, 500, 20), (1024, 256, 200, 10), (8000, 150, 1500, 40), (512, 1000, 100, 8)]


def _brute_force(
    models: list[PerfModel], isl: float, osl: float, ttft: float, itl: float
) -> dict[str, tuple[float, str, int | None]]:
    """Every layout, role and integer batch evaluated one by one with scalar calls."""
    best: dict[str, tuple[float, str, int | None]] = {}

    def offer(role: str, rate: float, name: str, batch: int | None) -> None:
        if role not in best or rate > best[role][0]:
            best[role] = (rate, name, batch)

    for m in models:
        name, gpus, overhead = m.profile.name, m.gpus_per_engine, m.prefill_overhead_ms
        v = m.ttft_ms(isl) - overhead
        alone = math.ceil(isl / 8192) * overhead + v
        if alone <= ttft:
            offer("prefill", 1000 / alone / gpus, name, None)
        cap = min(256, int(m.max_kv_tokens // (isl + osl)))
        for b in range(1, cap + 1):
            base = m.itl_ms(b, isl + osl / 2)
            if base <= itl:
                offer("decode", b * 1000 / (base * (osl - 1)) / gpus, name, b)
            rate = 1000 / ((osl - 1) * base / b + v)
            per_token = base + b * v / (osl - 1)
            busy = min(rate * v / 1000, 0.999)
            first = per_token / 2 + math.ceil(isl / (8192 - b)) * base + v + busy / (2 * (1 - busy)) * v
            if per_token <= itl and first <= ttft:
                offer("agg", rate / gpus, name, b)
    return best


@pytest.mark.parametrize(("isl", "osl", "ttft", "itl"), CASES)
def test_recommend_matches_brute_force(isl: float, osl: float, ttft: float, itl: float) -> None:
    models = [PerfModel(load_profile(p)) for p in PROFILES if "8b" in p.name]
    (rec,) = recommend(models, isl=isl, osl=osl, ttft_ms=ttft, itl_ms=itl)
    truth = _brute_force(models, isl, osl, ttft, itl)
    for role in ("prefill", "decode", "agg"):
        chosen = getattr(rec, role)
        if role not in truth:
            assert chosen is None
            continue
        rate, name, batch = truth[role]
        assert chosen is not None
        assert (chosen.profile, chosen.point.batch) == (name, batch)
        assert chosen.point.requests_per_s_per_gpu == pytest.approx(rate, rel=1e-9)
    if "prefill" in truth and "decode" in truth:
        pair = 1 / (1 / truth["prefill"][0] + 1 / truth["decode"][0])
        assert rec.disagg_requests_per_s_per_gpu == pytest.approx(pair)
        assert rec.mode == ("agg" if "agg" in truth and truth["agg"][0] > pair else "disagg")


def test_operating_points_hold_in_the_simulator() -> None:
    """The recommended decode and aggregated batches, run closed-loop in the simulator, meet the ITL
    target and carry the predicted request rate (within 5%)."""
    model = PerfModel(load_profile(PROFILES[3]))  # llama3.1-8b_h100_vllm_tp1
    (rec,) = recommend([model], isl=3000, osl=300, ttft_ms=500, itl_ms=20)
    assert rec.agg is not None and rec.agg.point.batch is not None
    run = run_closed_loop(
        model, concurrency=rec.agg.point.batch, isl=3000, osl=300, requests_per_client=20, warmup_requests_per_client=5
    )
    assert run.tpot_ms <= 20 * 1.02
    assert run.ttft_ms <= 500
    assert run.throughput_rps == pytest.approx(rec.agg.point.requests_per_s, rel=0.05)


def test_infeasible_sla_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    models = [PerfModel(load_profile(PROFILES[3]))]
    (rec,) = recommend(models, isl=20000, osl=100, ttft_ms=50, itl_ms=2)
    assert rec.mode == "none" and rec.prefill is None and rec.decode is None
    assert "alone takes" in rec.layouts[0].point.reason

    args = ["recommend", "--profiles", *map(str, PROFILES), "--isl", "3000", "--osl", "300", "--ttft", "500"]
    assert main([*args, "--itl", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in out} == {"meta-llama/Meta-Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-70B"}
    assert main([*args, "--itl", "20"]) == 0
    assert "recommended mode: disagg" in capsys.readouterr().out
    assert main([*args, "--itl", "-1"]) == 2
    assert "--itl: must be a positive number" in capsys.readouterr().err
    assert main([*args, "--itl", "1e308"]) == 2  # a slip, not an SLA every layout meets with inf thresholds
    assert "--itl: must be a positive number up to 1e+09" in capsys.readouterr().err
    assert (
        main(["recommend", "--profiles", "/nonexistent", "--isl", "1", "--osl", "2", "--ttft", "1", "--itl", "1"]) == 2
    )
    assert "profile folder not found" in capsys.readouterr().err
