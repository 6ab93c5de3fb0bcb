"""Simulator speed: simulated requests per wall-clock second for a 4-deployment disaggregated fleet.

Four disaggregated Llama-3.1-8B deployments (H200 and H100, prefill + decode pools) each replay
the Azure conversation trace at 4x its rate for an hour under the static policy. The simulator is
single-threaded, so the figure is for one core.

    python benchmarks/bench_sim_speed.py [--duration 1h] [--rate-scale 4]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.cli import guarded  # noqa: E402
from fleet_sim.outputs import summarize  # noqa: E402
from fleet_sim.scenario import parse_scenario  # noqa: E402
from fleet_sim.simulate import run_scenario  # noqa: E402


def fleet_scenario(duration: str, rate_scale: float):
    deployments = []
    for index, gpu in enumerate(["h200", "h200", "h100", "h100"]):
        profile = f"profiles/llama3.1-8b_{gpu}_vllm_tp1"
        pool = {"profile": profile, "gpu_type": gpu, "min": 1, "max": 8, "initial": 3, "startup_s": 60}
        deployments.append(
            {
                "name": f"chat-{index}",
                "tenant": f"tenant-{index % 2}",
                "endpoint": f"endpoint-{index}",
                "mode": "disagg",
                "sla": {"ttft_ms": 500, "itl_ms": 30},
                "trace": {
                    "path": "traces/azure2023_conv.csv",
                    "format": "azure",
                    "rate_scale": rate_scale,
                    "offset_s": 60 * index,
                },
                "pools": {"prefill": pool, "decode": pool},
            }
        )
    data = {
        "name": "speed-4-disagg",
        "duration": duration,
        "seed": 1,
        "gpus": {"h200": 24, "h100": 24},
        "planner": {"policy": "static", "interval_s": 30},
        "deployments": deployments,
    }
    return parse_scenario(data, base_dir=ROOT / "examples")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="1h")
    parser.add_argument("--rate-scale", type=float, default=4.0)
    args = parser.parse_args()
    scenario = fleet_scenario(args.duration, args.rate_scale)
    started = time.perf_counter()
    result = run_scenario(scenario)
    elapsed = time.perf_counter() - started
    summary = summarize(result)
    requests = summary["fleet"]["requests"]
    print(
        f"{requests} requests, {len(result.deployments)} disaggregated deployments, {result.duration_s:.0f} simulated s"
    )
    print(f"engine loop {result.wall_seconds:.2f} s, end to end (trace loading included) {elapsed:.2f} s")
    print(
        f"simulated requests per wall-clock second: {requests / result.wall_seconds:,.0f} (engine loop), "
        f"{requests / elapsed:,.0f} (end to end)"
    )
    print(f"SLO attainment {summary['fleet']['slo_attainment'] * 100:.2f}%")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"peak resident memory {peak_mb:,.0f} MB ({peak_mb * 2**20 / requests:,.0f} bytes per request)")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
