"""The scenario file and the agent config describe a deployment with one model
(``fleet_planner.deployment``): the same pool fields, defaults and checks, the same errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_link_helpers import chat_deployment

from fleet_planner.deployment import DeploymentConfig, PoolConfig
from fleet_planner.errors import InputError
from fleet_sim.scenario import SimPoolConfig, load_scenario, parse_scenario
from local_agent.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def _agent(tmp_path: Path, **pool: object):
    data = {
        "deployment": chat_deployment(**pool),
        "prometheus": {"url": "http://127.0.0.1:9"},
        "connector": {"kind": "virtual", "path": "t.json"},
        "state_dir": str(tmp_path),
    }
    return data


def _scenario(deployment: dict) -> dict:
    return {
        "name": "s",
        "duration": "1m",
        "gpus": {"h100": 16},
        "planner": {"policy": "static"},
        "deployments": [
            {
                **deployment,
                "trace": {"path": str(ROOT / "examples/traces/azure2023_conv.csv"), "format": "azure"},
            }
        ],
    }


def test_one_pool_and_deployment_model_in_both_files(tmp_path: Path) -> None:
    agent = parse_config(_agent(tmp_path), base_dir=tmp_path)
    scenario = parse_scenario(_scenario(chat_deployment()), base_dir=tmp_path)
    assert isinstance(agent.deployment, DeploymentConfig) and isinstance(scenario.deployments[0], DeploymentConfig)
    assert type(agent.deployment.pools["agg"]) is PoolConfig
    assert isinstance(scenario.deployments[0].pools["agg"], SimPoolConfig)
    assert agent.spec() == scenario.deployment_specs()[0]


def test_initial_defaults_to_min_in_both_files(tmp_path: Path) -> None:
    deployment = chat_deployment(min=3)
    del deployment["pools"]["agg"]["initial"]
    agent_data = _agent(tmp_path)
    agent_data["deployment"] = deployment
    agent = parse_config(agent_data, base_dir=tmp_path)
    scenario = parse_scenario(_scenario(deployment), base_dir=tmp_path)
    assert agent.deployment.pools["agg"].initial == scenario.deployments[0].pools["agg"].initial == 3


@pytest.mark.parametrize("name", ["Chat", "chat_a", "-chat", "c" * 64])
def test_a_deployment_name_is_a_kubernetes_name_in_both_files(tmp_path: Path, name: str) -> None:
    agent_data = _agent(tmp_path)
    agent_data["deployment"]["name"] = name
    with pytest.raises(InputError) as agent_error:
        parse_config(agent_data, base_dir=tmp_path, file="agent.yaml")
    with pytest.raises(InputError) as scenario_error:
        parse_scenario(_scenario({**chat_deployment(), "name": name}), base_dir=tmp_path, file="s.yaml")
    assert agent_error.value.field == "deployment.name" and scenario_error.value.field == "deployments[0].name"
    assert agent_error.value.problem == scenario_error.value.problem
    assert "lowercase letters, digits or '-'" in agent_error.value.problem


def test_pool_errors_read_the_same_in_both_files(tmp_path: Path) -> None:
    problems = []
    for file, parse in (("agent.yaml", _agent_error), ("s.yaml", _scenario_error)):
        problems.append(parse(tmp_path, file, min=4, max=2))
    (agent_field, agent_problem), (scenario_field, scenario_problem) = problems
    assert agent_field == "deployment.pools.agg.max" and scenario_field == "deployments[0].pools.agg.max"
    assert agent_problem == scenario_problem == "must be >= min (4), got 2"


@pytest.mark.parametrize(
    ("pool", "field", "problem"),
    [
        ({"max": 10**15}, "max", "less than or equal to 10000"),
        ({"gpus_per_replica": 5000}, "gpus_per_replica", "less than or equal to 1024"),
        ({"startup_s": "10000d"}, "startup_s", "less than or equal to 86400"),
        ({"gpu_type": "h 100"}, "gpu_type", "should match pattern"),
    ],
)
def test_pools_the_planner_would_refuse_are_refused_at_load_in_both_files(
    tmp_path: Path, pool: dict, field: str, problem: str
) -> None:
    """Values past the registration's bounds were accepted, then a simulation (or a live agent's
    registration) ended in a pydantic traceback: the files now share the planner's limits."""
    for file, parse in (("agent.yaml", _agent_error), ("s.yaml", _scenario_error)):
        where, message = parse(tmp_path, file, **pool)
        assert where is not None and where.endswith(f"pools.agg.{field}") and problem in message


@pytest.mark.parametrize("key", ["tenant", "endpoint"])
def test_tenant_and_endpoint_are_names_the_planner_accepts_in_both_files(tmp_path: Path, key: str) -> None:
    agent_data = _agent(tmp_path)
    agent_data["deployment"][key] = "a b"
    with pytest.raises(InputError, match="should match pattern") as agent_error:
        parse_config(agent_data, base_dir=tmp_path, file="agent.yaml")
    with pytest.raises(InputError, match="should match pattern") as scenario_error:
        parse_scenario(_scenario({**chat_deployment(), key: "a b"}), base_dir=tmp_path, file="s.yaml")
    assert agent_error.value.field == f"deployment.{key}" and scenario_error.value.field == f"deployments[0].{key}"


def _agent_error(tmp_path: Path, file: str, **pool: object) -> tuple[str | None, str]:
    with pytest.raises(InputError) as caught:
        parse_config(_agent(tmp_path, **pool), base_dir=tmp_path, file=file)
    return caught.value.field, caught.value.problem


def _scenario_error(tmp_path: Path, file: str, **pool: object) -> tuple[str | None, str]:
    with pytest.raises(InputError) as caught:
        parse_scenario(_scenario(chat_deployment(**pool)), base_dir=tmp_path, file=file)
    return caught.value.field, caught.value.problem


def test_every_example_file_loads() -> None:
    assert load_config(ROOT / "examples/agent/agent.yaml").spec().pools["agg"].initial_replicas == 2
    for path in sorted((ROOT / "examples").glob("*/scenario.yaml")):
        assert load_scenario(path).deployment_specs(), path
