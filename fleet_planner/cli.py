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
from collections.abc import Callable

# Planning loops are single-threaded; BLAS threads only fight over the cores (statsmodels fits).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from fleet_planner.errors import InputError, unreadable


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse, set up logging and run the chosen subcommand; bad input is one line and exit 2.
    Shared by every entry point (``fleet-planner`` and ``python -m global_planner.cli``)."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return guarded(lambda: args.run(args))


def guarded(main: Callable[[], int | None]) -> int:
    """Run ``main``; bad input (an ``InputError``, or a path the OS refused) is one line on stderr
    and exit code 2, not a traceback. The benchmark scripts end with ``sys.exit(guarded(main))``."""
    try:
        return int(main() or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A path the OS refused (a name too long, no permission, a full disk) that no check named
        # first: still one line naming the path, not a traceback (which -v logs).
        logging.getLogger(__name__).debug("OS error", exc_info=True)
        where = ": ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
        print(f"error: {where + ': ' if where else ''}{unreadable(exc)}", file=sys.stderr)
        return 2
