"""The deployment as both files describe it — the simulator's scenario (``fleet_sim.scenario``) and
the live agent's config (``local_agent.config``) — and the machinery both files share: one frozen
base class, one YAML reader, one way to turn a validation error into a single :class:`InputError`
naming the file and the field (``deployments[1].pools.agg.min``).

A pool or a deployment means the same in both files: the same fields, defaults and checks (an
``initial`` count defaults to ``min``; a deployment's name is a Kubernetes name). The simulator
adds only its engine knobs on top of :class:`PoolConfig`.

Relative paths are resolved against the folder given as ``base_dir`` in the validation context
(the file's folder); inputs (``ExistingFile``, ``ExistingFolder``) must exist at load time.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, ValidationInfo, model_validator

from fleet_planner.bounds import MAX_GPUS_PER_REPLICA, MAX_REPLICAS, MAX_STARTUP_S, EndpointName, Name
from fleet_planner.durations import Duration
from fleet_planner.errors import InputError, path_kind, read_input_text
from fleet_planner.knobs import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_NUM_SEQS
from fleet_planner.planning import (
    SLA,
    DeploymentMode,
    DeploymentSpec,
    FrozenModel,
    PoolRole,
    PoolSpec,
)
from fleet_planner.yaml_input import load_yaml

ROLES_BY_MODE: dict[str, tuple[PoolRole, ...]] = {"disagg": ("prefill", "decode"), "agg": ("agg",)}
KUBERNETES_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class FieldProblem(ValueError):
    """A model-level check failing on one field; ``field`` is relative to the model validated."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def context_base_dir(context: Any) -> Path:
    """The folder relative paths start from: the file's, or the working directory."""
    if isinstance(context, Mapping) and context.get("base_dir") is not None:
        return Path(context["base_dir"])
    return Path.cwd()


def _resolved(value: Path, info: ValidationInfo) -> Path:
    return (context_base_dir(info.context) / value.expanduser()).resolve()


def _existing(value: Path, info: ValidationInfo, *, folder: bool) -> Path:
    """Referenced inputs must exist now, and be of the kind asked for, not fail minutes into the run."""
    path = _resolved(value, info)
    kind = path_kind(path)
    if kind is None:
        raise ValueError(f"not found: {path}")
    if (kind == "folder") != folder:
        raise ValueError(f"is a file, not a folder: {path}" if folder else f"is a folder, not a file: {path}")
    return path


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    return _existing(value, info, folder=False)


def _existing_folder(value: Path, info: ValidationInfo) -> Path:
    return _existing(value, info, folder=True)


