"""Boundary types of the allocator: what agents and policies hand in, what the planner hands back.

Value model (shared by the CP-SAT solver and the greedy fallback):

* A pool's *curve* gives the expected SLO attainment for each replica count at the predicted load.
  Counts past the end of the curve are worth the last point (no data means no extra value), so a
  curve shorter than ``max_replicas`` never makes the planner overpromise.
* Pools sharing a ``pair_group`` (prefill + decode of one disaggregated deployment) form one
  *unit* whose attainment is the **minimum** of its pools' attainments. A request meets its SLA
  only if both its TTFT (prefill) and ITL (decode) hold; ``min`` is the Fréchet upper bound of
  that joint probability and is exact when misses are driven by the same load spikes (the usual
  case), while a product assumes independence and would double-count the shared cause. ``min`` is
  also concave-preserving and linear in CP-SAT (``unit <= pool`` per pool, maximised).
* A unit is worth ``priority * demand_weight * attainment``; for a pair the largest member
  coefficient is used (both pools carry the same requests).
* Endpoints served by several deployments: each deployment's agent plans for its share of the
  endpoint's load, its curve is computed at that share and its ``demand_weight`` is that share's
  rate, so the deployments' values add up to the endpoint's. The planner routes each deployment
  the load it planned for as far as its allocation carries it and sheds what nobody can carry
  (:func:`global_planner.allocation.problem.endpoint_plans`), so a partly served pool is served
  the way its hull value assumes.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from fleet_planner.planning import FrozenModel, PoolRole

AllocationStatus = Literal["optimal", "feasible", "fallback"]
# What moved a pool's grant this round: nothing; its own bid (towards ``wanted_replicas``); other
# pools' value (cut below what it holds and wants: worth more elsewhere than the change costs);
# its bounds (a lowered max, or minima the inventory cannot hold); idle GPUs its policy lets it
# hold above its bid (``fill_idle``).
Driver = Literal["unchanged", "bid", "others", "bounds", "idle"]


# Policy files are YAML, where ``true`` or ``"3"`` in a number's place is a mistake to refuse, not
# a value to convert: the policy models are strict (an int is still a valid float).
POLICY_STRICT = ConfigDict(strict=True)
# Far past any real fleet, and where CP-SAT still builds its model: a priority of 1e15 or 10^20 GPUs
# (a slipped exponent) made every round fall back to the greedy allocator (int64 overflow).
MAX_PRIORITY = 1e6
MAX_GPUS = 1_000_000


class TenantLimits(FrozenModel):
    """A tenant's standing in the fleet: how much its SLOs weigh and its GPU floor and ceiling."""

    model_config = POLICY_STRICT

    priority: float = Field(default=1.0, gt=0, le=MAX_PRIORITY, allow_inf_nan=False)
    guaranteed_gpus: dict[str, int] = Field(default_factory=dict)
    max_gpus: dict[str, int] = Field(default_factory=dict)

    @field_validator("guaranteed_gpus", "max_gpus")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for gpu_type, count in value.items():
            if not 0 <= count <= MAX_GPUS:
                raise ValueError(f"{gpu_type}: must be within [0, {MAX_GPUS}] (got {count})")
        return value


class PoolOverride(FrozenModel):
    """Per-pool knobs chosen by a ``tenant/deployment[/role]`` selector (fnmatch wildcards).

    Later matching overrides win field by field; unset fields leave earlier values alone.
    """

    model_config = POLICY_STRICT

    selector: str
    max_step: int | None = Field(default=None, ge=0, description="max replica change per round")
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)
    priority: float | None = Field(default=None, gt=0, le=MAX_PRIORITY, allow_inf_nan=False)
    churn_weight: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="value units lost per replica changed"
    )
    startup_s: float | None = Field(
        default=None, ge=0, le=86_400, allow_inf_nan=False, description="cold start of one replica (seconds)"
    )
    fill_idle: bool | None = Field(
        default=None,
        description="GPUs nobody asks for may be granted above its agent's ask, up to max_replicas, as headroom "
        "that any ask takes back first (default: never more than the ask)",
    )

    @field_validator("selector")
    @classmethod
    def _selector_shape(cls, value: str) -> str:
        parts = value.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"must be 'tenant/deployment' or 'tenant/deployment/role' (got {value!r})")
        return value

    def matches(self, tenant: str, deployment: str, role: str) -> bool:
        """Whether the selector picks this pool (a two-part selector picks all of a deployment's)."""
        key = f"{tenant}/{deployment}/{role}" if self.selector.count("/") == 2 else f"{tenant}/{deployment}"
        return _selector_pattern(self.selector).match(key) is not None

    @model_validator(mode="after")
    def _bounds_ordered(self) -> PoolOverride:
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


