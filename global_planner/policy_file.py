"""Tenant policy files: who may use which GPUs, validated loudly, reloaded safely.

A mistake in a policy file must stop the planner from starting (one clear line naming the file,
the path inside it and the problem), but a bad *edit* of a running planner's file must not take
the fleet down: :class:`PolicyWatcher` keeps the last good policy and counts the failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Literal
from weakref import WeakKeyDictionary

import yaml
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet_planner.errors import InputError, read_input_text
from fleet_planner.yaml_input import load_yaml
from global_planner.allocation.models import MAX_GPUS, POLICY_STRICT, PoolOverride, Stability, TenantLimits

log = logging.getLogger(__name__)


class FleetInventory(BaseModel):
    """GPUs the fleet owns per type; in a simulation the scenario's inventory wins."""

    model_config = ConfigDict(frozen=True, extra="forbid", **POLICY_STRICT)
    gpus: dict[str, int] = Field(min_length=1)

    @model_validator(mode="after")
    def _non_negative(self) -> FleetInventory:
        for gpu, count in self.gpus.items():
            if not 0 <= count <= MAX_GPUS:
                raise InputError(f"must be within [0, {MAX_GPUS}] (got {count})", field=f"fleet.gpus.{gpu}")
        return self


class TenantPolicy(BaseModel):
    """A whole policy file: inventory, tenants and per-deployment overrides (later ones win)."""

    model_config = ConfigDict(frozen=True, extra="forbid", **POLICY_STRICT)
    fleet: FleetInventory
    tenants: dict[str, TenantLimits] = Field(default_factory=dict)
    deployments: list[PoolOverride] = Field(default_factory=list)
    endpoint_split: Literal["capacity", "cost"] = Field(
        default="capacity",
        description="how an endpoint served by several deployments is split among them: fixed by each "
        "deployment's capacity at max_replicas, or by cost and capacity, chosen each round (opt-in: measured "
        "worse on the shortage examples, docs/global-planner.md)",
    )
    stability: Stability = Field(
        default_factory=Stability,
        description="how much a change of grant must be worth (horizon, cold start, hysteresis, evidence "
        "gate, bid check); the defaults are the measured ones (docs/global-planner.md, Stable grants)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TenantPolicy:
        gpus = self.fleet.gpus
        promised = dict.fromkeys(gpus, 0)
        for name, tenant in self.tenants.items():
            if not name or "/" in name:
                raise InputError("tenant names must be non-empty and contain no '/'", field=f"tenants.{name}")
            for table in ("guaranteed_gpus", "max_gpus"):
                for gpu in getattr(tenant, table):
                    if gpu not in gpus:
                        raise InputError(
                            f"unknown GPU type {gpu!r} (fleet has {', '.join(sorted(gpus))})",
                            field=f"tenants.{name}.{table}.{gpu}",
                        )
            for gpu, floor in tenant.guaranteed_gpus.items():
                cap = tenant.max_gpus.get(gpu)
                if cap is not None and floor > cap:
                    raise InputError(
                        f"guaranteed {floor} exceeds max_gpus {cap}", field=f"tenants.{name}.guaranteed_gpus.{gpu}"
                    )
                promised[gpu] += floor
                if promised[gpu] > gpus[gpu]:
                    raise InputError(
                        f"guarantees add up to {promised[gpu]} {gpu}, more than the fleet's {gpus[gpu]}",
                        field=f"tenants.{name}.guaranteed_gpus.{gpu}",
                    )
        return self


def _location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_policy(text: str, file: str | Path) -> TenantPolicy:
    """Validate policy YAML; every problem raises :class:`InputError` naming file and path."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise InputError(f"invalid YAML: {error}", file=file) from error
    if not isinstance(data, dict):
        raise InputError("must be a mapping with 'fleet', 'tenants' and optional 'deployments'", file=file)
    try:
        return TenantPolicy.model_validate(data)
    except ValidationError as error:
        problems: list[tuple[str, str]] = []
        for item in error.errors():
            cause = (item.get("ctx") or {}).get("error")
            if isinstance(cause, InputError):
                problems.append((cause.field or _location(item["loc"]), cause.problem))
            else:
                message = item["msg"].removeprefix("Value error, ")
                problems.append((_location(item["loc"]), message))
        field, problem = problems[0]
        if len(problems) > 1:
            problem += "; also " + "; ".join(f"{f}: {p}" for f, p in problems[1:])
        raise InputError(problem, file=file, field=field or None) from error


def load_policy_file(path: str | Path) -> TenantPolicy:
    """Read and validate a tenant policy file."""
    return parse_policy(read_input_text(path), path)


def policy_json_schema() -> dict[str, object]:
    """JSON schema of :class:`TenantPolicy`, for editors and CI checks of policy files."""
    return TenantPolicy.model_json_schema()


def write_policy_schema(path: str | Path) -> None:
    """Regenerate the committed schema file (``policies/tenant-policy.schema.json``)."""
    Path(path).write_text(json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


_reload_errors: WeakKeyDictionary[CollectorRegistry, Counter] = WeakKeyDictionary()


def _reload_error_counter(registry: CollectorRegistry) -> Counter:
    """One counter per registry, so several watchers (and tests) can share or isolate it."""
    if registry not in _reload_errors:
        _reload_errors[registry] = Counter(
            "fleet_planner_policy_reload_errors",
            "Policy file reloads rejected as invalid (the previous policy stays in force)",
            registry=registry,
        )
    return _reload_errors[registry]


class PolicyWatcher:
    """Holds the current policy of one file and reloads it when the file changes.

    The first load must succeed (raises :class:`InputError`); later invalid versions are
    rejected: the old policy stays, ``last_error`` says why, the reload-error counter grows and one
    warning is logged per rejected edit. An edit back to the policy in force clears the error.
    """

    def __init__(self, path: str | Path, registry: CollectorRegistry | None = None):
        self.path = Path(path)
        self._errors = _reload_error_counter(registry if registry is not None else REGISTRY)
        self.last_error: InputError | None = None
        text = self._read()
        self.policy = parse_policy(text, self.path)
        self._stamp = self._stat()
        self._digest = hashlib.sha256(text.encode()).hexdigest()

    def _read(self) -> str:
        return read_input_text(self.path)

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def poll(self) -> bool:
        """Reload if the file changed; True only when a new, valid policy took effect."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            text = self._read()
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest == self._digest:
                if self.last_error is not None:
                    log.info("policy %s is back to the policy in force", self.path)
                self.last_error = None
                return False
            policy = parse_policy(text, self.path)
        except InputError as error:
            self.last_error = error
            self._errors.inc()
            log.warning("policy reload rejected, keeping the previous one: %s", error)
            return False
        self.policy, self._digest, self.last_error = policy, digest, None
        return True


if __name__ == "__main__":
    write_policy_schema(Path(__file__).resolve().parents[1] / "policies" / "tenant-policy.schema.json")
