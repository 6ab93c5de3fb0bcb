"""A pool: the replicas of one role in one deployment, how many of them run, and the GPUs they hold.

The pool scales (start, drain, retire replicas against a target, within the free GPUs) and wires
the stages a request passes through, by role::

    prefill pool: router -> prefill -> KV hand-off to the decode pool's router
    decode pool:  router -> KV admission -> decode
    agg pool:     router -> KV admission -> prefill -> decode (on the same replica)

``next_pool`` is a disaggregated deployment's decode pool, set on its prefill pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel
from fleet_planner.planning import PoolRole

from .admission import KvAdmission
from .decode import DecodeStage
from .prefill import PrefillStage
from .prefix_cache import PREFIX_BLOCK_TOKENS
from .router import Router
from .state import DRAINING, EV_READY, READY, RETIRED, STARTING, EngineConfig, PoolStats, Replica

if TYPE_CHECKING:
    from .simulator import Simulator


class Pool:
    """A set of identical replicas of one role in one deployment, scaled to a target."""

    def __init__(
        self,
        sim: Simulator,
        deployment_index: int,
        deployment: str,
        role: PoolRole,
        model: PerfModel,
        gpu_type: str,
        gpus_per_replica: int,
        startup_s: float,
        engine: EngineConfig,
        max_input_tokens: int | None,
        queue_timeout_s: float | None = None,
    ):
        self.sim = sim
        self.queue_timeout_s = queue_timeout_s
        self.deployment_index = deployment_index
        self.deployment = deployment
        self.role = role
        self.model = model
        self.gpu_type = gpu_type
        self.gpus_per_replica = gpus_per_replica
        self.startup_s = startup_s
        self.engine = engine
        self.knobs = engine.knobs  # in force now; changed at run time by ``set_knobs``
        limits = [v for v in (max_input_tokens, model.max_context) if v]
        self.max_input_tokens = min(limits) if limits else None
        self.max_kv = int(model.max_kv_tokens)
        self.prefix_blocks = 0  # prefix-cache capacity per replica, blocks (0: no cache)
        if engine.prefix_cache and role in ("prefill", "agg"):
            blocks = engine.prefix_cache_blocks
            self.prefix_blocks = max(0, blocks if blocks is not None else self.max_kv // PREFIX_BLOCK_TOKENS)
        self.replicas: list[Replica] = []  # alive: starting, ready, draining
        self.ready: list[Replica] = []
        self.pending_since: list[float] = []  # when each replica waiting for free GPUs was wanted, oldest first
        self.target = 0
        self.next_pool: Pool | None = None  # prefill -> decode hand-off
        self.entry_pool: Pool = self  # where the deployment's requests enter (TTFT is its metric)
        self.gpus_held = 0
        self.gpu_seconds = 0.0
        self._gpu_t = 0.0
        self.stats = PoolStats()
        self.decode = DecodeStage(self)
        self.prefill = PrefillStage(self, self.decode)
        self.admission = KvAdmission(self, self.prefill, self.decode)
        self.decode.admission = self.admission
        self.router = Router(self, self.prefill, self.admission)

    # ---- accounting -------------------------------------------------------------------------
    def account(self, now: float, delta_gpus: int) -> None:
        """Charge the GPUs held so far (up to the run's end), then change how many are held."""
        self.gpu_seconds += self.gpus_held * (min(now, self.sim.end_s) - min(self._gpu_t, self.sim.end_s))
        self._gpu_t = now
        self.gpus_held += delta_gpus
        self.sim.gpu_delta(self.gpu_type, delta_gpus)

    def counts(self) -> tuple[int, int, int]:
        """Replicas ready, starting and draining."""
        starting = ready = draining = 0
        for r in self.replicas:
            if r.state == READY:
                ready += 1
            elif r.state == STARTING:
                starting += 1
            elif r.state == DRAINING:
                draining += 1
        return ready, starting, draining

    @property
    def pending(self) -> int:
        """Replicas wanted but waiting for free GPUs (pending pods)."""
        return len(self.pending_since)

    def active_count(self) -> int:
        """Replicas that count toward the target: ready, starting and pending (not draining)."""
        return sum(1 for r in self.replicas if r.state in (READY, STARTING)) + self.pending

    # ---- scaling ----------------------------------------------------------------------------
    def set_target(self, target: int, now: float) -> None:
        self.target = target
        current = self.active_count()
        if target > current:
            self.pending_since.extend([now] * (target - current))
            self.sim.start_pending(now)
        elif target < current:
            self._shrink(current - target, now)

    def start_replica(self, now: float) -> None:
        replica = Replica(self, now)
        self.replicas.append(replica)
        self.account(now, self.gpus_per_replica)
        self.sim.schedule(replica.ready_at, EV_READY, replica)

    def _shrink(self, count: int, now: float) -> None:
        # A replica set scaled down deletes its unscheduled pods first, the newest first.
        cancel = min(count, self.pending)
        del self.pending_since[len(self.pending_since) - cancel :]
        count -= cancel
        # Replicas still starting hold GPUs but no work: stop the newest first.
        for replica in sorted((r for r in self.replicas if r.state == STARTING), key=lambda r: -r.created_at):
            if count == 0:
                break
            self._retire(replica, now)
            count -= 1
        # Ready replicas drain: no new work, in-flight work finishes, GPUs held until empty.
        for replica in sorted(self.ready, key=lambda r: r.load):
            if count == 0:
                break
            replica.state = DRAINING
            self.ready.remove(replica)
            count -= 1
            if replica.idle():
                self._retire(replica, now)

    def _retire(self, replica: Replica, now: float) -> None:
        replica.state = RETIRED
        replica.epoch += 1
        self.replicas.remove(replica)
        self.account(now, -self.gpus_per_replica)
        self.sim.start_pending(now)

    def on_ready(self, replica: Replica, now: float) -> None:
        if replica.state != STARTING:
            return
        replica.state = READY
        replica.t_last = now
        self.ready.append(replica)
        self.router.flush(now)

    def maybe_retire(self, replica: Replica, now: float) -> None:
        """A draining replica that just ran out of work releases its GPUs."""
        if replica.state == DRAINING and replica.idle():
            self._retire(replica, now)

    # ---- engine knobs -----------------------------------------------------------------------
    def set_knobs(self, knobs: EngineKnobs, now: float) -> None:
        """New engine knobs for every replica, from the next iteration and admission on (as if the
        connector's rolling restart were instant): running sequences above a lowered cap finish,
        a raised cap admits waiting requests at once."""
        if knobs == self.knobs:
            return
        self.knobs = knobs
        self.admission.max_num_seqs = knobs.max_num_seqs
        self.prefill.max_batch_tokens = knobs.max_batch_tokens
        if self.role != "prefill":
            for replica in self.replicas:
                self.admission.admit_waiting(replica, now)

    # ---- queue timeout ----------------------------------------------------------------------
    def expired(self, request: int, now: float) -> bool:
        """The request waited in a queue past the frontend's timeout."""
        timeout = self.queue_timeout_s
        return timeout is not None and now - self.sim.requests.arrival[request] > timeout

    def drop(self, replica: Replica | None, request: int, now: float, kv_reserved: bool) -> None:
        """A request timed out while queued: the frontend gave up on it (counted as rejected)."""
        reqs = self.sim.requests
        if replica is not None:
            replica.load -= (
                reqs.input[request] if self.role == "prefill" else reqs.input[request] + reqs.output[request]
            )
            if kv_reserved:
                replica.kv_reserved -= reqs.input[request] + reqs.output[request]
        reqs.rejected[request] = True
        self.sim.completed(request, now)
