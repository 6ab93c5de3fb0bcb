"""The live agent's configuration file (``fleet-planner agent --config FILE``).

One YAML file describes the deployment the agent plans, its options, where observations come from
(Prometheus), how targets are applied (a connector) and how the agent is reached (telemetry). It is
validated completely at start, and the first problem is one :class:`InputError` naming the file
and the field (``deployment.pools.agg.max``). Relative paths of inputs (profiles, TLS material,
token files) are resolved against the file's folder; relative paths of what the agent *writes*
(connector state, diagnostics) against its state folder (``state_dir``, default
``fleet-agent-state`` in the working directory), so running the example never writes into the
repository. The deployment and its pools are the same model as in a simulator scenario
(:mod:`fleet_planner.deployment`).

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
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
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
    ResolvedPath,
    input_error,
    read_yaml,
)
from fleet_planner.durations import Duration
from fleet_planner.errors import InputError, unreadable
from fleet_planner.perf import PerfModel, load_profile
from fleet_planner.planning import SLA, DeploymentSpec, FrozenModel, PoolRole
from local_agent.agent import AgentOptions
from local_agent.connectors.kubernetes.config import KubernetesConnectorConfig
from local_agent.connectors.processes import WorkerCommand

PLANNER_TOKEN_ENV = "FLEET_PLANNER_TOKEN"
DEFAULT_STATE_DIR = "fleet-agent-state"
PLACEHOLDERS = ("window", "frontend", "worker", "deployment", "role")
LABEL_PLACEHOLDERS = ("deployment", "role")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


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


def _state_path(value: Path, info: ValidationInfo) -> Path:
    """A file the agent writes: relative to the state folder, never to the config's own folder."""
    context = info.context if isinstance(info.context, Mapping) else {}
    return (Path(context.get("state_dir") or Path.cwd() / DEFAULT_STATE_DIR) / value.expanduser()).resolve()


StatePath = Annotated[Path, AfterValidator(_state_path)]


def _host_ports(value: str) -> str:
    """``HOST:PORT[,HOST:PORT...]``: several planner replicas, tried in turn."""
    parts = [part.strip() for part in value.split(",")]
    for part in parts:
        parse_host_port(part)
    return ",".join(parts)


QueryTemplate = Annotated[str | None, _template(PLACEHOLDERS)]
LabelTemplate = Annotated[str, _template(LABEL_PLACEHOLDERS)]
HostPort = Annotated[str, AfterValidator(_host_port)]
HostPorts = Annotated[str, AfterValidator(_host_ports)]


class AgentDeployment(DeploymentConfig[PoolConfig]):
    """The deployment (DGD) this agent plans: as in a scenario, with its SLA."""

    sla: SLA

    def spec(self) -> DeploymentSpec:
        return self.to_spec(self.sla)


class PrometheusLabels(FrozenModel):
    """Label matchers (without braces) selecting the deployment's series."""

    frontend: LabelTemplate = Field(default='dynamo_namespace="$deployment"', description="request-level metrics")
    worker: LabelTemplate = Field(
        default='dynamo_namespace="$deployment",dynamo_component="$role"', description="one pool's engine metrics"
    )


