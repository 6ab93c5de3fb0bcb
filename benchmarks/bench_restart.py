"""What an agent restart costs, and what its checkpoint saves: matrix cells replayed under ``local``
with every agent restarted at the given times (down ``--down`` seconds each time), cold (a new
agent planning from the running counts, as the live runtime adopts a pool without a checkpoint)
or warm (the agent written with ``local_agent.checkpoint.save_checkpoint`` and read back with
``load_checkpoint``, the live runtime's path), beside the same run without a restart.

    python benchmarks/bench_restart.py [--cells NAME ...] [--half tuning|held-out|all] [--span hour|day|all]
                                       [--at 1200,2400] [--down 30] [--seeds 1,2,3]

Prints one line per cell, seed and mode: GPU-hours, SLO attainment per deployment, scaling-direction
reversals per deployment-hour (the worst deployment) and target changes per pool-hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_planner.cli import guarded  # noqa: E402
from fleet_planner.planning import Decision, FleetObservation  # noqa: E402
from fleet_sim.adapters.local import LocalAgentsPolicy  # noqa: E402
from fleet_sim.matrix import Cell, build_scenario, cells, changes_per_pool_hour, reversals_per_hour  # noqa: E402
from fleet_sim.outputs import summarize  # noqa: E402
from fleet_sim.policies import make_policy  # noqa: E402
from fleet_sim.runner import FleetSimulation  # noqa: E402
from fleet_sim.workload import build_workload  # noqa: E402
from local_agent.agent import LocalAgent  # noqa: E402
from local_agent.checkpoint import load_checkpoint, plan_fingerprint, save_checkpoint  # noqa: E402

MODES = ("none", "cold", "warm")


class RestartingPolicy:
    """Wraps the simulator's local agents: at each restart time every agent stops (its checkpoint
    written, as on a graceful shutdown), no agent decides for ``down_s`` (the pools keep their
    targets), then each comes back cold or from its checkpoint file, planning from what runs."""

    def __init__(self, policy: LocalAgentsPolicy, mode: str, at_s: list[float], down_s: float, folder: Path):
        self.policy, self.mode, self.pending, self.down_s, self.folder = policy, mode, sorted(at_s), down_s, folder
        self.back_s: float | None = None
        # What each agent's checkpoint belongs to (its spec, options and tick never change): the
        # runtime computes it once at start too.
        self.fingerprints = {
            name: plan_fingerprint(agent.spec, agent.options, agent.tick_s) for name, agent in policy.agents.items()
        }

    def decide(self, now_s: float, observation: FleetObservation | None) -> Decision:
        if self.back_s is None and self.pending and now_s >= self.pending[0]:
            self.pending.pop(0)
            self.back_s = now_s + self.down_s
            if self.mode == "warm":
                for name, agent in self.policy.agents.items():
                    save_checkpoint(self._path(name), agent, self.fingerprints[name], now_s)
        if self.back_s is not None:
            if now_s < self.back_s:
                return Decision(targets=[])
            self.back_s = None
            for name, agent in list(self.policy.agents.items()):
                self.policy.agents[name] = self._restarted(name, agent, now_s)
        return self.policy.decide(now_s, observation)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.checkpoint"

    def _restarted(self, name: str, agent: LocalAgent, now_s: float) -> LocalAgent:
        running = agent.targets()  # the simulated pools run the last targets (none was set while down)
        if self.mode == "warm":
            restored = load_checkpoint(self._path(name), self.fingerprints[name], now_s, max_age_s=900.0)
            assert restored.agent is not None, restored.reason
            for role, count in running.items():  # as the runtime: plan from what runs
                restored.agent.granted(role, count)
            return restored.agent
        # Cold: what the runtime does without a checkpoint (a new agent planning from the running counts).
        return LocalAgent(
            agent.spec, agent.models, agent.options, agent.tick_s, endpoint_share=agent.endpoint_share, starting=running
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)


def run(cell: Cell, mode: str, at_s: list[float], down_s: float, workdir: Path) -> dict[str, Any]:
    """One replay of ``cell`` under ``local`` with the agents restarted ``mode`` at ``at_s``, each
    time down for ``down_s``."""
    scenario = build_scenario(cell, "local", workdir)
    workload = build_workload(scenario)
    policy = make_policy(scenario, workload)
    assert isinstance(policy, LocalAgentsPolicy)
    with tempfile.TemporaryDirectory() as folder:
        wrapped = policy if mode == "none" else RestartingPolicy(policy, mode, at_s, down_s, Path(folder))
        result = FleetSimulation(scenario, workload, wrapped).run()  # type: ignore[arg-type]
    summary = summarize(result)
    return {
        "gpu_hours": summary["fleet"]["gpu_hours"],
        "attainment": {name: d["slo_attainment"] for name, d in summary["deployments"].items()},
        "reversals_per_hour": max(reversals_per_hour(result).values()),
        "changes_per_pool_hour": changes_per_pool_hour(result),
        "decisions": [(d.time_s, d.deployment, d.role, d.to_replicas) for d in result.decisions],
    }


def _job(job: tuple[Cell, str, list[float], float, Path]) -> tuple[str, int, str, dict[str, Any]]:
    cell, mode, at_s, down_s, workdir = job
    return cell.name, cell.seed, mode, run(cell, mode, at_s, down_s, workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", help="cell names (default: every single-tenant cell of --half)")
    parser.add_argument("--half", choices=["tuning", "held-out", "all"], default="tuning")
    parser.add_argument("--span", choices=["hour", "day", "all"], default="hour")
    parser.add_argument("--at", default="1200,2400", help="restart times in seconds, comma-separated")
    parser.add_argument("--down", type=float, default=30.0, help="seconds each restart leaves the agents down")
    parser.add_argument("--seeds", default="1", help="traffic seeds, comma-separated")
    parser.add_argument("--workdir", type=Path, default=Path("matrix-out/data"))
    args = parser.parse_args()
    at_s = [float(t) for t in args.at.split(",")]
    chosen = [
        c
        for c in cells()
        if (c.name in args.cells if args.cells else args.half in ("all", c.half) and args.span in ("all", c.span))
        and not c.arbitrated
    ]
    if args.cells and len(chosen) != len(set(args.cells)):
        known = {c.name for c in cells()}
        raise SystemExit(f"unknown or arbitrated cells: {sorted(set(args.cells) - known)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [
        (dataclasses.replace(c, seed=seed), mode, at_s, args.down, args.workdir.resolve())
        for c in chosen
        for seed in seeds
        for mode in MODES
    ]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = {(name, seed, mode): row for name, seed, mode, row in pool.imap_unordered(_job, jobs)}
    print(f"restarts at {at_s} s, {args.down:.0f} s down each")
    print(f"{'cell':<44}{'seed':>5}  {'mode':<5}{'GPU-h':>8}  {'SLO % per deployment':<24}{'rev/h':>6}", end="")
    print(f"{'chg/pool-h':>11}")
    extra = {mode: [] for mode in MODES}  # type: dict[str, list[tuple[float, float, float]]]
    for cell in chosen:
        for seed in seeds:
            base = results[(cell.name, seed, "none")]
            for mode in MODES:
                row = results[(cell.name, seed, mode)]
                slo = ",".join(f"{100 * (a or 0.0):.2f}" for a in row["attainment"].values())
                same = " (same decisions)" if mode != "none" and row["decisions"] == base["decisions"] else ""
                print(
                    f"{cell.name:<44}{seed:>5}  {mode:<5}{row['gpu_hours']:>8.2f}  {slo:<24}"
                    f"{row['reversals_per_hour']:>6.1f}{row['changes_per_pool_hour']:>11.1f}{same}"
                )
                extra[mode].append(
                    (
                        row["gpu_hours"] / base["gpu_hours"] - 1.0,
                        row["reversals_per_hour"] - base["reversals_per_hour"],
                        min(a or 0.0 for a in row["attainment"].values())
                        - min(a or 0.0 for a in base["attainment"].values()),
                    )
                )
    for mode in ("cold", "warm"):
        found = extra[mode]
        cost = [f[0] for f in found]
        print(
            f"{mode}: {len(found)} runs; GPU-hours vs no restart median {100 * statistics.median(cost):+.1f}% "
            f"(range {100 * min(cost):+.1f}% to {100 * max(cost):+.1f}%); runs with more reversals per "
            f"deployment-hour {sum(f[1] > 0 for f in found)}, mean {statistics.mean(f[1] for f in found):+.2f}; runs "
            f"whose worst deployment lost attainment {sum(f[2] < -1e-4 for f in found)} (worst "
            f"{100 * min(f[2] for f in found):+.2f} points)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
