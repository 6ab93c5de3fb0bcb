"""Policy registry: the scenario's ``planner.policy`` name -> a constructed ``Policy``."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from fleet_planner.deployment import input_error
from fleet_planner.errors import InputError
from fleet_planner.planning import Policy
from fleet_sim.baselines import (
    OraclePolicy,
    StaticPeakPolicy,
    StaticPolicy,
    WindowedNeeds,
    oracle_below_peak,
    search_static_peak,
)
from fleet_sim.workload import Workload

DEFAULT_TARGET_ATTAINMENT = 0.995  # sizing target of the baselines: a little above the 99% goal
# Planner options that configure the fleet arbiter or the baselines, not the agents (so one
# scenario runs under local, fcfs and global alike).
ARBITER_OPTIONS = ("policy_file", "faults", "baseline_search")


class BaselineOptions(BaseModel):
    """The planner options the clairvoyant baselines read (the rest configure the agents)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    target_attainment: float = Field(default=DEFAULT_TARGET_ATTAINMENT, gt=0, le=1, allow_inf_nan=False)
    # false: size static-peak and the oracle by the capacity model alone (fast, but not verified to
    # meet the target), for runs too long to replay a dozen times. Strict: bool("no") is True.
    baseline_search: StrictBool = True


def _baseline_options(scenario) -> BaselineOptions:
    try:
        return BaselineOptions.model_validate(scenario.planner.options)
    except ValidationError as exc:
        raise _options_error(exc, BaselineOptions, "planner") from None


def _needs(scenario, workload: Workload, target: float) -> WindowedNeeds:
    return WindowedNeeds(scenario.deployment_specs(), workload, scenario.duration_s, target, scenario.seed)


def _static(scenario, workload: Workload) -> Policy:
    return StaticPolicy(scenario.deployment_specs(), scenario.planner.interval_s)


def _options_error(exc: ValidationError, model: type[BaseModel], field: str) -> InputError:
    """The first problem of planner options as one line, its field under ``field``."""
    error = input_error(exc, model, None)
    return InputError(error.problem, field=".".join(part for part in (field, error.field) if part))


def _static_peak(scenario, workload: Workload) -> Policy:
    options = _baseline_options(scenario)
    needs = _needs(scenario, workload, options.target_attainment)
    if options.baseline_search:
        return search_static_peak(scenario, workload, needs, needs.target)
    return StaticPeakPolicy(scenario.deployment_specs(), scenario.planner.interval_s, needs, dict(scenario.gpus))


def _oracle(scenario, workload: Workload) -> Policy:
    options = _baseline_options(scenario)
    needs = _needs(scenario, workload, options.target_attainment)
    if options.baseline_search:
        return oracle_below_peak(scenario, workload, needs.target)
    return OraclePolicy(scenario.deployment_specs(), scenario.planner.interval_s, needs, dict(scenario.gpus))


def _agent_options(scenario, ignore: tuple[str, ...] = ()):
    from local_agent.agent import AgentOptions

    options = {k: v for k, v in scenario.planner.options.items() if k not in ignore}
    try:
        return AgentOptions(**options)
    except ValidationError as exc:
        raise _options_error(exc, AgentOptions, "planner") from None


def _local(scenario, workload: Workload) -> Policy:
    from fleet_sim.adapters.local import LocalAgentsPolicy

    return LocalAgentsPolicy(
        scenario.deployment_specs(), scenario.planner.interval_s, _agent_options(scenario, ignore=ARBITER_OPTIONS)
    )


def _fcfs(scenario, workload: Workload) -> Policy:
    from fleet_sim.adapters.planner import FcfsPolicy

    options = _agent_options(scenario, ignore=ARBITER_OPTIONS)
    return FcfsPolicy(scenario.deployment_specs(), scenario.planner.interval_s, options, dict(scenario.gpus))


def _global(scenario, workload: Workload) -> Policy:
    from fleet_sim.adapters.planner import GlobalPolicy, PlannerFaults
    from global_planner.policy_file import FleetInventory, load_policy_file

    path = scenario.planner.options.get("policy_file")
    if not path:
        raise InputError("policy global needs planner.policy_file (a tenant policy YAML)", field="planner.policy_file")
    policy = load_policy_file(scenario.base_dir / path)
    # In a simulation the scenario's inventory wins over the policy file's.
    policy = policy.model_copy(update={"fleet": FleetInventory(gpus=dict(scenario.gpus))})
    options = _agent_options(scenario, ignore=ARBITER_OPTIONS)
    try:
        faults = PlannerFaults.model_validate(scenario.planner.options.get("faults") or {})
    except ValidationError as exc:
        raise _options_error(exc, PlannerFaults, "planner.faults") from None
    dropped = faults.drop_agent.deployment if faults.drop_agent is not None else None
    if dropped is not None and dropped not in {spec.name for spec in scenario.deployment_specs()}:
        raise InputError(f"no deployment {dropped!r}", field="planner.faults.drop_agent.deployment")
    return GlobalPolicy(scenario.deployment_specs(), scenario.planner.interval_s, options, policy, faults=faults)


POLICIES: dict[str, Callable[..., Policy]] = {
    "static": _static,
    "static-peak": _static_peak,
    "oracle": _oracle,
    "local": _local,
    "fcfs": _fcfs,
    "global": _global,
}


def make_policy(scenario, workload: Workload) -> Policy:
    name = scenario.planner.policy
    factory = POLICIES.get(name)
    if factory is None:
        raise InputError(
            f"policy {name!r} is not available (known: {', '.join(sorted(POLICIES))})", field="planner.policy"
        )
    return factory(scenario, workload)