class PrometheusQueries(FrozenModel):
    """PromQL per observation field (``null`` = not observed). Each must return one sample."""

    admitted: QueryTemplate = Field(
        default="sum(increase(dynamo_frontend_requests_total{$frontend}[$window]))",
        description="requests admitted in the window: a counter of *incoming* requests, not completions",
    )
    endpoint_shed: QueryTemplate = Field(
        default=None,
        description="requests the gateway turned away in the window under the planner's admission limit "
        "(fleet_planner_admission_rps), e.g. the increase of its rate limiter's rejection counter; without it a "
        "shed request is demand the agent never sees, and the planner lifts a limit its own shedding hid",
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


class PrometheusHistograms(FrozenModel):
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


class PrometheusConfig(FrozenModel):
    """Where observations come from: instant queries against the Prometheus HTTP API."""

    url: str = Field(pattern=r"^https?://", description="base URL, e.g. http://prometheus:9090")
    window: Duration = Field(default=60.0, ge=1.0, description="observation window; at least two scrape intervals")
    timeout_s: Duration = Field(default=5.0, gt=0)
    labels: PrometheusLabels = PrometheusLabels()
    queries: PrometheusQueries = PrometheusQueries()
    histograms: PrometheusHistograms = PrometheusHistograms()


class ProcessesConnectorConfig(FrozenModel):
    """Local worker processes (one per replica), re-adopted from the state file on restart."""

    kind: Literal["processes"]
    state_file: StatePath
    run_dir: StatePath | None = None
    drain_timeout_s: Duration = 300.0
    roles: dict[PoolRole, WorkerCommand]


class VirtualConnectorConfig(FrozenModel):
    """An external orchestrator applies the targets written to ``path``."""

    kind: Literal["virtual"]
    path: StatePath
    replicas_from: Literal["file", "prometheus"] = Field(
        default="file", description="file: the orchestrator reports counts in the same file; prometheus: ready_query"
    )
    ready_query: QueryTemplate = Field(default="sum(up{$worker})", description="ready replicas of one pool")
    max_report_age_s: Duration | None = Field(default=None, description="older orchestrator reports count as missing")

    @model_validator(mode="after")
    def _ready_query_when_needed(self) -> VirtualConnectorConfig:
        if self.replicas_from == "prometheus" and self.ready_query is None:
            raise FieldProblem("ready_query", "needed with replicas_from: prometheus")
        return self


ConnectorConfig = Annotated[
    ProcessesConnectorConfig | VirtualConnectorConfig | KubernetesConnectorConfig, Field(discriminator="kind")
]


class TelemetryConfig(FrozenModel):
    """The agent's HTTP face: dashboard, /metrics and the authenticated control endpoint."""

    listen: HostPort = "0.0.0.0:9100"
    token_env: str | None = Field(default=None, description="environment variable holding the control token")
    token_file: ResolvedPath | None = Field(default=None, description="file holding the control token")
    diagnostics_dir: StatePath | None = Field(default=None, description="periodic HTML reports; none if unset")
    diagnostics_every: Duration = Field(default=3600.0, ge=1.0)
    dashboard_refresh_s: Duration = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _one_token_source(self) -> TelemetryConfig:
        if (self.token_env is None) == (self.token_file is None):
            raise FieldProblem(
                "token_env", "give exactly one of token_env or token_file (the control endpoint needs a token)"
            )
        return self


class CheckpointConfig(FrozenModel):
    """The agent's learned state kept across restarts (:mod:`local_agent.checkpoint`)."""

    file: StatePath = Field(
        default=Path("agent-checkpoint.pickle"), validate_default=True, description="relative to state_dir"
    )
    every_s: Duration = Field(default=30.0, ge=1.0, description="how often it is written (and when the agent stops)")
    max_age_s: Duration = Field(
        default=900.0,
        gt=0,
        description="an older checkpoint is set aside and the agent starts cold: the traffic it learned may be gone",
    )


class PlannerLink(FrozenModel):
    """How the agent reaches the global planner: address, TLS material and bearer token.

    TLS: ``ca_file`` alone verifies the planner's certificate (server TLS); ``cert_file`` with
    ``key_file`` also proves the agent's identity (mutual TLS; without ``ca_file`` the system's
    roots verify the planner). None of them: a plaintext channel. The token comes from
    ``token_file`` or else from the environment variable ``token_env``; neither set: no token
    (for planners run without ``--tokens``)."""

    address: HostPorts = Field(description="HOST:PORT of the global planner (comma-separated: replicas, tried in turn)")
    ca_file: ExistingFile | None = Field(default=None, description="PEM CA bundle that signed the planner's cert")
    cert_file: ExistingFile | None = Field(default=None, description="PEM client certificate (mutual TLS)")
    key_file: ExistingFile | None = Field(default=None, description="PEM private key of cert_file")
    token_env: str = Field(default=PLANNER_TOKEN_ENV, min_length=1, description="variable holding the token")
    token_file: ExistingFile | None = Field(default=None, description="file holding the token (wins over token_env)")

    @model_validator(mode="before")
    @classmethod
    def _address_alone(cls, data: Any) -> Any:
        return {"address": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _pair(self) -> PlannerLink:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise FieldProblem(missing, "mutual TLS needs both cert_file and key_file")
        return self

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def read_tls(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(CA, client certificate, client key) as PEM bytes, read now."""
        return tuple(  # type: ignore[return-value]
            _read_secret(path, f"planner.{name}", binary=True) if path is not None else None
            for name, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file), ("key_file", self.key_file))
        )

    def token(self) -> str | None:
        """The bearer token, read now (never stored in the config)."""
        if self.token_file is not None:
            token = _read_secret(self.token_file, "planner.token_file").strip()
            if not token:
                raise InputError(f"{self.token_file} is empty", field="planner.token_file")
            return token
        return os.environ.get(self.token_env, "").strip() or None


def _read_secret(path: Path, field: str, *, binary: bool = False) -> Any:
    """A credential file, read where it is needed (its content is never kept in the config); an
    unreadable one is one InputError naming the config field, like any other input file."""
    try:
        return path.read_bytes() if binary else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {unreadable(exc)}", field=field) from None


class AgentConfig(FrozenModel):
    """A complete live agent. Build it with :func:`load_config`."""

    deployment: AgentDeployment
    options: AgentOptions = AgentOptions()
    tick_s: Duration = Field(
        default=30.0,
        gt=0,
        description="how often the agent decides: the interval every simulated and live-demo figure was measured at",
    )
    report_s: Duration | None = Field(
        default=5.0,
        gt=0,
        description="with a planner, how often between decisions the agent confirms finished drains and, while the "
        "planner says GPUs it allocated wait for them, reports its last decision again (null, or not shorter than "
        "tick_s: only at decisions)",
    )
    prometheus: PrometheusConfig
    connector: ConnectorConfig
    telemetry: TelemetryConfig | None = None
    planner: PlannerLink | None = Field(
        default=None, description="the global planner (or just HOST:PORT); standalone if unset"
    )
    checkpoint: CheckpointConfig | None = Field(
        default_factory=dict,  # validated like a written section: its file goes under state_dir
        validate_default=True,
        description="keep the learned state across restarts (null: every start is cold)",
    )
    state_dir: Path = Field(description="where relative connector and diagnostics paths go (set by the loader)")

    _file: Path | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if isinstance(context, Mapping) and context.get("file") is not None:
            self._file = Path(context["file"])

    @property
    def between_decisions_s(self) -> float | None:
        """How often the agent reports between its decisions: ``report_s`` where a planner is
        configured and it is shorter than ``tick_s``; None (only at decisions) otherwise."""
        if self.planner is None or self.report_s is None or self.report_s >= self.tick_s:
            return None
        return self.report_s

    @model_validator(mode="after")
    def _connector_roles(self) -> AgentConfig:
        if isinstance(self.connector, ProcessesConnectorConfig):
            expected = set(self.deployment.pools)
            if set(self.connector.roles) != expected:
                raise FieldProblem(
                    "connector.roles",
                    f"need a worker command for exactly the pools {', '.join(sorted(expected))};"
                    f" got {', '.join(self.connector.roles) or 'none'}",
                )
            if self.options.tune_knobs:
                blind = sorted(role for role, command in self.connector.roles.items() if not command.takes_knobs)
                if blind:
                    raise FieldProblem(
                        f"connector.roles.{blind[0]}.argv",
                        "options.tune_knobs needs a '{knobs}' item in every worker command (it becomes the"
                        " engine-knob flags)",
                    )
        if isinstance(self.connector, KubernetesConnectorConfig) and self.connector.services:
            extra = sorted(set(self.connector.services) - set(self.deployment.pools))
            if extra:
                raise FieldProblem("connector.services", f"no such pool(s): {', '.join(extra)}")
        return self

    @property
    def file(self) -> Path | None:
        return self._file

    def spec(self) -> DeploymentSpec:
        return self.deployment.spec()

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
                f"cannot read {telemetry.token_file}: {unreadable(exc)}",
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
            out[cast(PoolRole, role)] = models[pool.profile]
        return out


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    """Read and validate an agent config file; every problem is one :class:`InputError`.

    ``overrides`` (dotted keys such as ``planner.address`` or ``state_dir``, e.g. from command-line
    flags) replace what the file says and are validated with it; paths among them should be
    absolute (relative ones are taken relative to the config file)."""
    path = Path(path)
    data = read_yaml(path, "agent config")
    return parse_config(data, base_dir=path.resolve().parent, file=path, overrides=overrides)


def parse_config(
    data: Any, *, base_dir: str | Path, file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> AgentConfig:
    """Validate already-parsed config data; ``file`` only names the source in errors.

    The state folder is ``state_dir`` (relative to the config file), else ``fleet-agent-state``
    in the working directory: files the agent writes never land beside its config by accident."""
    if not isinstance(data, Mapping):
        raise InputError("the agent config must be a mapping (deployment, prometheus, connector, ...)", file=file)
    data = _overridden(data, overrides or {})
    base = Path(base_dir).resolve()
    written = data.get("state_dir")
    state_dir = (
        (base / Path(written).expanduser()).resolve() if isinstance(written, str) else Path.cwd() / DEFAULT_STATE_DIR
    )
    data["state_dir"] = str(state_dir.resolve())
    try:
        return AgentConfig.model_validate(data, context={"base_dir": base, "state_dir": state_dir, "file": file})
    except ValidationError as exc:
        notes = dict.fromkeys(overrides or {}, "value from the command line")
        raise input_error(exc, AgentConfig, file, notes) from None


def _overridden(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with each dotted key of ``overrides`` set (a bare ``planner: HOST:PORT``
    becomes its ``address``)."""
    out = dict(data)
    if isinstance(out.get("planner"), str):
        out["planner"] = {"address": out["planner"]}
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[leaf] = value
    return out
