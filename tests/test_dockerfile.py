"""The Dockerfile (not built here: no container runtime in CI) runs what exists: its entrypoint is
the package's console script, the chart's `serve`/`agent` subcommands parse with the chart's
flags, every COPY source exists, the base is pinned and the user is not root."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import helm_python as helm
import yaml

from fleet_planner_cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def _instructions(name: str) -> list[str]:
    lines = re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines()
    return [line.split(None, 1)[1] for line in lines if line.startswith(name + " ")]


def test_base_is_pinned_and_user_is_not_root() -> None:
    for base in _instructions("FROM"):
        image = base.split()[0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), image
    users = _instructions("USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_copy_sources_exist() -> None:
    for copy in _instructions("COPY"):
        parts = [p for p in copy.split() if not p.startswith("--")]
        if copy.startswith("--from="):
            continue
        for source in parts[:-1]:
            assert (REPO / source).exists(), source


def test_entrypoint_is_the_packages_console_script() -> None:
    entrypoint = _instructions("ENTRYPOINT")[-1]
    command = yaml.safe_load(entrypoint)[0]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert command in scripts and scripts[command] == "fleet_planner_cli:main"


def test_the_charts_container_args_parse() -> None:
    """Every container the chart renders (one agent configured) runs a subcommand of the
    entrypoint with flags it knows."""
    agent = {
        "name": "llama",
        "dgd": "llama",
        "config": {"deployment": {}, "prometheus": {}, "connector": {"kind": "kubernetes", "dgd": "llama"}},
    }
    manifests = helm.Chart.load(REPO / "charts/fleet-planner").render({"agents": [agent]}, name="fp", namespace="fleet")
    docs = [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]
    containers = [
        c for doc in docs if doc["kind"] == "Deployment" for c in doc["spec"]["template"]["spec"]["containers"]
    ]
    assert {c["args"][0] for c in containers} == {"serve", "agent"}
    for container in containers:
        args = build_parser().parse_args(container["args"])
        assert callable(args.run)
