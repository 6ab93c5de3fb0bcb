"""The frontend's request timeout: a request still queued past ``queue_timeout_s`` is dropped and
counted as rejected; everything already prefilling finishes; without a timeout nothing is dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleet_sim.results import COMPLETED, REJECTED, UNFINISHED
from fleet_sim.scenario import parse_scenario
from fleet_sim.simulate import run_scenario

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "examples" / "profiles" / "llama3.1-8b_h100_vllm_tp1"


def _overloaded(tmp_path: Path, timeout: float | None, mode: str):
    """One replica and a burst of 400 long prompts at once: far more than it can start in time."""
    trace = tmp_path / "burst.csv"
    trace.write_text(
        "arrival_s,input_tokens,output_tokens\n" + "".join(f"{i * 0.01:.2f},4000,50\n" for i in range(400))
    )
    source = {"path": str(trace), "format": "csv"}
    if timeout is not None:
        source["queue_timeout_s"] = timeout
    pool = {"profile": str(H100), "gpu_type": "h100", "min": 1, "max": 1, "initial": 1, "startup_s": 60}
    pools = {"agg": pool} if mode == "agg" else {"prefill": pool, "decode": pool}
    data = {
        "name": "timeout",
        "duration": "3m",
        "gpus": {"h100": 2},
        "planner": {"policy": "static", "interval_s": 30},
        "deployments": [
            {
                "name": "d",
                "tenant": "t",
                "endpoint": "e",
                "mode": mode,
                "sla": {"ttft_ms": 1000, "itl_ms": 100},
                "trace": source,
                "pools": pools,
            }
        ],
    }
    return run_scenario(parse_scenario(data, base_dir=tmp_path))


def test_timeout_drops_only_requests_that_waited_too_long(tmp_path: Path) -> None:
    for mode in ("agg", "disagg"):
        result = _overloaded(tmp_path, 2.0, mode)
        status, records = result.requests.status, result.requests
        dropped = status == REJECTED
        assert dropped.sum() > 100, mode  # the burst cannot be prefilled within 2 s
        assert (status == COMPLETED).sum() > 10, mode
        assert (status == UNFINISHED).sum() == 0, mode  # nothing lost: completed or dropped
        # Completed requests started prefill in time: none waited past the timeout before its
        # first chunk, so their TTFT is bounded by the timeout plus their own prefill time.
        completed = status == COMPLETED
        assert np.nanmax(records.ttft_ms[completed]) < 2000 + 1000, mode
        # The dropped ones are the later arrivals of the burst (FIFO).
        assert records.arrival_s[dropped].min() > records.arrival_s[completed].min(), mode


def test_no_timeout_drops_nothing(tmp_path: Path) -> None:
    result = _overloaded(tmp_path, None, "agg")
    assert (result.requests.status == REJECTED).sum() == 0
    assert (result.requests.status == COMPLETED).sum() == 400
