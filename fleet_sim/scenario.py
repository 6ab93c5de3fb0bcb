"""The simulator's scenario file: fleet inventory, planner choice, endpoints, deployments and traces.

Loaded once, validated completely, and turned into one :class:`InputError` naming the file and the
field (``deployments[1].pools.agg.min``) on the first problem, so a bad scenario fails before any
simulation time is spent. Relative paths are resolved against the scenario file's folder and must
exist at load time.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from fleet_planner.durations import parse_duration
from fleet_planner.errors import InputError
from fleet_planner.planning import SLA, DeploymentMode, DeploymentSpec, PoolRole, pool_specs

KNOWN_POLICIES: frozenset[str] = frozenset({"static", "static-peak", "oracle", "local", "global", "fcfs"})
TraceFormat = Literal["azure", "mooncake", "csv"]

_ROLES_BY_MODE: dict[str, tuple[PoolRole, ...]] = {"disagg": ("prefill", "decode"), "agg": ("agg",)}
_ROLE_ORDER: tuple[PoolRole, ...] = ("prefill", "decode", "agg")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Where an override lands in the scenario, so a bad override is reported as such.
_OVERRIDE_FIELDS = {"seed": "seed", "duration": "duration", "policy": "planner.policy"}
OVERRIDE_KEYS: tuple[str, ...] = tuple(_OVERRIDE_FIELDS)


class _FieldProblem(ValueError):
    """A model-level check failing on one field; ``field`` is relative to the model validated."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def _context_base_dir(context: Any) -> Path:
    """The folder relative paths start from: the scenario file's, or the working directory."""
    if isinstance(context, Mapping) and context.get("base_dir") is not None:
        return Path(context["base_dir"])
    return Path.cwd()


def _existing_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve against the scenario folder and fail now rather than mid-simulation."""
    resolved = (_context_base_dir(info.context) / value.expanduser()).resolve()
    if not resolved.exists():
        raise ValueError(f"not found: {resolved}")
    return resolved


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*[0-9]*\.?[0-9]+\s*(ms|s|m|h|d)?\s*$"},
            ],
            "description": "seconds, or a number with a unit: ms, s, m, h, d (e.g. 90m, 1h)",
        }
    ),
]
ExistingPath = Annotated[Path, AfterValidator(_existing_path)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SynthSource(_Model):
    """Traffic synthesised from a rate series (requests/s over time) and a pool of request lengths."""

    rate: ExistingPath = Field(description="CSV rate series (time, rate)")
    peak_rps: PositiveFloat | None = Field(
        default=None, description="rescale the series so its peak is this many requests/s; None keeps it as is"
    )
    start_s: Duration = Field(default=0.0, description="where in the rate series to start")
    lengths: ExistingPath = Field(description="trace whose (input, output) lengths are sampled")
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
            raise _FieldProblem("lengths_format", f"required for {self.lengths.name}: one of azure, mooncake, csv")
        return self


class TraceSource(_Model):
    """Where an endpoint's requests come from (a trace file or a synthesis), and how to reshape them."""

    path: ExistingPath | None = None
    format: TraceFormat | None = Field(default=None, description="required unless `path` ends in .jsonl (mooncake)")
    synth: SynthSource | None = None
    rate_scale: PositiveFloat = Field(
        default=1.0, description=">1 replicates requests (jittered copies), <1 thins them; also for synth traffic"
    )
    time_scale: PositiveFloat = Field(default=1.0, description=">1 stretches time, <1 compresses it")
    offset_s: Duration = 0.0
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
        if isinstance(data, Mapping) and data.get("format") is None and isinstance(data.get("path"), str):
            if Path(data["path"]).suffix.lower() == ".jsonl":
                return {**data, "format": "mooncake"}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> TraceSource:
        if (self.path is None) == (self.synth is None):
            raise _FieldProblem("", "give exactly one of `path` (a trace file) or `synth` (a synthesis)")
        if self.synth is not None and self.format is not None:
            raise _FieldProblem("format", "applies to `path` traces only; use synth.lengths_format")
        if self.path is not None and self.format is None:
            raise _FieldProblem("format", f"required for {self.path.name}: one of azure, mooncake, csv")
        return self


