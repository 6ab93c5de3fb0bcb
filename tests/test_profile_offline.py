"""``profile offline``: the sweep and KV arithmetic with a stand-in estimator, the message without the
extra, and (when AIConfigurator is installed) agreement with the vendored AIConfigurator profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.profiler import offline
from fleet_planner_cli import main

VENDORED = Path(__file__).resolve().parents[1] / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
GIB = 1 << 30


class _Summary:
    def get_memory(self) -> dict[str, float]:
        return {"total": 20.0, "kvcache": 2.0}  # 18 GiB of weights and runtime per GPU

    def get_kv_per_seq(self) -> tuple[float, int]:
        return 131072.0 * 1000, 1000  # 128 KiB per token

    def get_mem_capacity_bytes(self) -> int:
        return 80 * GIB


def _fake_estimate(model: str, system: str, *, mode: str, isl: int, osl: int, batch_size: int, **kw: Any) -> Any:
    """TTFT linear in input length; ITL linear in batch and context; TP halves both."""
    tp = kw["tp_size"]
    return SimpleNamespace(
        ttft=(5 + isl / 50) / tp,
        tpot=(6 + batch_size * 0.05 + (isl + osl / 2) / 4000) / tp,
        summary=_Summary(),
        backend_name=kw["backend_name"],
        backend_version="1.0",
    )


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    offline.register_offline(parser.add_subparsers())
    return parser.parse_args(["offline", "--model", "org/M-8B", "--system", "h100_sxm", "--out", str(tmp_path), *extra])


def test_sweep_writes_a_loadable_profile_per_tp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline, "load_estimator", lambda: (_fake_estimate, "a stand-in estimator"))
    args = _args(tmp_path, "--tp", "1,2", "--quick", "--max-context", "8192")
    assert args.run(args) == 0
    one = load_profile(tmp_path / "m-8b_h100_sxm_vllm_tp1")
    two = load_profile(tmp_path / "m-8b_h100_sxm_vllm_tp2")
    assert one.max_kv_tokens == int((0.9 * 80 - 18) * GIB / 131072)
    assert two.gpus_per_engine == 2 and two.tp == 2
    assert "a stand-in estimator" in (tmp_path / "m-8b_h100_sxm_vllm_tp1/meta.json").read_text()
    assert one.prefill_isl.tolist() == [256, 1024, 4096]  # below the context limit only
    assert one.prefill_ttft_ms.tolist() == pytest.approx([5 + i / 50 for i in (256, 1024, 4096)])
    assert sorted(set(one.decode_context.tolist())) == [1274.0]  # 8192 + 500 exceeds the limit
    model = PerfModel(one)
    assert model.itl_ms(8, 1274) == pytest.approx(6 + 0.4 + 1274 / 4000)


def test_without_the_extra_the_message_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "aiconfigurator", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "aiconfigurator.cli.api", None)
    code = main(["profile", "offline", "--model", "m", "--system", "h100_sxm", "--out", str(tmp_path)])
    assert code == 2
    assert "pip install 'fleet-planner[aiconfigurator]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert main(["profile", "offline", "--model", "m", "--system", "s", "--out", str(tmp_path), "--tp", "0"]) == 2
    assert "--tp" in capsys.readouterr().err


def test_aiconfigurator_reproduces_the_vendored_profile(tmp_path: Path) -> None:
    pytest.importorskip("aiconfigurator")
    args = _args(tmp_path, "--model", "meta-llama/Meta-Llama-3.1-8B", "--quick")
    args.model = "meta-llama/Meta-Llama-3.1-8B"
    assert args.run(args) == 0
    made = load_profile(tmp_path / "meta-llama-3.1-8b_h100_sxm_vllm_tp1")
    vendored = load_profile(VENDORED)
    for isl, ttft in zip(made.prefill_isl, made.prefill_ttft_ms, strict=True):
        expected = vendored.prefill_ttft_ms[vendored.prefill_isl == isl]
        if expected.size:
            assert ttft == pytest.approx(float(expected[0]), rel=0.01)
    assert made.max_kv_tokens == pytest.approx(vendored.max_kv_tokens, rel=0.01)
