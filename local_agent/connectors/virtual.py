"""Virtual connector: the agent decides, an external orchestrator applies.

The agent writes its targets to a JSON file (atomically: temp file + ``os.replace``), which an
orchestrator (a script, a CI job, another controller) watches and applies. Replica counts come back
either through the same file — the orchestrator fills ``observed`` (role -> ready/starting/draining,
and pending: replicas it cannot place) and ``observed_at`` (wall-clock seconds), also writing
atomically — or from Prometheus (a query of ready replicas per pool).

File layout (``version`` 1)::

    {"version": 1, "deployment": "chat", "updated_at": 1718000000.0,
     "targets": {"prefill": 2, "decode": 1},
     "knobs": {"decode": {"max_batch_tokens": 8192, "max_num_seqs": 96}},
     "observed": {"prefill": {"ready": 2, "starting": 0, "draining": 0}}, "observed_at": 1717999990.0}

The agent rewrites ``targets``/``updated_at`` (and ``knobs``: the engine knobs each role should run
with, when it tunes them) and keeps whatever ``observed`` holds at that moment.
A role the orchestrator has not reported (or a report older than ``max_report_age_s``) is missing,
not 0: the agent then holds that pool instead of sizing it from a guess.

From Prometheus only *ready* replicas are visible; replicas up to the last target that are not
ready yet are reported as starting, ready ones beyond it as draining.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet_planner.clock import Clock, WallClock
from fleet_planner.files import write_atomically
from fleet_planner.knobs import EngineKnobs
from local_agent.connectors.base import Connector, ReplicaCounts
from local_agent.observe.prometheus import PrometheusSource

log = logging.getLogger(__name__)


class VirtualStateError(RuntimeError):
    """The targets file exists but cannot be read as one; it is not overwritten."""


class VirtualState(BaseModel):
    """The shared file: targets from the agent, observed counts from the orchestrator."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    deployment: str
    updated_at: float | None = Field(default=None, description="agent clock when the targets were written")
    targets: dict[str, int] = Field(default_factory=dict)
    knobs: dict[str, EngineKnobs] = Field(
        default_factory=dict, description="engine knobs per role, for the orchestrator"
    )
    observed: dict[str, ReplicaCounts] = Field(default_factory=dict)
    observed_at: float | None = Field(default=None, description="wall clock of the orchestrator's report")


class VirtualConnector(Connector):
    """Targets to ``path``; counts from ``path`` (``prometheus=None``) or from ``ready_queries``."""

    def __init__(
        self,
        path: Path,
        deployment: str,
        roles: list[str],
        *,
        prometheus: PrometheusSource | None = None,
        ready_queries: Mapping[str, str] | None = None,
        max_report_age_s: float | None = None,
        clock: Clock | None = None,
    ):
        if not roles:
            raise ValueError("at least one role is needed")
        if prometheus is not None and set(ready_queries or {}) != set(roles):
            raise ValueError(f"with prometheus, give a ready query for each role {sorted(roles)}")
        self.path = path
        self.deployment = deployment
        self.roles = list(roles)
        self._prometheus = prometheus
        self._ready_queries = dict(ready_queries or {})
        self._max_age_s = max_report_age_s
        self._clock: Clock = clock if clock is not None else WallClock()  # records wall times
        self._targets = self._read().targets

    def _read(self) -> VirtualState:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return VirtualState(deployment=self.deployment)
        except OSError as exc:
            raise VirtualStateError(f"cannot read {self.path}: {exc}") from None
        try:
            state = VirtualState.model_validate_json(text)
        except ValidationError as exc:
            raise VirtualStateError(f"{self.path} is not a virtual connector file: {exc.errors()[0]['msg']}") from None
        if state.deployment != self.deployment:
            raise VirtualStateError(f"{self.path} belongs to deployment {state.deployment!r}, not {self.deployment!r}")
        return state

    async def apply(self, targets: dict[str, int]) -> None:
        for role, target in targets.items():
            if role not in self.roles:
                raise ValueError(f"unknown role {role!r}; configured: {sorted(self.roles)}")
            if target < 0:
                raise ValueError(f"role {role!r}: negative target {target}")
        state = self._read()
        merged = {**state.targets, **targets}
        self._write(state.model_copy(update={"targets": merged, "updated_at": self._clock.now()}))
        if merged != self._targets:
            log.info("targets for the orchestrator: %s (%s)", merged, self.path)
        self._targets = merged

    async def apply_knobs(self, knobs: Mapping[str, EngineKnobs]) -> None:
        """Write the engine knobs per role for the orchestrator to apply (at its next restart)."""
        for role in knobs:
            if role not in self.roles:
                raise ValueError(f"unknown role {role!r}; configured: {sorted(self.roles)}")
        state = self._read()
        merged = {**state.knobs, **knobs}
        if merged != state.knobs:
            self._write(state.model_copy(update={"knobs": merged}))
            log.info("engine knobs for the orchestrator: %s (%s)", {r: str(k) for r, k in merged.items()}, self.path)

    def _write(self, state: VirtualState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(state.model_dump(mode="json"), indent=2) + "\n")

    async def observe_replicas(self) -> dict[str, ReplicaCounts]:
        """Counts of the roles known now; roles without a (fresh) report are left out."""
        if self._prometheus is not None:
            return await self._from_prometheus()
        state = self._read()
        if (
            self._max_age_s is not None
            and state.observed
            and (state.observed_at is None or self._clock.now() - state.observed_at > self._max_age_s)
        ):
            log.warning(
                "orchestrator report in %s is older than %.0f s: replica counts treated as missing",
                self.path,
                self._max_age_s,
            )
            return {}
        return {role: counts for role, counts in state.observed.items() if role in self.roles}

    async def _from_prometheus(self) -> dict[str, ReplicaCounts]:
        assert self._prometheus is not None
        counts: dict[str, ReplicaCounts] = {}
        for role in self.roles:
            ready = await self._prometheus.value(f"{role}.ready_replicas", self._ready_queries[role])
            if ready is None:
                continue
            up = int(round(ready))
            target = self._targets.get(role)
            if target is None:
                counts[role] = ReplicaCounts(ready=up)
            else:
                counts[role] = ReplicaCounts(
                    ready=min(up, target), starting=max(0, target - up), draining=max(0, up - target)
                )
        return counts

    async def close(self) -> None:
        """Nothing to release: the file stays for the orchestrator and the next agent."""
