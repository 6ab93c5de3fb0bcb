"""The ``fleet-planner`` program: every package's subcommands under one parser.

This is the top of the import graph — the only module that imports the shared core, the agent,
the planner and the simulator together (``tests/test_layering.py`` holds everyone else to the
one-way layering). Each subcommand lives beside the code it drives and exposes
``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys

from fleet_planner import cli as common
from fleet_planner.emulate import cli as emulate_cli
from fleet_planner.perf import cli as perf_cli
from fleet_planner.profiler import cli as profiler_cli
from fleet_planner.traces import cli as traces_cli
from fleet_sim import cli as sim_cli
from fleet_sim.demo import cli as demo_cli
from global_planner import cli as planner_cli
from local_agent import cli as agent_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-planner", description="SLA-driven GPU planner for LLM serving fleets.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (sim_cli, traces_cli, planner_cli, agent_cli, emulate_cli, profiler_cli, perf_cli, demo_cli):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
