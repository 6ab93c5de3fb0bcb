"""The simulator's scenario file: fleet inventory, planner choice, endpoints, deployments and traces.

Loaded once, validated completely, and turned into one :class:`InputError` naming the file and the
field (``deployments[1].pools.agg.min``) on the first problem, so a bad scenario fails before any
simulation time is spent. Relative paths are resolved against the scenario file's folder and must
exist at load time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fleet_planner.deployment import (
    DeploymentConfig,
    ExistingFile,
    FieldProblem,
    PoolConfig,
    context_base_dir,
    input_error,
    read_yaml,
)
from fleet_planner.durations import Duration
from fleet_planner.errors import InputError
from fleet_planner.planning import SLA, DeploymentSpec, FrozenModel
from fleet_planner.traces import TRACE_FORMATS

KNOWN_POLICIES: frozenset[str] = frozenset({"static", "static-peak", "oracle", "local", "global", "fcfs"})
TraceFormat = Literal["azure", "mooncake", "csv", "burstgpt"]

# Where an override lands in the scenario, so a bad override is reported as such.
_OVERRIDE_FIELDS = {"seed": "seed", "duration": "duration", "policy": "planner.policy"}
OVERRIDE_KEYS: tuple[str, ...] = tuple(_OVERRIDE_FIELDS)
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SynthSource(FrozenModel):
    """Traffic synthesised from a rate series (requests/s over time) and a pool of request lengths."""

    rate: ExistingFile = Field(description="CSV rate series (time, rate)")
    peak_rps: PositiveFloat | None = Field(
        default=None, description="rescale the series so its peak is this many requests/s; None keeps it as is"
    )
    start_s: Duration = Field(default=0.0, description="where in the rate series to start")
    lengths: ExistingFile = Field(description="trace whose (input, output) lengths are sampled")
    lengths_format: TraceFormat | None = Field(
        default=None, description="format of `lengths`; default azure for .csv, mooncake for .jsonl"
    )
    arrival: Literal["poisson", "gamma", "clients", "auto"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _infer_lengths_format(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("lengths_format") is None and isinstance(data.get("lengths"), str):
            inferred = {".csv": "azure", ".jsonl": "mooncake"}.get(Path(data["lengths"]).suffix.lower())
            if inferred is not None:
                return {**data, "lengths_format": inferred}
        return data

    @model_validator(mode="after")
    def _lengths_format_known(self) -> SynthSource:
        if self.lengths_format is None:
            raise FieldProblem("lengths_format", f"required for {self.lengths.name}: one of {', '.join(TRACE_FORMATS)}")
        return self


class TraceSource(FrozenModel):
    """Where an endpoint's requests come from (a trace file or a synthesis), and how to reshape them."""

    path: ExistingFile | None = None
    format: TraceFormat | None = Field(default=None, description="required unless `path` ends in .jsonl (mooncake)")
    synth: SynthSource | None = None
    rate_scale: PositiveFloat = Field(
        default=1.0, description=">1 replicates requests (jittered copies), <1 thins them; also for synth traffic"
    )
    time_scale: PositiveFloat = Field(default=1.0, description=">1 stretches time, <1 compresses it")
    start_s: Duration = Field(
        default=0.0,
        description="`path` traces: replay from this instant of the trace (seconds after its first request); "
        "earlier requests are dropped (a synthesis has `synth.start_s`)",
    )
    offset_s: Duration = 0.0
    select: dict[str, list[str]] | None = Field(
        default=None,
        description="CSV `path` traces: only rows whose named columns hold one of the values, e.g. "
        "{Model: [GPT-4]} for one model of a BurstGPT file",
    )
    max_input_tokens: int | None = Field(
        default=None, ge=1, description="longer prompts are rejected at admission and counted"
    )
    queue_timeout_s: PositiveFloat | None = Field(
        default=None,
        description="request timeout of the frontend: a request still queued (not yet prefilling, "
        "or waiting for a decode slot) this long after arrival is dropped and counted as rejected",
    )

    @model_validator(mode="before")
    @classmethod
    def _infer_format(cls, data: Any) -> Any:
        path = data.get("path") if isinstance(data, Mapping) else None
        if isinstance(path, str) and data.get("format") is None and Path(path).suffix.lower() == ".jsonl":
            return {**data, "format": "mooncake"}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> TraceSource:
        if (self.path is None) == (self.synth is None):
            raise FieldProblem("", "give exactly one of `path` (a trace file) or `synth` (a synthesis)")
        if self.synth is not None and self.format is not None:
            raise FieldProblem("format", "applies to `path` traces only; use synth.lengths_format")
        if self.synth is not None and self.start_s:
            raise FieldProblem("start_s", "applies to `path` traces only; use synth.start_s")
        if self.select is not None and (self.synth is not None or self.format == "mooncake"):
            raise FieldProblem("select", "applies to CSV `path` traces only")
        if self.path is not None and self.format is None:
            raise FieldProblem("format", f"required for {self.path.name}: one of {', '.join(TRACE_FORMATS)}")
        return self


