"""Every input file refuses a key given twice, naming the key and both lines (PyYAML alone keeps
the last one silently: a tenant listed twice would lose its first settings)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet_planner.errors import InputError
from fleet_planner.yaml_input import load_yaml
from fleet_sim.scenario import load_scenario
from global_planner.policy_file import load_policy_file, parse_policy
from global_planner.service.auth import TokenAuthenticator
from local_agent.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_duplicate_keys_are_refused_at_any_depth_with_both_lines() -> None:
    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'acme' \(first given at line 2\)") as caught:
        load_yaml("tenants:\n  acme: {priority: 100}\n  beta: {priority: 10}\n  acme: {priority: 1}\n")
    assert caught.value.problem_mark.line + 1 == 4  # type: ignore[attr-defined]
    with pytest.raises(yaml.YAMLError, match="duplicate key 'k'"):
        load_yaml("outer:\n  - inner: {k: 1, k: 2}\n")


def test_what_plain_yaml_allows_still_loads() -> None:
    assert load_yaml("a: 1\nb: [1, 2]\nc: {d: null}\n") == {"a": 1, "b": [1, 2], "c": {"d": None}}
    # merge keys may be overridden by the mapping that merges them: not a repeat
    merged = load_yaml("base: &b {x: 1, y: 1}\nderived: {<<: *b, x: 3}\n")
    assert merged["derived"] == {"x": 3, "y": 1}
    assert load_yaml("") is None
    with pytest.raises(yaml.YAMLError, match="unhashable"):
        load_yaml("? [1]\n: 2\n")
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: !!python/object:os.system ls\n")  # still the safe loader


def test_a_policy_file_with_a_tenant_twice_is_refused() -> None:
    text = (ROOT / "policies" / "tenants.yaml").read_text(encoding="utf-8")
    assert parse_policy(text, "tenants.yaml").tenants["acme"].priority == 100
    doubled = text.replace("  beta: {priority: 10}\n", "  beta: {priority: 10}\n  acme: {priority: 1}\n")
    assert doubled != text
    with pytest.raises(InputError, match="duplicate key 'acme'"):
        parse_policy(doubled, "tenants.yaml")


def test_a_scenario_with_a_planner_option_twice_is_refused(tmp_path: Path) -> None:
    source = ROOT / "examples" / "azure-disagg" / "scenario.yaml"
    text = source.read_text(encoding="utf-8")
    doubled = text.replace("interval_s: 30}", "interval_s: 30, interval_s: 5}")
    assert doubled != text
    path = source.with_name("duplicate-key-test.yaml")  # beside it, so its relative paths resolve
    try:
        path.write_text(doubled, encoding="utf-8")
        with pytest.raises(InputError, match=r"invalid YAML at line \d+, column \d+: duplicate key 'interval_s'"):
            load_scenario(path)
    finally:
        path.unlink(missing_ok=True)
    assert load_scenario(source).planner.interval_s == 30


def test_tokens_and_agent_config_files_refuse_duplicates(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "s3cret: {deployment: chat, tenant: acme}\ns3cret: {deployment: batch, tenant: beta}\n", encoding="utf-8"
    )
    with pytest.raises(InputError, match="duplicate key 's3cret'"):
        TokenAuthenticator.from_file(tokens)
    config = tmp_path / "agent.yaml"
    config.write_text("state_dir: a\nstate_dir: b\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicate key 'state_dir'"):
        load_config(config)
    policy = tmp_path / "tenants.yaml"
    policy.write_text("fleet: {gpus: {h200: 8}}\nfleet: {gpus: {h200: 16}}\ntenants: {a: {}}\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicate key 'fleet'"):
        load_policy_file(policy)
