"""Simulator fidelity: closed-loop runs of the simulated engine against measured benchmark rows.

For every measured row that matches the profile (same GPU system, backend, tensor parallel size and
model size), run the same closed loop (`fleet-planner bench`) and print the median absolute
percentage error of mean TTFT and mean TPOT.

    python benchmarks/bench_fidelity.py --profile examples/profiles/llama3.1-8b_h100_trtllm_tp1
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.cli import guarded  # noqa: E402
from fleet_planner.perf import PerfModel, load_profile  # noqa: E402
from fleet_sim.closed_loop import run_closed_loop  # noqa: E402


def model_size(name: str) -> str | None:
    """'meta-llama/Llama-3.1-8B-Instruct' -> '8b': measured rows name instruct variants."""
    match = re.search(r"(\d+(?:\.\d+)?)[bB]\b", name.replace("-Instruct", ""))
    return match.group(1).lower() + "b" if match else None


def matching_rows(profile, rows: list[dict]) -> list[dict]:
    size = model_size(profile.model)
    return [
        row
        for row in rows
        if row["system"] == profile.system
        and row["backend"] == profile.backend
        and row["mode"] == "agg"
        and int(float(row["tp_size"])) == profile.tp
        and int(float(row["pp_size"] or 1)) == 1
        and model_size(row["model"]) == size
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=str(ROOT / "examples/profiles/llama3.1-8b_h100_trtllm_tp1"))
    parser.add_argument("--measured", default=str(ROOT / "examples/measured/aiconfigurator_silicon_llama_agg.csv"))
    parser.add_argument("--rows", action="store_true", help="print every row")
    args = parser.parse_args()

    profile = load_profile(args.profile)
    model = PerfModel(profile)
    with open(args.measured, newline="") as handle:
        rows = matching_rows(profile, list(csv.DictReader(handle)))
    if not rows:
        print(
            f"no measured rows match {profile.system}/{profile.backend}/tp{profile.tp}/{profile.model}", file=sys.stderr
        )
        return 1
    ttft_errors, tpot_errors = [], []
    for row in rows:
        concurrency, isl, osl = int(float(row["concurrency"])), int(row["isl"]), int(row["osl"])
        measured_ttft, measured_tpot = float(row["ttft_ms"]), float(row["tpot_ms"])
        simulated = run_closed_loop(model, mode="agg", concurrency=concurrency, isl=isl, osl=osl)
        ttft_errors.append(abs(simulated.ttft_ms - measured_ttft) / measured_ttft)
        tpot_errors.append(abs(simulated.tpot_ms - measured_tpot) / measured_tpot)
        if args.rows:
            print(
                f"c={concurrency:4d} isl={isl:5d} osl={osl:5d}  "
                f"TTFT measured {measured_ttft:8.1f} simulated {simulated.ttft_ms:8.1f}"
                f"  TPOT measured {measured_tpot:6.2f} simulated {simulated.tpot_ms:6.2f}"
            )
    print(f"profile {profile.name}: {len(rows)} measured rows")
    print(f"TTFT median absolute percentage error: {statistics.median(ttft_errors) * 100:.1f}%")
    print(f"TPOT median absolute percentage error: {statistics.median(tpot_errors) * 100:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
