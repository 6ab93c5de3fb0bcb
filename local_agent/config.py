"""The live agent's configuration file (``fleet-planner agent --config FILE``).

One YAML file describes the deployment the agent plans, its options, where observations come from
(Prometheus), how targets are applied (a connector) and how the agent is reached (telemetry). It is
validated completely at start, and the first problem is one :class:`InputError` naming the file
and the field (``deployment.pools.agg.max``). Relative paths are resolved against the file's folder.

Prometheus query templates use ``$name`` placeholders (PromQL itself is full of braces):

- ``$window``: the observation window as a PromQL duration (``60s``),
- ``$frontend``: label matchers of the deployment's frontend (request-level metrics),
- ``$worker``: label matchers of one pool's engines (iteration-level metrics),
- ``$deployment``, ``$role``: the deployment name and pool role (usable in the matchers too).

The defaults target NVIDIA Dynamo's frontend (``dynamo_frontend_*``, labelled by
``dynamo_namespace``) in front of vLLM engines (``vllm:*``, labelled by ``dynamo_component``); adjust
``labels`` to how your Prometheus labels the targets, and any query to your engine. A query set to
``null`` is not asked, and its field stays missing (None), which the agent handles.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from string import Template
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
    field_validator,
    model_validator,
)

from fleet_planner.durations import parse_duration
from fleet_planner.errors import InputError
from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA, DeploymentMode, DeploymentSpec, PoolRole, pool_specs
from local_agent.agent import AgentOptions
from local_agent.connectors.kubernetes.config import KubernetesConnectorConfig
from local_agent.connectors.processes import WorkerCommand

ROLES_BY_MODE: dict[str, tuple[PoolRole, ...]] = {"disagg": ("prefill", "decode"), "agg": ("agg",)}
PLACEHOLDERS = ("window", "frontend", "worker", "deployment", "role")
LABEL_PLACEHOLDERS = ("deployment", "role")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


class _FieldProblem(ValueError):
    """A model-level check failing on one field; ``field`` is relative to the model validated."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, Mapping) and context.get("base_dir") is not None:
        return Path(context["base_dir"])
    return Path.cwd()


def _resolved(value: Path, info: ValidationInfo) -> Path:
    return (_base_dir(info) / value.expanduser()).resolve()


def _existing(value: Path, info: ValidationInfo) -> Path:
    """Referenced inputs must exist now, not fail minutes into the run."""
    path = _resolved(value, info)
    if not path.exists():
        raise ValueError(f"not found: {path}")
    return path


