"""``fleet-planner`` command line. Each subcommand lives beside the code it drives and registers
itself here; bad input ends in one clear line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Planning loops are single-threaded; BLAS threads only fight over the cores (statsmodels fits).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from fleet_planner.errors import InputError

# Modules exposing ``register(subparsers)``; each adds its subcommand(s) with ``set_defaults(run=...)``.
_COMMAND_MODULES = [
    "fleet_sim.cli",
    "fleet_planner.traces.cli",
    "global_planner.cli",
    "local_agent.cli",
    "fleet_planner.emulate.cli",
    "fleet_planner.profiler.cli",
    "fleet_planner.perf.cli",
    "fleet_sim.demo.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-planner", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse, set up logging and run the chosen subcommand; bad input is one line and exit 2.
    Shared by every entry point (``fleet-planner`` and ``python -m global_planner.cli``)."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.run(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