class PoolConfig(_Model):
    """One pool's engine profile, GPUs, replica bounds and the engine knobs the simulator models."""

    profile: ExistingPath = Field(description="engine performance profile folder")
    gpu_type: str = Field(min_length=1, description="a key of the scenario's `gpus`")
    gpus_per_replica: int = Field(default=1, ge=1)
    min: int = Field(default=0, ge=0)
    max: int = Field(ge=0)
    initial: int = Field(default=0, ge=0, description="replicas at t=0; defaults to `min`")
    startup_s: Duration = Field(default=60.0, description="time from scale-up decision to a ready replica")
    max_batch_tokens: int = Field(default=8192, ge=1, description="prefill chunk / token budget per iteration")
    max_num_seqs: int = Field(default=256, ge=1, description="cap on sequences decoded together")
    kv_bytes_per_token: int = Field(default=131072, ge=1, description="KV cache size of one token, bytes")
    kv_transfer_gbps: PositiveFloat = Field(
        default=50.0, description="prefill -> decode KV transfer bandwidth, gigabits per second (disagg only)"
    )
    prefix_cache: bool = Field(
        default=True, description="prefill/agg replicas reuse cached KV prefixes (traces with Mooncake hash_ids)"
    )

    @model_validator(mode="before")
    @classmethod
    def _initial_defaults_to_min(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "initial" not in data and "min" in data:
            return {**data, "initial": data["min"]}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.max < self.min:
            raise _FieldProblem("max", f"must be >= min ({self.min}), got {self.max}")
        if not self.min <= self.initial <= self.max:
            raise _FieldProblem("initial", f"must be within [min, max] = [{self.min}, {self.max}], got {self.initial}")
        return self


class EndpointConfig(_Model):
    """An endpoint's traffic and the SLA every request on it is judged by."""

    sla: SLA
    trace: TraceSource


class DeploymentConfig(_Model):
    """One deployment (DGD) serving an endpoint for a tenant with its pools."""

    name: str = Field(description="unique, lowercase letters, digits and '-' (a Kubernetes name)")
    tenant: str = Field(min_length=1)
    endpoint: str = Field(min_length=1)
    mode: DeploymentMode
    pools: dict[str, PoolConfig] = Field(description="disagg: prefill and decode; agg: agg")
    sla: SLA | None = Field(default=None, description="only when the deployment is alone on its endpoint")
    trace: TraceSource | None = Field(default=None, description="only when the deployment is alone on its endpoint")

    @field_validator("name")
    @classmethod
    def _kubernetes_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"must be 1-63 lowercase letters, digits or '-', starting and ending alphanumeric, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _pools_match_mode(self) -> DeploymentConfig:
        expected = _ROLES_BY_MODE[self.mode]
        if set(self.pools) != set(expected):
            got = ", ".join(self.pools) or "none"
            raise _FieldProblem("pools", f"mode {self.mode} needs exactly pools {', '.join(expected)}; got {got}")
        return self


class PlannerConfig(BaseModel):
    """Which policy plans the fleet and how often; extra keys are the policy's own options."""

    model_config = ConfigDict(frozen=True, extra="allow")

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


class Scenario(_Model):
    """A complete simulation setup. Build it with :func:`load_scenario` (or :func:`parse_scenario`)."""

    name: str = Field(min_length=1)
    duration_s: Duration = Field(alias="duration", gt=0, description="simulated time")
    seed: int = Field(default=0, ge=0)
    gpus: dict[str, Annotated[int, Field(ge=0)]] = Field(description="fleet inventory: GPUs per type")
    planner: PlannerConfig
    endpoints: dict[str, EndpointConfig] = Field(
        default_factory=dict, description="needed only for endpoints served by several deployments"
    )
    deployments: list[DeploymentConfig] = Field(min_length=1)

    _base_dir: Path = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._base_dir = _context_base_dir(context)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the scenario were resolved against."""
        return self._base_dir

    @model_validator(mode="after")
    def _cross_check(self) -> Scenario:
        names: dict[str, int] = {}
        for i, deployment in enumerate(self.deployments):
            if deployment.name in names:
                raise _FieldProblem(
                    f"deployments[{i}].name",
                    f"duplicate deployment name {deployment.name!r} (also deployments[{names[deployment.name]}])",
                )
            names[deployment.name] = i
            for role, pool in deployment.pools.items():
                if pool.gpu_type not in self.gpus:
                    raise _FieldProblem(
                        f"deployments[{i}].pools.{role}.gpu_type",
                        f"unknown GPU type {pool.gpu_type!r} (gpus: {', '.join(self.gpus) or 'none'})",
                    )
        self._check_endpoints()
        self._check_inventory()
        return self

    def _check_endpoints(self) -> None:
        """Every endpoint gets exactly one SLA and one trace, from `endpoints:` or its lone deployment."""
        for endpoint in self.endpoints:
            if not self.deployments_of(endpoint):
                raise _FieldProblem(f"endpoints.{endpoint}", "no deployment serves this endpoint")
        for i, deployment in enumerate(self.deployments):
            endpoint = deployment.endpoint
            own = [key for key in ("sla", "trace") if getattr(deployment, key) is not None]
            if endpoint in self.endpoints:
                if own:
                    raise _FieldProblem(
                        f"deployments[{i}].{own[0]}",
                        f"ambiguous: endpoint {endpoint!r} already has its {own[0]} under "
                        f"endpoints.{endpoint}; keep one",
                    )
                continue
            sharing = self.deployments_of(endpoint)
            if len(sharing) > 1:
                raise _FieldProblem(
                    f"deployments[{i}].endpoint",
                    f"endpoint {endpoint!r} is served by {', '.join(sharing)}: give it an entry under "
                    f"endpoints.{endpoint} with its sla and trace",
                )
            for key in ("sla", "trace"):
                if getattr(deployment, key) is None:
                    raise _FieldProblem(
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
                raise _FieldProblem(f"gpus.{gpu_type}", problem)

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
        specs = []
        for deployment in self.deployments:
            pools = pool_specs(deployment.name, deployment.pools, _ROLE_ORDER)
            specs.append(
                DeploymentSpec(
                    name=deployment.name,
                    tenant=deployment.tenant,
                    endpoint=deployment.endpoint,
                    mode=deployment.mode,
                    sla=self.endpoint_of(deployment.name)[0],
                    pools=pools,
                )
            )
        return specs

    def _deployment(self, name: str) -> DeploymentConfig:
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
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError(f"cannot read the scenario: {reason}", file=path) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"invalid YAML{where}: {problem}", file=path) from exc
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
        raise _input_error(exc, file, set(overrides or {})) from None


def _input_error(exc: ValidationError, file: str | Path | None, overridden: set[str]) -> InputError:
    """The first pydantic error as one InputError with a dotted field path and a plain problem."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    loc = error["loc"]
    field = _dotted(loc)
    kind = error["type"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldProblem):
        field = ".".join(part for part in (field, cause.field) if part)
        problem = cause.problem
    elif kind == "value_error":
        problem = str(cause) if cause is not None else error["msg"]
    elif kind == "missing":
        problem = "required field is missing"
    elif kind == "extra_forbidden":
        expected = _expected_keys(loc[:-1])
        problem = "unknown key" + (f" (expected one of: {', '.join(expected)})" if expected else "")
    elif isinstance(error.get("input"), (Mapping, list)):
        problem = error["msg"]
    else:
        problem = f"{error['msg']} (got {error['input']!r})"
    if any(field == _OVERRIDE_FIELDS[key] for key in overridden):
        problem += " (value from an override)"
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InputError(problem, file=file, field=field or None)


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``("deployments", 1, "pools", "agg", "min")`` -> ``deployments[1].pools.agg.min``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("["):
            out += part
        else:
            out += f".{part}" if out else part
    return out


def _expected_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at ``loc`` accepts, to suggest them next to an unknown one."""
    node: Any = Scenario
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = {info.alias or name: info for name, info in node.model_fields.items()}
            if part not in fields:
                return []
            node = fields[part].annotation
        else:
            args = typing.get_args(node)
            if not args:
                return []
            node = args[-1]  # list[X] -> X, dict[K, V] -> V
        if typing.get_origin(node) in (typing.Union, types.UnionType):
            node = next(arg for arg in typing.get_args(node) if arg is not type(None))
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [info.alias or name for name, info in node.model_fields.items()]
    return []