class SimPoolConfig(PoolConfig):
    """A pool as the agent config has it, plus the engine details only the simulator models."""

    kv_bytes_per_token: int = Field(default=131072, ge=1, description="KV cache size of one token, bytes")
    kv_transfer_gbps: PositiveFloat = Field(
        default=50.0, description="prefill -> decode KV transfer bandwidth, gigabits per second (disagg only)"
    )
    prefix_cache: bool = Field(
        default=True, description="prefill/agg replicas reuse cached KV prefixes (traces with Mooncake hash_ids)"
    )


class EndpointConfig(FrozenModel):
    """An endpoint's traffic and the SLA every request on it is judged by."""

    sla: SLA
    trace: TraceSource


class ScenarioDeployment(DeploymentConfig[SimPoolConfig]):
    """A deployment as the agent config has it; its SLA and trace may instead come from ``endpoints:``."""

    sla: SLA | None = Field(default=None, description="only when the deployment is alone on its endpoint")
    trace: TraceSource | None = Field(default=None, description="only when the deployment is alone on its endpoint")


class PlannerConfig(FrozenModel):
    """Which policy plans the fleet and how often; extra keys are the policy's own options."""

    model_config = ConfigDict(extra="allow")

    policy: str
    interval_s: Duration = Field(default=30.0, gt=0, description="how often the policy is asked")
    observation_delay_s: Duration = Field(default=15.0, description="metrics scrape lag before a policy sees data")

    @field_validator("policy")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        known = info.context.get("policies", KNOWN_POLICIES) if isinstance(info.context, Mapping) else KNOWN_POLICIES
        if value not in known:
            raise ValueError(f"unknown policy {value!r} (known: {', '.join(sorted(known))})")
        return value

    @property
    def options(self) -> dict[str, Any]:
        """Policy-specific settings (e.g. predictor, policy_file), as written."""
        return dict(self.model_extra or {})


