"""Runtime limits an operator may change while the agent runs, validated before anything changes.

The deployment's static bounds are the hard caps: at run time a pool's min/max may be narrowed or
widened, but only within ``0 <= min <= max <= hard cap``, so an operator typo cannot ask for more
replicas than the deployment was built (and budgeted) for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from fleet_planner.planning import DeploymentSpec, PoolRole
from local_agent.models import RuntimeLimits

log = logging.getLogger(__name__)

Subscriber = Callable[[RuntimeLimits], None]


class LimitsError(ValueError):
    """A proposed change was refused; ``problems`` lists every reason, for the 400 response."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def _validation_problems(err: ValidationError) -> list[str]:
    return [f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()]


class LimitsStore:
    """Holds the current :class:`RuntimeLimits` and tells subscribers when they change.

    ``hard_max`` maps each of the deployment's pool roles to its cap; a role not in it is unknown.
    """

    def __init__(self, hard_max: Mapping[PoolRole, int], initial: RuntimeLimits | None = None):
        if any(cap < 0 for cap in hard_max.values()):
            raise ValueError(f"hard caps must be >= 0, got {dict(hard_max)}")
        self.hard_max = dict(hard_max)
        self._limits = self.validate(initial.model_dump() if initial is not None else {})
        self._subscribers: list[Subscriber] = []

    @classmethod
    def for_deployment(cls, spec: DeploymentSpec, initial: RuntimeLimits | None = None) -> LimitsStore:
        """Caps from the deployment spec's per-pool ``max_replicas``."""
        return cls({role: pool.max_replicas for role, pool in spec.pools.items()}, initial)

    @property
    def current(self) -> RuntimeLimits:
        """A copy: callers cannot change the store's limits behind its back."""
        return self._limits.model_copy(deep=True)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(new_limits)`` after each change; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def validate(self, body: Any) -> RuntimeLimits:
        """Parse a full limits document (JSON-decoded) or raise :class:`LimitsError` with all problems."""
        if not isinstance(body, dict):
            raise LimitsError([f"body must be a JSON object, got {type(body).__name__}"])
        try:
            limits = RuntimeLimits.model_validate(body, strict=True)
        except ValidationError as err:
            raise LimitsError(_validation_problems(err)) from None
        problems: list[str] = []
        for kind, values in (("min_replicas", limits.min_replicas), ("max_replicas", limits.max_replicas)):
            for role, value in values.items():
                if role not in self.hard_max:
                    problems.append(f"{kind}.{role}: unknown pool role (deployment has {sorted(self.hard_max)})")
                elif value < 0:
                    problems.append(f"{kind}.{role}: must be >= 0, got {value}")
                elif value > self.hard_max[role]:
                    problems.append(f"{kind}.{role}: {value} exceeds the deployment's maximum {self.hard_max[role]}")
        for role, low in limits.min_replicas.items():
            high = limits.max_replicas.get(role)
            if high is not None and low > high:
                problems.append(f"min_replicas.{role} ({low}) > max_replicas.{role} ({high})")
        if problems:
            raise LimitsError(problems)
        return limits

    def replace(self, body: Any) -> RuntimeLimits:
        """Set the limits to ``body`` (a full document: omitted fields take their defaults)."""
        return self._apply(self.validate(body))

    def merge(self, body: Any) -> RuntimeLimits:
        """Change only the fields in ``body``; per-role min/max entries merge with the current ones."""
        if not isinstance(body, dict):
            raise LimitsError([f"body must be a JSON object, got {type(body).__name__}"])
        merged = self._limits.model_dump()
        for key, value in body.items():
            if key in ("min_replicas", "max_replicas") and isinstance(value, dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return self._apply(self.validate(merged))

    def _apply(self, limits: RuntimeLimits) -> RuntimeLimits:
        if limits == self._limits:
            return self.current
        self._limits = limits
        log.info("runtime limits changed: %s", limits.model_dump_json())
        for callback in list(self._subscribers):
            try:
                callback(self.current)
            except Exception:  # one faulty subscriber must not keep the change from the others
                log.exception("runtime limits subscriber %r failed", callback)
        return self.current
