"""Leader election over a ``coordination.k8s.io/v1`` Lease, so the planner runs with several replicas.

Only the leader grants: followers answer every agent RPC with ``UNAVAILABLE`` (the agent's client
then tries its next address, or falls back to its lease) and run no allocation rounds.

The protocol is client-go's:

- **acquire**: create the Lease, or take it over once its record (holder, renew time) has not
  changed for ``leaseDurationSeconds`` *as observed on this replica's clock* (no trust in other
  clocks; timed from when the answer arrived), or at once when the holder released it (empty
  holder). Takeovers are ``PUT``s carrying the observed ``resourceVersion``: of two candidates,
  one gets ``409 Conflict`` and stays follower.
- **renew** every ``retry_s``; the leader counts itself leader only until ``renew_deadline_s``
  after the *send* time of its last successful renewal. As ``renew_deadline_s < lease_s`` and a
  follower waits ``lease_s`` from when it *saw* that renewal, the old leader has stopped granting
  before anyone else may start: there is no moment with two leaders (given clocks that run at
  the same rate, not the same time).
- **hand over**: on shutdown the leader releases the Lease (empty holder), so a follower takes
  over on its next try instead of waiting out the lease.

State survives a leader change because every replica shares the state directory (a
ReadWriteMany volume in the chart): a new leader restores from the last audit record before it
grants. A replica that loses leadership stops (the pod restarts as a follower with fresh state).
Each replica appends its transitions to ``leadership-<identity>.jsonl`` in the state directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2
from kubernetes_asyncio import client
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_planner.clock import Clock, MonotonicClock
from fleet_planner.kube import api_client, status_of
from global_planner.service.server import SERVICE_NAME, PlannerServer

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]


class ElectionConfig(BaseModel):
    """Timings and names of the election; defaults are client-go's (15 s / 10 s / 2 s)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1, description="the Lease's name")
    identity: str = Field(min_length=1, description="this replica (the pod name)")
    lease_s: float = Field(default=15.0, gt=0)
    renew_deadline_s: float = Field(default=10.0, gt=0)
    retry_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ElectionConfig:
        if not self.retry_s < self.renew_deadline_s < self.lease_s:
            raise ValueError(
                "need retry_s < renew_deadline_s < lease_s,"
                f" got {self.retry_s} / {self.renew_deadline_s} / {self.lease_s}"
            )
        return self


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Campaigns for one Lease; ``is_leader()`` is what the servicer and the round loop ask."""

    def __init__(
        self,
        api: client.ApiClient,
        config: ElectionConfig,
        *,
        journal_dir: Path | None = None,
        clock: Clock | None = None,
    ):
        self.client = api
        self.api = client.CoordinationV1Api(api)
        self.config = config
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.journal = journal_dir / f"leadership-{config.identity}.jsonl" if journal_dir is not None else None
        self.holder: str | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._valid_until = float("-inf")
        self._leading = False

    def is_leader(self) -> bool:
        return self._leading and self.clock.now() < self._valid_until

    def _record(self, event: str) -> None:
        if self.journal is None:
            return
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"event": event, "identity": self.config.identity, "time_s": time.time()}) + "\n")

    def _spec(self, acquire: bool, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time(datetime.now(UTC))
        spec = dict(previous or {})
        spec.update(
            holderIdentity=self.config.identity,
            leaseDurationSeconds=max(1, int(round(self.config.lease_s))),
            renewTime=now,
        )
        if acquire:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if previous else 0)
        return spec

    async def _read(self) -> dict[str, Any]:
        lease = await self.api.read_namespaced_lease(self.config.name, self.config.namespace)
        obj: dict[str, Any] = self.client.sanitize_for_serialization(lease)
        return obj

    async def try_acquire_or_renew(self) -> bool:
        """One step of the campaign; True while this replica holds the lease."""
        sent_at = self.clock.now()
        cfg = self.config
        try:
            obj = await self._read()
        except Exception as exc:
            if status_of(exc) != 404:
                raise
            body = {"metadata": {"name": cfg.name, "namespace": cfg.namespace}, "spec": self._spec(True, None)}
            return await self._write(self.api.create_namespaced_lease(cfg.namespace, cast(Any, body)), sent_at)
        spec = obj.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self.holder = holder or None
        observed = (holder, spec.get("renewTime"), spec.get("leaseTransitions"), obj["metadata"]["resourceVersion"])
        if observed != self._observed:  # timed from the answer: a renewal may land while our GET is in flight
            self._observed, self._observed_at = observed, self.clock.now()
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_s)
        mine = holder == cfg.identity
        if not mine and holder and sent_at < self._observed_at + duration:
            return False  # someone else holds a live lease
        obj["spec"] = self._spec(not mine, spec)
        return await self._write(self.api.replace_namespaced_lease(cfg.name, cfg.namespace, cast(Any, obj)), sent_at)

    async def _write(self, call: Awaitable[Any], sent_at: float) -> bool:
        try:
            await call
        except Exception as exc:
            if status_of(exc) in (409, 404):
                return False  # another candidate won the race (or the lease was deleted under us)
            raise
        self.holder = self.config.identity
        self._valid_until = sent_at + self.config.renew_deadline_s
        return True

    async def run(self, on_started: Callback, on_stopped: Callback, stop: asyncio.Event) -> None:
        """Campaign until ``stop``; calls ``on_started`` on winning and ``on_stopped`` on losing."""
        while not stop.is_set():
            try:
                await self.try_acquire_or_renew()
            except Exception as exc:
                log.warning("lease %s: %s", self.config.name, exc)
            leading = self.clock.now() < self._valid_until
            if leading and not self._leading:
                self._leading = True
                self._record("acquired")
                log.info("became leader (lease %s/%s)", self.config.namespace, self.config.name)
                await on_started()
            elif self._leading and not leading:
                self._leading = False
                self._record("lost")
                log.warning("lost the lease %s; stepping down", self.config.name)
                await on_stopped()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.retry_s)

    async def release(self) -> None:
        """Hand over: clear the holder so a follower takes over at its next try."""
        if not self._leading:
            return
        self._leading = False
        self._valid_until = float("-inf")
        self._record("released")
        cfg = self.config
        try:
            obj = await self._read()
            if (obj.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            obj["spec"] = {**obj["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            await self.api.replace_namespaced_lease(cfg.name, cfg.namespace, cast(Any, obj))
        except Exception as exc:
            log.warning("could not release the lease %s: %s (followers wait it out)", cfg.name, exc)


async def serve_elected(
    server: PlannerServer,
    config: ElectionConfig,
    listen: str,
    credentials: grpc.ServerCredentials | None,
    restore: Callable[[], None],
    *,
    kubeconfig: Path | None,
    state_dir: Path,
) -> int:
    """Run one planner replica until SIGTERM/SIGINT: NOT_SERVING (health) and UNAVAILABLE (RPCs)
    while a follower; on winning, ``restore`` the shared state and start rounds. Exit status 0 on
    a requested stop, 3 when leadership was lost (restart as a fresh follower)."""
    api = await api_client(kubeconfig)
    elector = LeaseElector(api, config, journal_dir=state_dir)
    server.leader = server.service.leader = elector
    stop, lost = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def started() -> None:
        restore()
        server.start_rounds()
        await server.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def stopped() -> None:
        await server.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        lost.set()
        stop.set()

    try:
        port = await server.start(listen, credentials)
        print(f"serving on {listen.rpartition(':')[0]}:{port} (follower until elected)", flush=True)
        await server.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        await elector.run(started, stopped, stop)
    finally:
        await elector.release()
        await server.stop()
        await api.close()
    return 3 if lost.is_set() else 0