@lru_cache(maxsize=4096)
def _selector_pattern(selector: str) -> re.Pattern[str]:
    """A selector's fnmatch pattern, compiled once (overrides are matched against every pool each round)."""
    return re.compile(fnmatch.translate(selector))


@dataclass(frozen=True)
class Overridden:
    """What a pool's matching overrides set, later ones winning field by field (None: not set)."""

    priority: float | None = None
    max_step: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    churn_weight: float | None = None
    startup_s: float | None = None
    fill_idle: bool | None = None


def overridden(overrides: list[PoolOverride], tenant: str, deployment: str, role: str) -> Overridden:
    """The settings the pool's matching overrides give it (the allocator's and the split's one reading)."""
    values: dict[str, Any] = {}
    for override in overrides:
        if override.matches(tenant, deployment, role):
            values.update((name, value) for name in _OVERRIDDEN if (value := getattr(override, name)) is not None)
    return Overridden(**values)


_OVERRIDDEN = tuple(f.name for f in fields(Overridden))


class Stability(FrozenModel):
    """How much a change of grant must be worth (see :mod:`global_planner.allocation.stability`)."""

    model_config = POLICY_STRICT

    horizon_s: float = Field(
        default=300.0, gt=0, le=86_400, allow_inf_nan=False, description="how long a grant is expected to stand"
    )
    default_startup_s: float = Field(
        default=60.0, ge=0, le=86_400, allow_inf_nan=False, description="cold start when neither bid nor policy says"
    )
    hysteresis: float = Field(
        default=0.3, ge=0, le=1, allow_inf_nan=False, description="extra share of a pool's marginal value a cut costs"
    )
    contest_on_observed: bool = Field(
        default=True,
        description="a pool's value above its grant counts only while its endpoint is observed short",
    )
    bid_allowance: float | None = Field(
        default=0.25,
        ge=0,
        allow_inf_nan=False,
        description="a bid's rate may exceed the observed rate by this share (plus Poisson noise); None: no check",
    )


