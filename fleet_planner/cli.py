"""What every ``fleet-planner`` entry point shares: logging set-up and the rule that bad input ends
in one clear line on stderr and exit code 2.

The shared core knows no subcommand: the ``fleet-planner`` program itself is assembled in
:mod:`fleet_planner_cli`, the one module allowed to import every package.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Planning loops are single-threaded; BLAS threads only fight over the cores (statsmodels fits).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from fleet_planner.errors import InputError


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