def _template(placeholders: tuple[str, ...]) -> Any:
    def check(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            Template(value).substitute(dict.fromkeys(placeholders, "x"))
        except KeyError as exc:
            raise ValueError(
                f"unknown placeholder ${exc.args[0]} (known: {', '.join('$' + p for p in placeholders)})"
            ) from None
        except ValueError as exc:
            raise ValueError(f"malformed placeholder ({exc}); write $$ for a literal $") from None
        return value

    return AfterValidator(check)


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:80`` for IPv6) -> (host, port); ValueError on anything else."""
    match = _HOST_PORT.match(value.strip())
    if not match or not 0 <= int(match.group("port")) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return match.group("host").strip("[]"), int(match.group("port"))


def _host_port(value: str) -> str:
    parse_host_port(value)
    return value.strip()


def _host_ports(value: str) -> str:
    """``HOST:PORT[,HOST:PORT...]``: several planner replicas, tried in turn."""
    parts = [part.strip() for part in value.split(",")]
    for part in parts:
        parse_host_port(part)
    return ",".join(parts)


Duration = Annotated[float, BeforeValidator(parse_duration)]
ResolvedPath = Annotated[Path, AfterValidator(_resolved)]
ExistingPath = Annotated[Path, AfterValidator(_existing)]
QueryTemplate = Annotated[str | None, _template(PLACEHOLDERS)]
LabelTemplate = Annotated[str, _template(LABEL_PLACEHOLDERS)]
HostPort = Annotated[str, AfterValidator(_host_port)]
HostPorts = Annotated[str, AfterValidator(_host_ports)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PoolConfig(_Model):
    """One pool: its engine profile, GPUs and replica bounds."""

    profile: ExistingPath = Field(description="engine performance profile folder")
    gpu_type: str = Field(min_length=1)
    gpus_per_replica: int = Field(default=1, ge=1)
    min: int = Field(default=0, ge=0)
    max: int = Field(ge=0)
    initial: int | None = Field(default=None, ge=0, description="replicas before any are observed; default min")
    startup_s: Duration = Field(default=60.0, description="time from a scale-up decision to a ready replica")

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.max < self.min:
            raise _FieldProblem("max", f"must be >= min ({self.min}), got {self.max}")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise _FieldProblem("initial", f"must be within [min, max] = [{self.min}, {self.max}], got {self.initial}")
        return self


class DeploymentConfig(_Model):
    """The deployment (DGD) this agent plans."""

    name: str = Field(min_length=1)
    tenant: str = Field(min_length=1)
    endpoint: str = Field(min_length=1)
    mode: DeploymentMode
    sla: SLA
    pools: dict[PoolRole, PoolConfig]

    @model_validator(mode="after")
    def _pools_match_mode(self) -> DeploymentConfig:
        expected = ROLES_BY_MODE[self.mode]
        if set(self.pools) != set(expected):
            raise _FieldProblem(
                "pools",
                f"mode {self.mode} needs exactly pools {', '.join(expected)}; got {', '.join(self.pools) or 'none'}",
            )
        return self

    def spec(self) -> DeploymentSpec:
        pools = pool_specs(self.name, self.pools, ROLES_BY_MODE[self.mode])
        return DeploymentSpec(
            name=self.name, tenant=self.tenant, endpoint=self.endpoint, mode=self.mode, sla=self.sla, pools=pools
        )


class PrometheusLabels(_Model):
    """Label matchers (without braces) selecting the deployment's series."""

    frontend: LabelTemplate = Field(default='dynamo_namespace="$deployment"', description="request-level metrics")
    worker: LabelTemplate = Field(
        default='dynamo_namespace="$deployment",dynamo_component="$role"', description="one pool's engine metrics"
    )


class PrometheusQueries(_Model):
    """PromQL per observation field (``null`` = not observed). Each must return one sample."""

    admitted: QueryTemplate = Field(
        default="sum(increase(dynamo_frontend_requests_total{$frontend}[$window]))",
        description="requests admitted in the window: a counter of *incoming* requests, not completions",
    )
    queued_requests: QueryTemplate = Field(default="sum(vllm:num_requests_waiting{$worker})")
    queued_prefill_tokens: QueryTemplate = Field(
        default=(
            "sum(vllm:num_requests_waiting{$worker}) * sum(increase(vllm:request_prompt_tokens_sum{$worker}[$window]))"
            " / sum(increase(vllm:request_prompt_tokens_count{$worker}[$window]))"
        ),
        description="vLLM has no queued-token gauge: waiting requests x mean prompt length",
    )
    active_kv_tokens: QueryTemplate = Field(
        default="sum(dynamo_component_kvstats_active_blocks{$worker}) * 16", description="KV blocks in use x block size"
    )
    kv_capacity_tokens: QueryTemplate = Field(default="sum(dynamo_component_kvstats_total_blocks{$worker}) * 16")
    iteration_ms: QueryTemplate = Field(
        default=(
            "1000 * sum(increase(vllm:inter_token_latency_seconds_sum{$worker}[$window]))"
            " / sum(increase(vllm:inter_token_latency_seconds_count{$worker}[$window]))"
        ),
        description="mean engine iteration wall time; the gap between a running request's tokens is one iteration",
    )
    scheduled_tokens_per_s: QueryTemplate = Field(
        default="sum(rate(vllm:iteration_tokens_total_sum{$worker}[$window]))"
    )