class PoolDemand(FrozenModel):
    """One pool's bid: bounds, current size and the value of each replica count.

    ``curve[k]`` is the expected SLO attainment in [0, 1] with ``k`` replicas (k = 0..len-1).
    It is expected to be non-decreasing; counts that are worth no more than a smaller count are
    never allocated (they would hold GPUs without value).
    """

    pool_id: str = Field(default="", description="'deployment/role'; derived when empty")
    deployment: str
    tenant: str
    endpoint: str
    role: PoolRole
    gpu_type: str
    gpus_per_replica: int = Field(ge=1)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(ge=0)
    current_replicas: int = Field(default=0, ge=0)
    curve: list[float] = Field(min_length=1)
    demand_weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    pair_group: str | None = None
    replica_capacity_rps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    wanted_replicas: int | None = Field(default=None, ge=0, description="what the agent would run alone")
    running_replicas: int | None = Field(
        default=None, ge=0, description="replicas ready or starting when the agent bid (what it bid from)"
    )
    observed_rps: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="rate the agent observed (checks demand_weight)"
    )
    startup_s: float | None = Field(
        default=None, ge=0, le=86_400, allow_inf_nan=False, description="cold start of one replica (seconds)"
    )
    backlog_rps: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="requests left waiting at the end of the observed window, per second of that window",
    )
    late_rps_per_replica: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="the load per replica at which the pool has been late for several windows in a row",
    )
    held_replicas: int | None = Field(
        default=None,
        ge=0,
        description="replicas held while the pool has no bid yet (no curve or rate): kept within an override's "
        "maximum whatever its minimum (None: the pool bid)",
    )
    headroom_replicas: int = Field(
        default=0,
        ge=0,
        description="replicas of current_replicas granted as idle headroom above its ask (fill_idle): not its own",
    )

    @field_validator("curve")
    @classmethod
    def _attainments(cls, curve: list[float]) -> list[float]:
        for k, value in enumerate(curve):
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"curve[{k}]: must be finite and within [0, 1] (got {value})")
        return curve

    @model_validator(mode="after")
    def _consistent(self) -> PoolDemand:
        expected = f"{self.deployment}/{self.role}"
        if not self.pool_id:
            object.__setattr__(self, "pool_id", expected)
        elif self.pool_id != expected:
            raise ValueError(f"pool_id must be {expected!r} (got {self.pool_id!r})")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.headroom_replicas > self.current_replicas:
            raise ValueError(f"headroom_replicas {self.headroom_replicas} > current_replicas {self.current_replicas}")
        return self

    def own_replicas(self) -> int:
        """What the pool holds as its own: its grant less the idle headroom it was lent, unless its
        agent asks for more than the grant (then all of it is wanted)."""
        if self.wanted_replicas is not None and self.wanted_replicas > self.current_replicas:
            return self.current_replicas
        return self.current_replicas - self.headroom_replicas

    def own_ask(self) -> int | None:
        """What its agent asks for as its own: an agent runs its grant, lent headroom included, and
        may bid to keep it; up to the grant, only what it held as its own counts as asked (past the
        grant all of it is its own, :meth:`own_replicas`)."""
        wanted = self.wanted_replicas
        if wanted is None or wanted > self.current_replicas:
            return wanted
        return min(wanted, self.own_replicas())

    def attainment(self, replicas: int) -> float:
        """Curve value at ``replicas``, flat past the last point."""
        return self.curve[min(replicas, len(self.curve) - 1)]


class AllocationRequest(FrozenModel):
    """Everything one allocation round needs; pure data, so rounds replay deterministically."""

    pools: list[PoolDemand]
    inventory: dict[str, int]
    tenants: dict[str, TenantLimits] = Field(
        default_factory=dict, description="tenants not listed get priority 1, no floor, no cap"
    )
    overrides: list[PoolOverride] = Field(default_factory=list)
    held_gpus: dict[str, int] = Field(
        default_factory=dict, description="GPUs still held by draining replicas, off the budget"
    )
    previous: dict[str, int] | None = Field(
        default=None, description="replicas of the previous allocation by pool_id (warm start)"
    )
    time_limit_s: float = Field(
        default=0.2,
        gt=0,
        allow_inf_nan=False,
        description="wall time for the whole call: preparation, greedy, bound and CP-SAT",
    )
    relative_gap_limit: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    seed: int = 0
    stability: Stability = Field(default_factory=Stability)

    @field_validator("inventory", "held_gpus")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for gpu_type, count in value.items():
            if count < 0:
                raise ValueError(f"{gpu_type}: must be >= 0 (got {count})")
        return value

    @model_validator(mode="after")
    def _unique_pools(self) -> AllocationRequest:
        seen: set[str] = set()
        for pool in self.pools:
            if pool.pool_id in seen:
                raise ValueError(f"duplicate pool_id {pool.pool_id!r}")
            seen.add(pool.pool_id)
        return self


class Allocation(FrozenModel):
    """The planner's answer for one round.

    ``objective`` is in value units (sum of priority * demand_weight * attainment, minus churn);
    ``best_bound`` is a proven upper bound on it (the tighter of the Lagrangian dual bound and
    CP-SAT's bound) and ``gap = (bound - objective) / bound``; both are None for the fallback.
    """

    replicas: dict[str, int]
    routing_weights: dict[str, dict[str, float]]
    objective: float
    best_bound: float | None
    gap: float | None
    status: AllocationStatus
    solve_ms: float
    reasons: dict[str, str]
    drivers: dict[str, Driver] = Field(default_factory=dict)
    headroom: dict[str, int] = Field(
        default_factory=dict, description="replicas of each filled pool's grant that are idle headroom (fill_idle)"
    )
    tenant_gpus: dict[str, dict[str, int]]
    gpus_used: dict[str, int]
