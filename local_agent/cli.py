"""``fleet-planner agent``: run one deployment's local agent live (or for a single tick)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from fleet_planner.errors import InputError
from local_agent.config import DEFAULT_STATE_DIR, AgentConfig, load_config
from local_agent.connectors.processes import StateFileError
from local_agent.connectors.virtual import VirtualStateError
from local_agent.models import AgentDecision
from local_agent.runtime import open_runtime, serve


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``agent`` command (assembled into ``fleet-planner`` by ``fleet_planner_cli``)."""
    parser = subparsers.add_parser(
        "agent",
        help="run a deployment's local agent live",
        description="Observe a deployment through Prometheus, size its pools for the SLA and apply the targets "
        "through the configured connector, every tick_s, until SIGTERM/SIGINT.",
    )
    parser.add_argument("--config", type=Path, required=True, help="agent config file (YAML; see examples/agent)")
    parser.add_argument(
        "--planner", metavar="HOST:PORT", help="global planner address (overrides the config's planner.address)"
    )
    parser.add_argument("--planner-ca", type=Path, metavar="PEM", help="CA that signed the planner's certificate (TLS)")
    parser.add_argument("--planner-cert", type=Path, metavar="PEM", help="agent's client certificate (mutual TLS)")
    parser.add_argument("--planner-key", type=Path, metavar="PEM", help="private key of --planner-cert")
    parser.add_argument("--planner-token-file", type=Path, metavar="FILE", help="file holding the planner's token")
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"where connector state and diagnostics go (default: the config's state_dir, else ./{DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one tick (applying the targets unless advisory), print the decision as JSON and exit",
    )
    parser.set_defaults(run=run)


# flag -> the config key it overrides
_OVERRIDES = {
    "planner": "planner.address",
    "planner_ca": "planner.ca_file",
    "planner_cert": "planner.cert_file",
    "planner_key": "planner.key_file",
    "planner_token_file": "planner.token_file",
    "state_dir": "state_dir",
}


def configure(args: argparse.Namespace) -> AgentConfig:
    """The config file, with the flags given taking precedence over what it says (paths given on
    the command line are relative to the working directory)."""
    overrides = {}
    for flag, key in _OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = str(value.resolve()) if isinstance(value, Path) else value
    return load_config(args.config, overrides)


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