class PrometheusHistograms(_Model):
    """Histogram metric names (without ``_bucket``); quantiles, mean and count are derived."""

    input_tokens: str | None = "dynamo_frontend_input_sequence_tokens"
    output_tokens: str | None = "dynamo_frontend_output_sequence_tokens"
    ttft_seconds: str | None = "dynamo_frontend_time_to_first_token_seconds"
    itl_seconds: str | None = "dynamo_frontend_inter_token_latency_seconds"

    @field_validator("*")
    @classmethod
    def _metric_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", value):
            raise ValueError(f"not a Prometheus metric name: {value!r}")
        return value


class PrometheusConfig(_Model):
    """Where observations come from: instant queries against the Prometheus HTTP API."""

    url: str = Field(pattern=r"^https?://", description="base URL, e.g. http://prometheus:9090")
    window: Duration = Field(default=60.0, ge=1.0, description="observation window; at least two scrape intervals")
    timeout_s: Duration = Field(default=5.0, gt=0)
    labels: PrometheusLabels = PrometheusLabels()
    queries: PrometheusQueries = PrometheusQueries()
    histograms: PrometheusHistograms = PrometheusHistograms()


class ProcessesConnectorConfig(_Model):
    """Local worker processes (one per replica), re-adopted from the state file on restart."""

    kind: Literal["processes"]
    state_file: ResolvedPath
    run_dir: ResolvedPath | None = None
    drain_timeout_s: Duration = 300.0
    roles: dict[PoolRole, WorkerCommand]


class VirtualConnectorConfig(_Model):
    """An external orchestrator applies the targets written to ``path``."""

    kind: Literal["virtual"]
    path: ResolvedPath
    replicas_from: Literal["file", "prometheus"] = Field(
        default="file", description="file: the orchestrator reports counts in the same file; prometheus: ready_query"
    )
    ready_query: QueryTemplate = Field(default="sum(up{$worker})", description="ready replicas of one pool")
    max_report_age_s: Duration | None = Field(default=None, description="older orchestrator reports count as missing")

    @model_validator(mode="after")
    def _ready_query_when_needed(self) -> VirtualConnectorConfig:
        if self.replicas_from == "prometheus" and self.ready_query is None:
            raise _FieldProblem("ready_query", "needed with replicas_from: prometheus")
        return self


ConnectorConfig = Annotated[
    ProcessesConnectorConfig | VirtualConnectorConfig | KubernetesConnectorConfig, Field(discriminator="kind")
]


class TelemetryConfig(_Model):
    """The agent's HTTP face: dashboard, /metrics and the authenticated control endpoint."""

    listen: HostPort = "0.0.0.0:9100"
    token_env: str | None = Field(default=None, description="environment variable holding the control token")
    token_file: ResolvedPath | None = Field(default=None, description="file holding the control token")
    diagnostics_dir: ResolvedPath | None = Field(default=None, description="periodic HTML reports; none if unset")
    diagnostics_every: Duration = Field(default=3600.0, ge=1.0)
    dashboard_refresh_s: Duration = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _one_token_source(self) -> TelemetryConfig:
        if (self.token_env is None) == (self.token_file is None):
            raise _FieldProblem(
                "token_env", "give exactly one of token_env or token_file (the control endpoint needs a token)"
            )
        return self


