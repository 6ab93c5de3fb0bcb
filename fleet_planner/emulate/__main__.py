"""``python -m fleet_planner.emulate --profile DIR ...`` is ``fleet-planner emulate ...``: how the
simulator's live demo starts engine processes without reaching up to the whole program."""

from __future__ import annotations

import argparse
import sys

from fleet_planner.cli import run
from fleet_planner.emulate.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet_planner.emulate")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser, ["emulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