class Scenario(FrozenModel):
    """A complete simulation setup. Build it with :func:`load_scenario` (or :func:`parse_scenario`)."""

    name: str = Field(min_length=1)
    duration_s: Duration = Field(alias="duration", gt=0, description="simulated time")
    seed: int = Field(default=0, ge=0)
    gpus: dict[str, Annotated[int, Field(ge=0)]] = Field(description="fleet inventory: GPUs per type")
    planner: PlannerConfig
    endpoints: dict[str, EndpointConfig] = Field(
        default_factory=dict, description="needed only for endpoints served by several deployments"
    )
    deployments: list[ScenarioDeployment] = Field(min_length=1)

    _base_dir: Path = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._base_dir = context_base_dir(context)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the scenario were resolved against."""
        return self._base_dir

    @model_validator(mode="after")
    def _cross_check(self) -> Scenario:
        names: dict[str, int] = {}
        for i, deployment in enumerate(self.deployments):
            if deployment.name in names:
                raise FieldProblem(
                    f"deployments[{i}].name",
                    f"duplicate deployment name {deployment.name!r} (also deployments[{names[deployment.name]}])",
                )
            names[deployment.name] = i
            for role, pool in deployment.pools.items():
                if pool.gpu_type not in self.gpus:
                    raise FieldProblem(
                        f"deployments[{i}].pools.{role}.gpu_type",
                        f"unknown GPU type {pool.gpu_type!r} (gpus: {', '.join(self.gpus) or 'none'})",
                    )
        self._check_endpoints()
        self._check_offsets()
        self._check_inventory()
        return self

    def _check_offsets(self) -> None:
        """A trace shifted past the scenario's end sends nothing: its endpoint would sit idle for the
        whole run without a word (offset_s: 1000d in a two-hour scenario)."""
        for endpoint, config in self.endpoints.items():
            if config.trace.offset_s >= self.duration_s:
                raise FieldProblem(f"endpoints.{endpoint}.trace.offset_s", self._late(config.trace.offset_s))
        for i, deployment in enumerate(self.deployments):
            if deployment.trace is not None and deployment.trace.offset_s >= self.duration_s:
                raise FieldProblem(f"deployments[{i}].trace.offset_s", self._late(deployment.trace.offset_s))

    def _late(self, offset_s: float) -> str:
        return f"{offset_s:g} s is at or after the scenario's end ({self.duration_s:g} s): no request would arrive"

    def _check_endpoints(self) -> None:
        """Every endpoint gets exactly one SLA and one trace, from `endpoints:` or its lone deployment."""
        for endpoint in self.endpoints:
            if not self.deployments_of(endpoint):
                raise FieldProblem(f"endpoints.{endpoint}", "no deployment serves this endpoint")
        for i, deployment in enumerate(self.deployments):
            endpoint = deployment.endpoint
            own = [key for key in ("sla", "trace") if getattr(deployment, key) is not None]
            if endpoint in self.endpoints:
                if own:
                    raise FieldProblem(
                        f"deployments[{i}].{own[0]}",
                        f"ambiguous: endpoint {endpoint!r} already has its {own[0]} under "
                        f"endpoints.{endpoint}; keep one",
                    )
                continue
            sharing = self.deployments_of(endpoint)
            if len(sharing) > 1:
                raise FieldProblem(
                    f"deployments[{i}].endpoint",
                    f"endpoint {endpoint!r} is served by {', '.join(sharing)}: give it an entry under "
                    f"endpoints.{endpoint} with its sla and trace",
                )
            for key in ("sla", "trace"):
                if getattr(deployment, key) is None:
                    raise FieldProblem(
                        f"deployments[{i}].{key}",
                        f"endpoint {endpoint!r} has no {key}: set it here or under endpoints.{endpoint}",
                    )

    def _check_inventory(self) -> None:
        """The initial replicas must fit the inventory, or the simulation could not even start."""
        needed: dict[str, list[tuple[str, int]]] = {}
        for deployment in self.deployments:
            for role, pool in deployment.pools.items():
                needed.setdefault(pool.gpu_type, []).append(
                    (f"{deployment.name}/{role}", pool.initial * pool.gpus_per_replica)
                )
        for gpu_type, uses in needed.items():
            total = sum(gpus for _, gpus in uses)
            have = self.gpus[gpu_type]
            if total > have:
                detail = ", ".join(f"{pool}: {gpus}" for pool, gpus in uses if gpus)
                problem = f"initial replicas need {total} {gpu_type} GPUs ({detail}), the inventory has {have}"
                raise FieldProblem(f"gpus.{gpu_type}", problem)

    def deployments_of(self, endpoint: str) -> list[str]:
        """Names of the deployments serving ``endpoint``, in scenario order (empty if none)."""
        return [d.name for d in self.deployments if d.endpoint == endpoint]

    def endpoint_configs(self) -> dict[str, tuple[SLA, TraceSource]]:
        """Each endpoint's resolved (SLA, trace), whether declared under `endpoints:` or on its deployment."""
        resolved: dict[str, tuple[SLA, TraceSource]] = {}
        for deployment in self.deployments:
            if deployment.endpoint not in resolved:
                resolved[deployment.endpoint] = self.endpoint_of(deployment.name)
        return resolved

    def endpoint_of(self, deployment: str) -> tuple[SLA, TraceSource]:
        """The resolved (SLA, trace) of the endpoint ``deployment`` serves."""
        config = self._deployment(deployment)
        if config.endpoint in self.endpoints:
            shared = self.endpoints[config.endpoint]
            return shared.sla, shared.trace
        assert config.sla is not None and config.trace is not None  # guaranteed by _check_endpoints
        return config.sla, config.trace

    def deployment_specs(self) -> list[DeploymentSpec]:
        """What planners are handed: each deployment with its resolved SLA and pool bounds."""
        return [deployment.to_spec(self.endpoint_of(deployment.name)[0]) for deployment in self.deployments]

    def _deployment(self, name: str) -> ScenarioDeployment:
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        raise KeyError(f"no deployment named {name!r}")


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of the scenario file, for editors and docs."""
    return Scenario.model_json_schema(by_alias=True)


def load_scenario(
    path: str | Path, *, overrides: Mapping[str, Any] | None = None, policies: Collection[str] | None = None
) -> Scenario:
    """Read, override (``seed``, ``duration``, ``policy``) and validate a scenario YAML file.

    Every problem, including YAML syntax and missing referenced files, is one :class:`InputError`.
    """
    path = Path(path)
    data = read_yaml(path, "scenario")
    return parse_scenario(data, base_dir=path.resolve().parent, file=path, overrides=overrides, policies=policies)


def parse_scenario(
    data: Any,
    *,
    base_dir: str | Path,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    policies: Collection[str] | None = None,
) -> Scenario:
    """Validate already-parsed scenario data; ``file`` only names the source in errors."""
    if not isinstance(data, Mapping):
        raise InputError("the scenario must be a mapping of keys (name, duration, gpus, ...)", file=file)
    data = dict(data)
    for key, value in (overrides or {}).items():
        if key not in _OVERRIDE_FIELDS:
            raise InputError(f"unknown override {key!r} (allowed: {', '.join(OVERRIDE_KEYS)})", field=key)
        if key == "policy":
            planner = data.get("planner")
            data["planner"] = {**planner, "policy": value} if isinstance(planner, Mapping) else {"policy": value}
        else:
            data[key] = value
    known = KNOWN_POLICIES if policies is None else frozenset(policies)
    context = {"base_dir": Path(base_dir).resolve(), "policies": known}
    try:
        return Scenario.model_validate(data, context=context)
    except ValidationError as exc:
        notes = {_OVERRIDE_FIELDS[key]: "value from an override" for key in overrides or {}}
        raise input_error(exc, Scenario, file, notes) from None