class AgentConfig(_Model):
    """A complete live agent. Build it with :func:`load_config`."""

    deployment: DeploymentConfig
    options: AgentOptions = AgentOptions()
    tick_s: Duration = Field(default=5.0, gt=0)
    prometheus: PrometheusConfig
    connector: ConnectorConfig
    telemetry: TelemetryConfig | None = None
    planner: HostPorts | None = Field(
        default=None, description="HOST:PORT of the global planner (comma-separated: replicas); standalone if unset"
    )

    _file: Path | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if isinstance(context, Mapping) and context.get("file") is not None:
            self._file = Path(context["file"])

    @model_validator(mode="after")
    def _connector_roles(self) -> AgentConfig:
        if isinstance(self.connector, ProcessesConnectorConfig):
            expected = set(self.deployment.pools)
            if set(self.connector.roles) != expected:
                raise _FieldProblem(
                    "connector.roles",
                    f"need a worker command for exactly the pools {', '.join(sorted(expected))};"
                    f" got {', '.join(self.connector.roles) or 'none'}",
                )
        if isinstance(self.connector, KubernetesConnectorConfig) and self.connector.services:
            extra = sorted(set(self.connector.services) - set(self.deployment.pools))
            if extra:
                raise _FieldProblem("connector.services", f"no such pool(s): {', '.join(extra)}")
        return self

    @property
    def file(self) -> Path | None:
        return self._file

    def spec(self) -> DeploymentSpec:
        return self.deployment.spec()

    def with_planner(self, address: str) -> AgentConfig:
        """A copy with the global planner's address (e.g. from ``--planner``), validated."""
        try:
            address = _host_ports(address)
        except ValueError as exc:
            raise InputError(str(exc), field="--planner") from None
        copy = self.model_copy(update={"planner": address})
        copy._file = self._file
        return copy

    def control_token(self) -> str:
        """The control endpoint's bearer token, read now (not stored in the config file)."""
        telemetry = self.telemetry
        if telemetry is None:
            raise InputError("no telemetry section: the control endpoint is off", file=self._file, field="telemetry")
        if telemetry.token_env is not None:
            token = os.environ.get(telemetry.token_env, "").strip()
            if not token:
                raise InputError(
                    f"environment variable {telemetry.token_env} is unset or empty",
                    file=self._file,
                    field="telemetry.token_env",
                )
            return token
        assert telemetry.token_file is not None  # guaranteed by TelemetryConfig
        try:
            token = telemetry.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(
                f"cannot read {telemetry.token_file}: {exc.strerror or exc}",
                file=self._file,
                field="telemetry.token_file",
            ) from None
        if not token:
            raise InputError(f"{telemetry.token_file} is empty", file=self._file, field="telemetry.token_file")
        return token

    def engine_models(self) -> dict[PoolRole, PerfModel]:
        """Each pool's performance model; a bad profile names the pool's field."""
        models: dict[Path, PerfModel] = {}
        out: dict[PoolRole, PerfModel] = {}
        for role, pool in self.deployment.pools.items():
            if pool.profile not in models:
                try:
                    models[pool.profile] = PerfModel(load_profile(pool.profile, gpus_per_engine=pool.gpus_per_replica))
                except InputError as exc:
                    raise InputError(str(exc), file=self._file, field=f"deployment.pools.{role}.profile") from None
            out[role] = models[pool.profile]
        return out


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent config file; every problem is one :class:`InputError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the agent config: {getattr(exc, 'strerror', None) or exc}", file=path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}", file=path) from None
    return parse_config(data, base_dir=path.resolve().parent, file=path)


def parse_config(data: Any, *, base_dir: str | Path, file: str | Path | None = None) -> AgentConfig:
    """Validate already-parsed config data; ``file`` only names the source in errors."""
    if not isinstance(data, Mapping):
        raise InputError("the agent config must be a mapping (deployment, prometheus, connector, ...)", file=file)
    try:
        return AgentConfig.model_validate(data, context={"base_dir": Path(base_dir).resolve(), "file": file})
    except ValidationError as exc:
        raise _input_error(exc, file) from None


def _input_error(exc: ValidationError, file: str | Path | None) -> InputError:
    """The first pydantic error as an InputError with a dotted field path (union tags left out)."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    parts: list[str] = []
    for part in error["loc"]:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
        elif part not in ("processes", "virtual", "kubernetes") or not parts or parts[-1] != "connector":
            parts.append(str(part))
    field = ".".join(parts) or None
    kind = error["type"]
    if kind == "missing":
        problem = "required field is missing"
    elif kind == "extra_forbidden":
        problem = "unknown key"
    elif kind == "value_error":
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldProblem):
            field = ".".join(part for part in (field, cause.field) if part)
            problem = cause.problem
        else:
            problem = str(cause) if cause is not None else error["msg"]
    elif isinstance(error.get("input"), (Mapping, list)):
        problem = error["msg"]
    else:
        problem = f"{error['msg']} (got {error['input']!r})"
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InputError(problem, file=file, field=field)
