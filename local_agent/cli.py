"""``fleet-planner agent``: run one deployment's local agent live (or for a single tick)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from fleet_planner.errors import InputError
from local_agent.config import AgentConfig, load_config
from local_agent.connectors.processes import StateFileError
from local_agent.connectors.virtual import VirtualStateError
from local_agent.models import AgentDecision
from local_agent.runtime import open_runtime, serve


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``agent`` command (the lead lists this module in ``fleet_planner.cli``)."""
    parser = subparsers.add_parser(
        "agent",
        help="run a deployment's local agent live",
        description="Observe a deployment through Prometheus, size its pools for the SLA and apply the targets "
        "through the configured connector, every tick_s, until SIGTERM/SIGINT.",
    )
    parser.add_argument("--config", type=Path, required=True, help="agent config file (YAML; see examples/agent)")
    parser.add_argument(
        "--planner", metavar="HOST:PORT", help="global planner address (overrides the config's planner)"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one tick (applying the targets unless advisory), print the decision as JSON and exit",
    )
    parser.set_defaults(run=run)


def configure(args: argparse.Namespace) -> AgentConfig:
    """The config file, with ``--planner`` (when given) taking precedence over its ``planner``."""
    config = load_config(args.config)
    return config.with_planner(args.planner) if args.planner else config


async def run_once(config: AgentConfig) -> AgentDecision:
    """One tick without the HTTP server: what the agent decides (and applies) right now."""
    async with open_runtime(config) as runtime:
        return await runtime.tick()


def run(args: argparse.Namespace) -> int:
    config = configure(args)
    try:
        if args.once:
            print(asyncio.run(run_once(config)).model_dump_json(indent=2))
        else:
            asyncio.run(serve(config))
    except (StateFileError, VirtualStateError) as exc:  # the connector's file: an input the operator must fix
        raise InputError(str(exc), file=config.file, field="connector") from None
    return 0
