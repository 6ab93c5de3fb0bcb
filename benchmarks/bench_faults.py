"""Randomized fault schedules against the planner's state machine and audit log (issue 8).

    .venv/bin/python benchmarks/bench_faults.py --seeds 1000

Each seeded schedule runs the real :class:`PlannerState` and :class:`AuditLog` (in process, on a
simulated clock, greedy allocator; one schedule in ten uses CP-SAT) against a small physical
model of a fleet: pods start after a delay, scale-downs drain (a draining replica finishes its
in-flight requests before it is removed), and agents follow the client's fallback contract
(``local_agent.planner_link.client``: lease, then floor; drains start ``drain_margin_s`` before
the lease lapses). Mixed into every schedule:

* planner kill -9, often in the middle of an audit append (a torn line), then a restart from the
  state dir (rotation is on, with small segments);
* agent loss (the process dies, its pods live on) and restart (a new session);
* every message delayed, some duplicated, reordered or lost (requests and answers);
* lying agents: over-report (within and beyond the registered bounds), under-report, report for
  pools that do not exist.

Checked after every event, and by replaying the audit log at the end:

* budget violations: GPUs physically held (starting, ready, draining; liars' pods included)
  above the inventory of a type, or the planner counting more than the inventory;
* reused decision ids: the audit log's ids strictly increase across restarts, and every decision
  an agent received is in the log with exactly the grant the agent saw;
* requests dropped by a scale-down: in-flight requests on a replica removed before its drain
  finished (an agent forced to its floor by a lapsing lease before its drain could complete).

The test suite runs a quick subset (``tests/test_fault_schedules.py``).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_planner.cli import guarded
from fleet_planner.contract.models import (
    AckDrained,
    AgentReport,
    Forecast,
    PoolRegistration,
    PoolReport,
    Registration,
    Targets,
)
from global_planner.allocation import allocate, allocate_greedy
from global_planner.policy_file import TenantPolicy
from global_planner.service.audit import AUDIT_FILE, AuditLog, read_all
from global_planner.service.state import PlannerState, Round, StateError
from local_agent.session import Lease, effective_targets, lease_from_targets

DT = 0.5
DURATION_S = 150.0
LEASE_S = 12.0
ROUND_S = 2.5
REPORT_S = 2.0
MAX_DRAIN_S = 3.0
MARGIN_S = MAX_DRAIN_S + DT  # the agent's drain margin: its longest drain plus one tick
RPC_TIMEOUT_S = 2.0  # the client's deadline (PlannerClient.timeout_s)
LIES = ("over", "under", "ghost")


@dataclass
class Replica:
    ready_at: float
    inflight: int = 0
    drain_from: float = 0.0
    drain_until: float | None = None


@dataclass
class Pool:
    """Physical pods of one pool: what holds GPUs, whatever the planner or the agent think."""

    spec: PoolRegistration
    replicas: list[Replica] = field(default_factory=list)

    def counts(self, now: float) -> tuple[int, int, int]:
        ready = sum(1 for r in self.replicas if r.drain_until is None and r.ready_at <= now)
        starting = sum(1 for r in self.replicas if r.drain_until is None and r.ready_at > now)
        return ready, starting, len(self.replicas) - ready - starting

    def serving(self) -> list[Replica]:
        return [r for r in self.replicas if r.drain_until is None]


@dataclass
class Agent:
    reg: Registration
    lie: str | None
    pools: dict[str, Pool]
    alive: bool = True
    session: str | None = None
    registering: bool = False
    seq: int = 0
    lease: Lease | None = None
    lease_sent_at: float = 0.0
    reported: dict[str, int] = field(default_factory=dict)
    next_report_s: float = 0.0
    dropped: int = 0

    @property
    def name(self) -> str:
        return self.reg.deployment

    def floor(self) -> dict[str, int]:
        return {p.role: p.fallback_replicas for p in self.reg.pools}


class Schedule:
    """One seeded run; :meth:`run` returns the figures of :class:`Figures`."""

    def __init__(self, seed: int, state_dir: Path):
        self.rng = rng = random.Random(seed)
        self.dir = state_dir
        self.inventory = {"h200": rng.randint(6, 14), "h100": rng.randint(3, 8)}
        caps = {"h200": rng.randint(4, 12)} if rng.random() < 0.5 else {}
        self.policy = TenantPolicy.model_validate(
            {
                "fleet": {"gpus": self.inventory},
                "tenants": {"acme": {"priority": 10, "max_gpus": caps}, "beta": {"priority": 1}},
            }
        )
        self.solve = allocate if seed % 10 == 0 else allocate_greedy
        self.agents = [self._agent(index) for index in range(rng.randint(3, 6))]
        self.queue: list[tuple[float, int, str, object]] = []
        self._tiebreak = 0
        self.state: PlannerState | None = None
        self.audit: AuditLog | None = None
        self.restart_at_s: float | None = None
        self.next_round_s = ROUND_S
        self.received: dict[int, dict[str, dict[str, int]]] = defaultdict(dict)
        self.figures = Figures()
        self._start_planner(0.0)

    def _agent(self, index: int) -> Agent:
        rng = self.rng
        gpu = rng.choice(["h200", "h100"])
        gpr = rng.choice([1, 1, 2])
        roles = rng.choice([("agg",), ("prefill", "decode")])
        pools = [
            PoolRegistration(
                role=role,
                gpu_type=gpu,
                gpus_per_replica=gpr,
                min_replicas=0,
                max_replicas=rng.randint(2, 6),
                fallback_replicas=rng.randint(0, 1),
            )
            for role in roles
        ]
        reg = Registration(
            deployment=f"d{index}", tenant=rng.choice(["acme", "beta"]), endpoint=f"e{index}", pools=pools
        )
        lie = rng.choice(LIES) if rng.random() < 0.35 else None
        return Agent(reg, lie, {p.role: Pool(p) for p in pools}, next_report_s=rng.uniform(0, REPORT_S))

    # ------------------------------------------------------------------ planner process

    def _start_planner(self, now: float) -> None:
        self.audit = AuditLog(self.dir, rotate_bytes=40_000, keep_segments=10)
        self.state = PlannerState(self.policy, lease_s=LEASE_S, report_interval_s=REPORT_S, time_limit_s=0.05)
        self.state.resume(self.audit.recovery, now)
        self.restart_at_s = None

    def _kill_planner(self, now: float, torn: bytes | None) -> None:
        """kill -9: memory gone; ``torn`` is the part of a line that reached the disk."""
        assert self.audit is not None
        self.audit.close()
        if torn:
            with open(self.dir / AUDIT_FILE, "ab") as handle:
                handle.write(torn)
        self.state, self.audit = None, None
        self.restart_at_s = now + self.rng.uniform(0.0, 6.0)
        self.figures.planner_kills += 1

    def _round(self, now: float) -> None:
        assert self.state is not None
        round_input = self.state.begin_round(now)
        if round_input.request is not None:
            self._persist(self.state.settle(round_input, self.solve(round_input.request), now), now)

    def _persist(self, round_: Round, now: float) -> bool:
        """Append, then commit (as the server does); sometimes killed mid-append (a torn line)."""
        assert self.state is not None and self.audit is not None
        if self.rng.random() < 0.06:
            line = round_.record.model_dump_json().encode() + b"\n"
            self._kill_planner(now, line[: self.rng.randrange(0, len(line))])
            return False
        self.audit.append(round_.record)
        self.state.commit(round_)
        return True

    # ------------------------------------------------------------------ network

    def _send(self, now: float, kind: str, payload: object) -> None:
        """Delayed, sometimes lost, duplicated (and so reordered)."""
        rng = self.rng
        if rng.random() < 0.05:
            return
        for _ in range(2 if rng.random() < 0.08 else 1):
            self._tiebreak += 1
            heapq.heappush(self.queue, (now + rng.expovariate(1 / 0.6), self._tiebreak, kind, payload))

    def _deliver(self, now: float, kind: str, payload: object) -> None:
        if kind == "answer":
            agent, sent_at, targets, error = payload  # type: ignore[misc]
            self._answer(agent, sent_at, targets, error, now)
            return
        agent, sent_at, message = payload  # type: ignore[misc]
        if self.state is None:
            return  # planner down: the request is lost
        try:
            if kind == "register":
                self._tiebreak += 1
                session = f"s{self._tiebreak}"
                targets = self.state.register(message, session, now)
            elif kind == "report":
                targets = self.state.report(message, now)
                if self.state.checkpoint_due and not self._persist(self.state.checkpoint(now), now):
                    return  # killed before the answer left
            else:
                targets = self.state.ack_drained(message, now)
            error = None
        except StateError as exc:
            targets, error = None, type(exc).__name__
        answer = (targets, session) if kind == "register" and targets is not None else targets
        self._send(now, "answer", (agent, sent_at, answer, error))

    def _answer(self, agent: Agent, sent_at: float, answer: object, error: str | None, now: float) -> None:
        """As the live client: an answer past the RPC deadline is lost, and calls are sequential,
        so an answer to a request older than the one the lease came from is never seen."""
        if not agent.alive or now - sent_at > RPC_TIMEOUT_S:
            return
        if isinstance(answer, tuple):  # a registration's answer: targets and the new session
            targets, session = answer
            if not agent.registering:
                return  # a duplicate or a stale one
            agent.session, agent.registering, agent.seq = session, False, 0
        else:
            targets = answer
        if error in ("UnknownSession", "UnknownDeployment") and not agent.registering:
            agent.session = None
        if not isinstance(targets, Targets):
            return
        if targets.decision_id and targets.lease_expires_s > targets.planner_time_s:  # a live lease
            self.received[targets.decision_id][agent.name] = {p.role: p.replicas for p in targets.pools}
        newer = agent.lease is None or (targets.decision_id, sent_at) >= (agent.lease.decision_id, agent.lease_sent_at)
        if newer:
            agent.lease, agent.lease_sent_at = lease_from_targets(targets, sent_at, MARGIN_S), sent_at

    # ------------------------------------------------------------------ agents and pods

    def _act(self, agent: Agent, now: float) -> None:
        """Move pods toward the effective targets; drains are graceful, except what the floor
        contract forces at the lease's end (counted as dropped requests)."""
        if agent.lease is None:
            return  # a (re)started agent holds its pods until it hears from the planner
        effective = effective_targets(agent.lease, agent.floor(), agent.reported, now)
        deadline = agent.lease.fallback_at + MARGIN_S
        for role, pool in agent.pools.items():
            target = effective.replicas.get(role, 0)
            serving = pool.serving()
            for replica in serving[target:]:
                replica.drain_from, replica.drain_until = now, now + self.rng.uniform(0.0, MAX_DRAIN_S)
            ready, starting, draining = pool.counts(now)
            for _ in range(max(0, target - ready - starting - draining)):  # draining pods hold GPUs
                pool.replicas.append(Replica(ready_at=now + self.rng.uniform(0.5, 3.0)))
            if effective.source == "floor" and now >= deadline:
                # The floor must hold by the lease's end: a drain begun in time that is still
                # running means the margin was too short, and the agent kills (dropping requests).
                # News that arrives too late (a restart, a slow answer) drains gracefully: the
                # planner keeps counting those pods until they are confirmed gone.
                for replica in [r for r in pool.replicas if r.drain_until is not None]:
                    if replica.drain_from < agent.lease.fallback_at + DT:
                        agent.dropped += replica.inflight
                        pool.replicas.remove(replica)

    def _pods(self, now: float) -> None:
        for agent in self.agents:
            for pool in agent.pools.values():
                for replica in list(pool.replicas):
                    if replica.drain_until is None and replica.ready_at <= now:
                        replica.inflight = self.rng.randint(0, 8)
                    elif replica.drain_until is not None and replica.drain_until <= now:
                        replica.inflight = 0  # finished its in-flight requests
                        pool.replicas.remove(replica)

    def _report(self, agent: Agent, now: float) -> None:
        rng = self.rng
        if agent.session is None:
            if not agent.registering or rng.random() < 0.3:
                agent.registering = True
                self._send(now, "register", (agent, now, agent.reg))
            return
        agent.seq += 1
        pools = []
        for role, pool in agent.pools.items():
            ready, starting, draining = pool.counts(now)
            if agent.lie == "over" and rng.random() < 0.5:
                ready += rng.choice([1, 2, 5, 10_000])
            elif agent.lie == "under" and draining == 0 and rng.random() < 0.5:
                ready = rng.randint(0, ready)
            need = rng.randint(0, pool.spec.max_replicas)
            curve = [min(1.0, k / need) if need else 1.0 for k in range(pool.spec.max_replicas + 1)]
            pools.append(
                PoolReport(role=role, ready=min(ready, 10_000), starting=starting, draining=draining, curve=curve)
            )
        if agent.lie == "ghost" and rng.random() < 0.4:
            ghost = "decode" if "agg" in agent.pools else "agg"
            pools.append(PoolReport(role=ghost, ready=rng.randint(1, 8)))
        agent.reported = {p.role: p.ready + p.starting + p.draining for p in pools if p.role in agent.pools}
        rps = rng.uniform(0.5, 20.0)
        report = AgentReport(
            deployment=agent.name,
            session_id=agent.session,
            sequence=agent.seq,
            applied_decision_id=agent.lease.decision_id if agent.lease else 0,
            forecast=Forecast(mean_rps=rps, upper_rps=rps * 1.2),
            pools=pools,
        )
        self._send(now, "report", (agent, now, report))
        if agent.lease is not None and agent.lease.decision_id and rng.random() < 0.3:
            for role, pool in agent.pools.items():
                if pool.counts(now)[2] == 0:
                    ack = AckDrained(
                        deployment=agent.name,
                        session_id=agent.session,
                        decision_id=agent.lease.decision_id,
                        role=role,
                        gpus_freed=0,
                    )
                    self._send(now, "ack", (agent, now, ack))

    def _agent_faults(self, agent: Agent, now: float) -> None:
        rng = self.rng
        if agent.alive and rng.random() < 0.004:
            agent.alive = False  # the process dies; its pods live on
            self.figures.agent_losses += 1
        elif not agent.alive and rng.random() < 0.05:
            agent.alive, agent.session, agent.registering, agent.lease, agent.reported = True, None, False, None, {}

    # ------------------------------------------------------------------ checks

    def _check(self, now: float) -> None:
        held: dict[str, int] = defaultdict(int)
        for agent in self.agents:
            for pool in agent.pools.values():
                held[pool.spec.gpu_type] += len(pool.replicas) * pool.spec.gpus_per_replica
        for gpu, total in self.inventory.items():
            if held[gpu] > total:
                self.figures.budget_violations += 1
                self.figures.notes.append(f"t={now:.1f}: pods hold {held[gpu]} {gpu} > {total}")
            if self.state is not None and self.state.committed_gpus().get(gpu, 0) > total:
                self.figures.budget_violations += 1
                self.figures.notes.append(f"t={now:.1f}: planner counts {self.state.committed_gpus()} > {total}")

    def _replay(self) -> None:
        """The audit log, read back: ids strictly increase; every decision agents saw is in it."""
        assert self.audit is not None
        self.audit.close()
        records = {}
        last = 0
        for record in read_all(self.dir):
            if record.decision_id <= last:
                self.figures.reused_ids += 1
            last = record.decision_id
            records[record.decision_id] = record
            if any(used > self.inventory.get(gpu, 0) for gpu, used in record.committed_gpus.items()):
                self.figures.budget_violations += 1
        self.figures.rounds += len(records)
        oldest = min(records, default=0)
        for decision_id, seen in self.received.items():
            if decision_id < oldest:
                continue  # rotated away (keep_segments)
            record = records.get(decision_id)
            for name, grants in seen.items():
                dep = next((d for d in record.deployments if d.deployment == name), None) if record else None
                logged = {p.role: p.granted for p in dep.pools} if dep is not None and dep.bidding else None
                if logged != grants:
                    self.figures.reused_ids += 1
                    self.figures.notes.append(f"decision {decision_id} to {name}: saw {grants}, log {logged}")

    def run(self) -> Figures:
        now = 0.0
        while now < DURATION_S:
            now += DT
            while self.queue and self.queue[0][0] <= now:
                _, _, kind, payload = heapq.heappop(self.queue)
                self._deliver(now, kind, payload)
            self._pods(now)
            for agent in self.agents:
                self._agent_faults(agent, now)
                if not agent.alive:
                    continue
                self._act(agent, now)
                if now >= agent.next_report_s:
                    agent.next_report_s = now + REPORT_S * self.rng.uniform(0.7, 1.5)
                    self._report(agent, now)
            if self.state is None and self.restart_at_s is not None and now >= self.restart_at_s:
                self._start_planner(now)
            elif self.state is not None and now >= self.next_round_s:
                self.next_round_s = now + ROUND_S
                self._round(now)
            elif self.state is not None and self.rng.random() < 0.004:
                self._kill_planner(now, None)
            self._check(now)
        if self.state is None:
            self._start_planner(now)
        self._replay()
        self.figures.dropped_requests += sum(a.dropped for a in self.agents)
        self.figures.lying_agents += sum(1 for a in self.agents if a.lie)
        return self.figures


