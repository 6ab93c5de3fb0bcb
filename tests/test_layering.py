"""The packages depend on each other one way only:

    fleet_planner (shared core)  <-  local_agent, global_planner (not on each other)  <-  fleet_sim

``fleet_planner_cli`` (the ``fleet-planner`` program) sits on top and may import everything. Every
import counts — module level, inside functions, under ``TYPE_CHECKING`` — and so does a module
named by a string (``importlib.import_module("local_agent.cli")``, a list of module names), so the
rule cannot be dodged by importing late or by name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fleet_planner", "local_agent", "global_planner", "fleet_sim")
FORBIDDEN: dict[str, frozenset[str]] = {
    "fleet_planner": frozenset({"local_agent", "global_planner", "fleet_sim", "fleet_planner_cli"}),
    "local_agent": frozenset({"global_planner", "fleet_sim", "fleet_planner_cli"}),
    "global_planner": frozenset({"local_agent", "fleet_sim", "fleet_planner_cli"}),
    "fleet_sim": frozenset({"fleet_planner_cli"}),
}
_MODULE_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _names_a_project_module(text: str) -> bool:
    return bool(_MODULE_NAME.match(text)) and text.split(".")[0] in (*PACKAGES, "fleet_planner_cli")


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) names: imports anywhere in the file,
    relative ones resolved, and string constants that are a dotted module name of a project
    package (what ``importlib.import_module``/``__import__`` would load)."""
    tree = ast.parse(source)
    names: set[str] = set()
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_a_project_module(node.value):
            names.add(node.value)
    return names


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    layer = module.split(".")[0]
    forbidden = FORBIDDEN.get(layer, frozenset())
    return sorted(
        f"{module} imports {name}"
        for name in imported_modules(source, module, is_package)
        if name.split(".")[0] in forbidden
    )


def _project_modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_every_package_imports_only_down_the_layers() -> None:
    found = [
        problem
        for path in _project_modules()
        for problem in violations(path.read_text(encoding="utf-8"), _module_of(path), path.name == "__init__.py")
    ]
    assert found == []


def test_the_scan_sees_every_package() -> None:
    modules = {_module_of(path) for path in _project_modules()}
    assert {"fleet_planner.planning", "local_agent.runtime", "global_planner.service.server", "fleet_sim.runner"} <= (
        modules
    )


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import local_agent.agent\n", "fleet_planner.planning"),
        ("def f():\n    from global_planner.service import state\n", "local_agent.runtime"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fleet_sim.runner\n", "global_planner.x"),
        ("import importlib\nimportlib.import_module('local_agent.cli')\n", "fleet_planner.cli"),
        ("MODULES = ['fleet_sim.cli', 'global_planner.cli']\n", "fleet_planner.cli"),
        ("__import__('local_agent')\n", "global_planner.cli"),
        ("from ...fleet_sim import runner\n", "local_agent.sizing.curves"),
    ],
)
def test_wrong_way_imports_are_caught(source: str, module: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import fleet_planner.planning\nfrom local_agent.agent import LocalAgent\n", "fleet_sim.adapters.local"),
        ("from .models import AgentDecision\n", "local_agent.session"),
        ("log = 'fleet_sim is the simulator'\n", "fleet_planner.planning"),
    ],
)
def test_right_way_imports_pass(source: str, module: str) -> None:
    assert violations(source, module) == []