ResolvedPath = Annotated[Path, AfterValidator(_resolved)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
ExistingFolder = Annotated[Path, AfterValidator(_existing_folder)]


class PoolConfig(FrozenModel):
    """One pool: its engine profile, GPUs, replica bounds and the engine knobs in force (sizing
    must use what the engine runs with: vLLM's --max-num-batched-tokens / --max-num-seqs)."""

    profile: ExistingFolder = Field(description="engine performance profile folder")
    # Bounded as the planner's registration is, so a config it would refuse fails here, at load.
    gpu_type: Name
    gpus_per_replica: int = Field(default=1, ge=1, le=MAX_GPUS_PER_REPLICA)
    min: int = Field(default=0, ge=0, le=MAX_REPLICAS)
    max: int = Field(ge=0, le=MAX_REPLICAS)
    initial: int = Field(
        default=0, ge=0, le=MAX_REPLICAS, description="replicas at start, before any are observed; defaults to `min`"
    )
    startup_s: Duration = Field(
        default=60.0, le=MAX_STARTUP_S, description="time from a scale-up decision to a ready replica"
    )
    max_batch_tokens: int = Field(
        default=DEFAULT_MAX_BATCH_TOKENS, ge=1, description="prefill chunk / token budget per iteration"
    )
    max_num_seqs: int = Field(default=DEFAULT_MAX_NUM_SEQS, ge=1, description="cap on sequences decoded together")

    @model_validator(mode="before")
    @classmethod
    def _initial_defaults_to_min(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("initial") is None and "min" in data:
            return {**data, "initial": data["min"]}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.max < self.min:
            raise FieldProblem("max", f"must be >= min ({self.min}), got {self.max}")
        if not self.min <= self.initial <= self.max:
            raise FieldProblem("initial", f"must be within [min, max] = [{self.min}, {self.max}], got {self.initial}")
        return self


P = TypeVar("P", bound=PoolConfig)


class DeploymentConfig(FrozenModel, Generic[P]):
    """One deployment (DGD) serving an endpoint for a tenant with its pools."""

    name: str = Field(description="unique, lowercase letters, digits and '-' (a Kubernetes name)")
    tenant: Name
    endpoint: EndpointName
    mode: DeploymentMode
    pools: dict[str, P] = Field(description="disagg: prefill and decode; agg: agg")

    @model_validator(mode="after")
    def _checked(self) -> DeploymentConfig[P]:
        if not KUBERNETES_NAME.match(self.name):
            raise FieldProblem(
                "name",
                f"must be 1-63 lowercase letters, digits or '-', starting and ending alphanumeric, got {self.name!r}",
            )
        expected = ROLES_BY_MODE[self.mode]
        if set(self.pools) != set(expected):
            got = ", ".join(self.pools) or "none"
            raise FieldProblem("pools", f"mode {self.mode} needs exactly pools {', '.join(expected)}; got {got}")
        return self

    def to_spec(self, sla: SLA) -> DeploymentSpec:
        """What a planner is handed: the deployment with its SLA and pool bounds."""
        pools = {
            role: PoolSpec(
                deployment=self.name,
                role=role,
                profile_path=str(pool.profile),
                gpu_type=pool.gpu_type,
                gpus_per_replica=pool.gpus_per_replica,
                min_replicas=pool.min,
                max_replicas=pool.max,
                initial_replicas=pool.initial,
                startup_s=pool.startup_s,
                max_batch_tokens=pool.max_batch_tokens,
                max_num_seqs=pool.max_num_seqs,
            )
            for role in ROLES_BY_MODE[self.mode]
            if (pool := self.pools.get(role)) is not None
        }
        return DeploymentSpec(
            name=self.name, tenant=self.tenant, endpoint=self.endpoint, mode=self.mode, sla=sla, pools=pools
        )


def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML document at ``path``; unreadable files and bad syntax are one InputError."""
    text = read_input_text(path, what)
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}", file=path) from None


def input_error(
    exc: ValidationError, root: type[BaseModel], file: str | Path | None, suffix: Mapping[str, str] | None = None
) -> InputError:
    """The first pydantic error as one InputError with a dotted field path and a plain problem.

    ``root`` is the model validated (to suggest the keys it accepts next to an unknown one, and to
    leave a tagged union's tag out of the path); ``suffix`` adds a note to a field's problem
    (e.g. that its value came from a command-line override)."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    loc, expected = _walk(root, error["loc"])
    field = _dotted(loc)
    kind = error["type"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldProblem):
        field = ".".join(part for part in (field, cause.field) if part)
        problem = cause.problem
    elif kind == "value_error":
        problem = str(cause) if cause is not None else error["msg"]
    elif kind == "missing":
        problem = "required field is missing"
    elif kind == "extra_forbidden":
        problem = "unknown key" + (f" (expected one of: {', '.join(expected)})" if expected else "")
    elif isinstance(error.get("input"), (Mapping, list)):
        problem = error["msg"]
    else:
        problem = f"{error['msg']} (got {error['input']!r})"
    if suffix and field in suffix:
        problem += f" ({suffix[field]})"
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InputError(problem, file=file, field=field or None)


def _walk(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[list[int | str], list[str]]:
    """``loc`` without union tags, and the keys the model holding its last part accepts."""
    node: Any = root
    kept: list[int | str] = []
    keys: list[str] = []
    for part in loc:
        members = _models_of_union(node)
        if members:  # a union's member: pydantic puts its tag into the path
            node = next((m for m in members if part in (m.__name__, *_tags(m))), members[0])
            continue
        kept.append(part)
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = {info.alias or name: info for name, info in node.model_fields.items()}
            keys = list(fields)
            node = fields[part].annotation if part in fields else None
        else:
            args = typing.get_args(node)
            node = args[-1] if args else None  # list[X] -> X, dict[K, V] -> V
        if typing.get_origin(node) in (typing.Union, types.UnionType) and not _models_of_union(node):
            node = next((arg for arg in typing.get_args(node) if arg is not type(None)), None)
    return kept, keys


def _models_of_union(node: Any) -> list[type[BaseModel]]:
    """The models of a union of several models (a tagged union); empty for anything else."""
    if typing.get_origin(node) is Annotated:
        node = typing.get_args(node)[0]
    if typing.get_origin(node) not in (typing.Union, types.UnionType):
        return []
    models = [arg for arg in typing.get_args(node) if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return models if len(models) > 1 else []


def _tags(model: type[BaseModel]) -> tuple[str, ...]:
    """The literal values of a model's fields (a discriminator's tag is one of them)."""
    return tuple(
        value
        for info in model.model_fields.values()
        if typing.get_origin(info.annotation) is typing.Literal
        for value in typing.get_args(info.annotation)
        if isinstance(value, str)
    )


def _dotted(loc: list[int | str]) -> str:
    """``["deployments", 1, "pools", "agg", "min"]`` -> ``deployments[1].pools.agg.min``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("["):
            out += part
        else:
            out += f".{part}" if out else part
    return out