@dataclass
class Figures:
    budget_violations: int = 0
    reused_ids: int = 0
    dropped_requests: int = 0
    planner_kills: int = 0
    agent_losses: int = 0
    lying_agents: int = 0
    rounds: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: Figures) -> None:
        for name in ("budget_violations", "reused_ids", "dropped_requests", "planner_kills", "agent_losses"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lying_agents += other.lying_agents
        self.rounds += other.rounds
        self.notes.extend(other.notes[:3])


_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None  # fsync-heavy: RAM when there is one


def run_schedules(seeds: range) -> tuple[Figures, list[int]]:
    """All ``seeds``; the total figures and the seeds that broke a guarantee."""
    total, failing = Figures(), []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="fleet-faults-", dir=_TMP) as folder:
            figures = Schedule(seed, Path(folder)).run()
        if figures.budget_violations or figures.reused_ids or figures.dropped_requests:
            failing.append(seed)
        total.add(figures)
    return total, failing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # every torn tail is reported; here they are the point
    start = time.perf_counter()
    total, failing = run_schedules(range(args.first, args.first + args.seeds))
    wall = time.perf_counter() - start
    print(
        f"{args.seeds} schedules ({DURATION_S:.0f} simulated s each) in {wall:.1f} s: "
        f"{total.rounds} rounds, {total.planner_kills} planner kills, {total.agent_losses} agent losses, "
        f"{total.lying_agents} lying agents"
    )
    print(
        f"budget violations {total.budget_violations}, reused decision ids {total.reused_ids}, "
        f"requests dropped by a scale-down {total.dropped_requests}"
    )
    for note in total.notes[:10]:
        print("  " + note)
    if failing:
        print(f"failing seeds: {failing[:20]}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(guarded(main))
