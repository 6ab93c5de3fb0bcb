"""The aggregated capacity model against the simulator, at fixed replicas and a flat Poisson load.

For a matrix template with an aggregated pool (``a1``, ``a2``, ``h1``, ``a4``, ``t1``), each point
``N:R`` runs N replicas (static, started) at R requests/s per replica with the template's request
lengths and SLA for ``--minutes`` simulated minutes (the first 5 dropped), and prints the
simulated SLO, TTFT and ITL attainment beside what the agent's curve (``agg_curve``, uncorrected,
on the admitted requests' own lengths) predicts for that pool, then the simulated ITL attainment
by decode length, where an aggregated pool's ITL misses concentrate: a prompt's prefill chunk that
lands in a short decode stretches that request's mean ITL by its whole cost. Last, the time one
curve of 64 replica counts takes on the last point's requests (the agent computes several a tick).

Each point also prints the model at N, N + 1 and N + 2 replicas on the requests' own lengths and
on each sample the agent can draw from their summary (every ``LengthFit`` of
``LoadEstimate.from_distribution``): what a fit adds to the curve's own error.
``--lengths-window T0:T1`` takes a conversation template's lengths from the requests of the Azure
trace that arrived between T0 and T1 s (1200:2400 holds its long-prompt clusters).

    python benchmarks/bench_curve_fit.py --template h1 --points 3:1,5:1,7:1,4:1.5     # ~1 min
    python benchmarks/bench_curve_fit.py --template a1 --points 3:4,5:4
    python benchmarks/bench_curve_fit.py --template a1 --points 5:5,6:4.77,5:5.72 --minutes 20 \\
        --lengths-window 1200:2400
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import typing
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.perf import PerfModel, load_profile  # noqa: E402
from fleet_planner.planning import SLA  # noqa: E402
from fleet_sim.matrix import PROFILES, TEMPLATES, steady_pool_scenario  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation, distribution  # noqa: E402
from fleet_sim.scenario import parse_scenario  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402
from local_agent.sizing.curves import agg_curve  # noqa: E402
from local_agent.sizing.load import LengthFit, LoadEstimate  # noqa: E402

AZURE = ROOT / "examples" / "traces" / "azure2023_conv.csv"

SETTLE_S = 300.0  # requests arriving earlier are left out (the pool fills)
DECODE_BUCKETS = ((1, 3), (3, 6), (6, 12), (12, 25), (25, 50), (50, 100), (100, 200), (200, None))


def point(text: str) -> tuple[int, float]:
    replicas, rate = text.split(":")
    n, r = int(replicas), float(rate)
    if n < 1 or not r > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need replicas >= 1 and a rate per replica > 0")
    return n, r


def window(text: str) -> tuple[float, float]:
    start, end = (float(x) for x in text.split(":"))
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= T0 < T1")
    return start, end


def window_lengths(span: tuple[float, float], workdir: Path) -> Path:
    """The Azure trace's requests that arrived within ``span``, written as a file of its format."""
    with AZURE.open(newline="") as source:
        rows = [row for row in csv.DictReader(source) if span[0] <= float(row["arrival_s"]) < span[1]]
    if not rows:
        raise SystemExit(f"no request of {AZURE.name} arrived within {span[0]:g}-{span[1]:g} s")
    path = workdir / f"azure_lengths_{span[0]:g}_{span[1]:g}.csv"
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def simulate(
    template_key: str, replicas: int, rate_rps: float, minutes: float, seed: int, workdir: Path, lengths: Path | None
):
    """One static run of the template's aggregated pool at a flat Poisson rate, on ``lengths`` (an
    Azure-format file) instead of the template's lengths when given."""
    scenario = steady_pool_scenario(template_key, replicas, rate_rps, minutes * 60.0, seed, workdir)
    if lengths is not None:
        data = scenario.model_dump(by_alias=True, mode="json")
        data["deployments"][0]["trace"]["synth"]["lengths"] = str(lengths)
        scenario = parse_scenario(data, base_dir=workdir)
    workload = build_workload(scenario)
    return FleetSimulation(scenario, workload, make_policy(scenario, workload)).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    aggregated = sorted(key for key, t in TEMPLATES.items() if t.mode == "agg")
    parser.add_argument("--template", choices=aggregated, default="h1")
    parser.add_argument(
        "--points", type=lambda s: [point(p) for p in s.split(",")], default=[(3, 1.0), (5, 1.0), (7, 1.0), (4, 1.5)]
    )
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lengths-window", type=window, help="T0:T1, the Azure trace's lengths between T0 and T1 s")
    args = parser.parse_args()
    if args.minutes * 60.0 <= SETTLE_S + 60.0:
        parser.error(f"--minutes must leave more than a minute after the first {SETTLE_S / 60:g}")
    template = TEMPLATES[args.template]
    if args.lengths_window is not None and template.lengths != "conv":
        parser.error(f"--lengths-window reads the Azure conversation trace, not {args.template}'s {template.lengths}")
    sla = SLA(ttft_ms=template.ttft_ms, itl_ms=template.itl_ms)
    model = PerfModel(load_profile(PROFILES / template.profile))
    workdir = Path(tempfile.gettempdir()) / "fleet-planner-matrix"
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"template {args.template}: {template.profile}, TTFT {template.ttft_ms:g} ms, ITL {template.itl_ms:g} ms")
    lengths = None if args.lengths_window is None else window_lengths(args.lengths_window, workdir)
    for replicas, per_replica in args.points:
        result = simulate(args.template, replicas, replicas * per_replica, args.minutes, args.seed, workdir, lengths)
        r = result.requests
        kept = r.arrival_s >= SETTLE_S
        ttft_ok = r.ttft_ms[kept] <= sla.ttft_ms
        itl_ok = r.itl_ms[kept] <= sla.itl_ms  # a request without decode has no ITL: NaN, taken as met below
        itl_ok |= np.isnan(r.itl_ms[kept])
        load = LoadEstimate.from_samples(r.input_tokens[kept], r.output_tokens[kept], replicas * per_replica)
        knobs = {name: template_knob(result, name) for name in ("max_batch_tokens", "max_num_seqs")}
        curve = agg_curve(model, load, sla, max_replicas=replicas + 2, **knobs)
        itl_p90 = curve.itl_p90_ms[replicas]
        print(
            f"\nN={replicas} at {per_replica:g} req/s per replica ({int(kept.sum())} requests):"
            f"\n  simulated SLO {np.mean(ttft_ok & itl_ok):.4f}  TTFT {np.mean(ttft_ok):.4f}  ITL {np.mean(itl_ok):.4f}"
            f"  p90 ITL {np.nanpercentile(r.itl_ms[kept], 90):.1f} ms"
            f"\n  model     SLO {curve.attainment[replicas]:.4f}"
            f"  p90 ITL {'overloaded' if itl_p90 is None else f'{itl_p90:.1f} ms'}"
        )
        inputs, outputs = distribution(r.input_tokens[kept].tolist()), distribution(r.output_tokens[kept].tolist())
        assert inputs is not None and outputs is not None
        counts = range(replicas, replicas + 3)
        samples = {"own lengths": load} | {
            f"{fit} sample": LoadEstimate.from_distribution(load.rate_rps, inputs, outputs, samples=400, fit=fit)
            for fit in typing.get_args(LengthFit)
        }
        print(f"  model SLO at {' / '.join(str(n) for n in counts)} replicas:", end="")
        for label, sample in samples.items():
            at = curve if sample is load else agg_curve(model, sample, sla, max_replicas=replicas + 2, **knobs)
            print(f"  {label} {' / '.join(f'{at.attainment[n]:.4f}' for n in counts)};", end="")
        print()
        decodes = r.output_tokens[kept] - 1
        for low, high in DECODE_BUCKETS:
            chosen = (decodes >= low) & (decodes < (high if high is not None else np.inf))
            if chosen.any():
                label = f"{low}-{high - 1}" if high is not None else f">= {low}"
                share = chosen.mean()
                print(
                    f"    decode {label:>7} iterations: {share:5.1%} of requests, simulated ITL attainment "
                    f"{np.mean(itl_ok[chosen]):.3f}, mean ITL {np.nanmean(r.itl_ms[kept][chosen]):.1f} ms"
                )
    calls = 20
    began = time.perf_counter()
    for _ in range(calls):
        agg_curve(model, load, sla, max_replicas=64)
    print(f"\none curve of 64 replica counts: {(time.perf_counter() - began) / calls * 1000:.1f} ms")
    return 0


def template_knob(result, name: str) -> int:
    """The engine knob the simulated pool ran with (the scenario's pool default)."""
    return int(getattr(result.deployments[0].pools["agg"], name))


if __name__ == "__main__":
    raise SystemExit(main())
