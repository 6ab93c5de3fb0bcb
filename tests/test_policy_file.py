"""Policy files fail loudly with file + path, and a bad edit never replaces a good policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fleet_planner.errors import InputError
from global_planner.policy_file import PolicyWatcher, load_policy_file, parse_policy, policy_json_schema

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
fleet: {gpus: {h200: 32, h100: 16}}
tenants:
  acme: {priority: 100, guaranteed_gpus: {h200: 8}, max_gpus: {h200: 24, h100: 8}}
  beta: {priority: 10}
deployments:
  - {selector: "beta/*", max_step: 2}
"""


def _write(tmp_path: Path, text: str, name: str = "tenants.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_an_integer_is_still_a_valid_float() -> None:
    policy = parse_policy(GOOD + "stability: {hysteresis: 0, horizon_s: 300}\n", "tenants.yaml")
    assert policy.tenants["acme"].priority == 100.0 and policy.stability.horizon_s == 300.0


def test_example_policy_loads() -> None:
    policy = load_policy_file(ROOT / "policies" / "tenants.yaml")
    assert policy.tenants["acme"].guaranteed_gpus == {"h200": 8}
    assert policy.deployments[0].max_step == 2


def test_committed_schema_is_current() -> None:
    committed = json.loads((ROOT / "policies" / "tenant-policy.schema.json").read_text())
    assert committed == policy_json_schema(), "run: python -m global_planner.policy_file"


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        (
            GOOD.replace("guaranteed_gpus: {h200: 8}", "guaranteed_gpus: {h200: 30}"),
            "tenants.acme.guaranteed_gpus.h200",
            "exceeds max_gpus 24",
        ),
        (
            GOOD.replace("beta: {priority: 10}", "beta: {priority: 10, guaranteed_gpus: {h200: 30}}"),
            "tenants.beta.guaranteed_gpus.h200",
            "more than the fleet's 32",
        ),
        (
            GOOD.replace("max_gpus: {h200: 24, h100: 8}", "max_gpus: {a100: 4}"),
            "tenants.acme.max_gpus.a100",
            "unknown GPU type 'a100'",
        ),
        (GOOD.replace("priority: 10}", "priority: 0}"), "tenants.beta.priority", "greater than 0"),
        (GOOD.replace("priority: 10}", "priority: .inf}"), "tenants.beta.priority", "finite"),
        (GOOD.replace("priority: 10}", "priority: 10, colour: red}"), "tenants.beta.colour", "Extra inputs"),
        (GOOD.replace('"beta/*"', '"beta"'), "deployments[0].selector", "tenant/deployment"),
        (GOOD.replace("max_step: 2", "max_step: -1"), "deployments[0].max_step", "greater than or equal to 0"),
        (GOOD.replace("fleet:", "flete:"), "flete", "Extra inputs"),
        (GOOD + "stability: {hysteresis: 2}\n", "stability.hysteresis", "less than or equal to 1"),
        (GOOD + "stability: {horizon_s: .nan}\n", "stability.horizon_s", "finite"),
        (GOOD + "stability: {horizon: 300}\n", "stability.horizon", "Extra inputs"),
        # YAML gives numbers and booleans their own types: anything else in their place is a slip
        (GOOD.replace("priority: 10}", "priority: true}"), "tenants.beta.priority", "valid number"),
        (GOOD.replace("{h200: 8}", '{h200: "8"}'), "tenants.acme.guaranteed_gpus.h200", "valid integer"),
        (GOOD.replace("{h200: 32,", "{h200: true,"), "fleet.gpus.h200", "valid integer"),
        (GOOD.replace("max_step: 2", "max_step: 2.5"), "deployments[0].max_step", "valid integer"),
        (GOOD + "stability: {contest_on_observed: 1}\n", "stability.contest_on_observed", "valid boolean"),
        # a slipped exponent made every round fall back to greedy (CP-SAT's int64 overflowed)
        (GOOD.replace("{h200: 32,", "{h200: 100000000000000000000,"), "fleet.gpus.h200", "within [0, 1000000]"),
        (GOOD.replace("priority: 10}", "priority: 1.0e+15}"), "tenants.beta.priority", "less than or equal to"),
        (GOOD.replace("{a100: 4}", "{a100: 4}").replace("h100: 8}", "h100: 10000000}"), "max_gpus", "1000000"),
        (GOOD.replace("max_step: 2", "max_step: 2, priority: 1.0e+9"), "deployments[0].priority", "less than"),
    ],
)
def test_errors_name_file_path_and_problem(tmp_path: Path, text: str, path: str, problem: str) -> None:
    file = _write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_policy_file(file)
    message = str(caught.value)
    assert str(file) in message
    assert path in message
    assert problem in message


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.yaml: cannot read"):
        load_policy_file(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="invalid YAML"):
        load_policy_file(_write(tmp_path, "fleet: {gpus: [", "bad.yaml"))
    with pytest.raises(InputError, match="must be a mapping"):
        load_policy_file(_write(tmp_path, "- 1\n", "list.yaml"))


def test_binary_policy_file_is_an_input_error_at_start_and_on_reload(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xb7\x8f\x00garbage")
    with pytest.raises(InputError, match="binary.yaml: cannot read: 'utf-8' codec"):
        load_policy_file(binary)

    registry = CollectorRegistry()
    path = _write(tmp_path, GOOD)
    watcher = PolicyWatcher(path, registry=registry)
    stat = path.stat()
    path.write_bytes(b"\xb7\x8f\x00garbage")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert watcher.poll() is False  # refused and counted, the running planner keeps its policy
    assert watcher.policy.tenants["beta"].priority == 10
    assert watcher.last_error is not None and "cannot read" in str(watcher.last_error)
    assert registry.get_sample_value("fleet_planner_policy_reload_errors_total") == 1.0


def _bump(path: Path, text: str) -> None:
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_watcher_reloads_and_keeps_old_policy_on_invalid_edit(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    path = _write(tmp_path, GOOD)
    watcher = PolicyWatcher(path, registry=registry)
    assert watcher.poll() is False

    _bump(path, GOOD.replace("priority: 10}", "priority: 20}"))
    assert watcher.poll() is True
    assert watcher.policy.tenants["beta"].priority == 20

    _bump(path, GOOD.replace("priority: 10}", "priority: -1}"))
    assert watcher.poll() is False
    assert watcher.policy.tenants["beta"].priority == 20
    assert watcher.last_error is not None and "tenants.beta.priority" in str(watcher.last_error)
    assert registry.get_sample_value("fleet_planner_policy_reload_errors_total") == 1.0

    path.unlink()
    assert watcher.poll() is False
    assert registry.get_sample_value("fleet_planner_policy_reload_errors_total") == 2.0

    _bump(_write(tmp_path, GOOD), GOOD)
    assert watcher.poll() is True  # content differs from the last good version (priority 20)
    assert watcher.last_error is None


def test_touch_without_change_does_not_reload(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    watcher = PolicyWatcher(path, registry=CollectorRegistry())
    _bump(path, GOOD)
    assert watcher.poll() is False


def test_first_load_must_be_valid(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        PolicyWatcher(_write(tmp_path, "fleet: {}"), registry=CollectorRegistry())
