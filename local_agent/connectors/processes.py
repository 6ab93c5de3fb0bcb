"""Local processes connector: one OS process per replica, drained on scale-down, re-adopted on restart.

Lifecycle of a worker (one replica of a role):

- **starting**: spawned (own session, stdout/stderr to ``<run_dir>/<worker_id>.log``) with its
  command's ``{port}``, ``{ready_file}``, ``{role}`` and ``{worker_id}`` filled in.
- **ready**: the worker created its ready file. Workers signal readiness this way (rather than by a
  line on stdout) because a file survives an agent restart: a re-adopted worker is still ready.
- **draining**: scale-down sent it SIGTERM (to the worker's pid only, so an engine can shut its own
  children down in order). It should stop taking work, finish in-flight work and exit; it counts
  as draining until it exits and is reaped. Only after ``drain_timeout_s`` does the connector
  SIGKILL its whole process group.

Scale-down picks starting workers first (they hold no work), then the newest ready ones; workers
still running older engine knobs go before those already on the current ones.

**Engine knobs** (``apply_knobs``): a role whose command has a ``{knobs}`` item gets the knobs as
engine flags there (``--max-num-batched-tokens N --max-num-seqs M``). New knobs roll out one worker
at a time with capacity kept: a replacement starts with the new flags beside the oldest worker on
older knobs, and only once it is ready is that worker drained (a worker still starting is simply
drained and replaced). Until it is ready a replacement is not counted (the agent's targets do not
see it), so the pool holds one extra GPU set during each step. The wanted knobs are in the state
file, so a restarted agent finishes a roll it began.

The JSON state file (rewritten atomically after every change: temp file + ``os.replace``) lists the
workers with pid, role, port, wall-clock start and drain times, and the kernel's process start time
(``/proc/<pid>/stat`` field 22) as a fingerprint, so a restarted agent re-adopts its live workers
instead of duplicating them, drops the dead ones, and never signals an unrelated process that
reused a pid. A state file that cannot be parsed raises ``StateFileError`` and nothing is started
or stopped: moving it aside would start duplicates next to orphans nobody tracks any more. An
exclusive ``flock`` on ``<state_file>.lock`` keeps two live agents from managing the same workers.

No background task: state advances (readiness, reaping, drain timeouts) whenever ``apply`` or
``observe_replicas`` is called, which the agent does every few seconds. Linux is the target;
elsewhere liveness falls back to ``kill(pid, 0)`` without the pid-reuse fingerprint.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet_planner.clock import Clock, WallClock
from fleet_planner.files import write_atomically
from fleet_planner.knobs import EngineKnobs
from local_agent.connectors.base import Connector, ReplicaCounts

log = logging.getLogger(__name__)

WorkerState = Literal["starting", "ready", "draining"]
_PLACEHOLDERS = {"port": 0, "ready_file": "", "role": "", "worker_id": "", "knobs": ""}
KNOBS_ITEM = "{knobs}"
_BARE_PYTHON = frozenset({"python", "python3"})
_HAS_PROC = Path("/proc/self/stat").exists()  # Linux: pid-reuse fingerprints from /proc/<pid>/stat


class StateFileError(RuntimeError):
    """The state file is unusable or held by another agent; nothing was started or stopped."""


class WorkerCommand(BaseModel):
    """How to start one worker of a role. ``argv`` items may use ``{port}``, ``{ready_file}``,
    ``{role}`` and ``{worker_id}``; ``{ready_file}`` is required, since that is how readiness is seen.
    An item that is exactly ``{knobs}`` becomes the engine-knob flags (none until knobs are set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict, description="added to the agent's environment")

    @field_validator("argv")
    @classmethod
    def _placeholders_known(cls, argv: list[str]) -> list[str]:
        try:
            for item in argv:
                item.format(**_PLACEHOLDERS)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"argv item {item!r}: unknown or malformed placeholder ({exc})") from exc
        if not any("{ready_file}" in item for item in argv):
            raise ValueError("argv must pass {ready_file}: the worker signals readiness by creating it")
        if any(KNOBS_ITEM in item and item != KNOBS_ITEM for item in argv):
            raise ValueError(f"{KNOBS_ITEM} must be an argv item of its own (it becomes several flags)")
        return argv

    @property
    def takes_knobs(self) -> bool:
        return KNOBS_ITEM in self.argv

    def render(
        self, *, port: int, ready_file: Path, role: str, worker_id: str, knobs: EngineKnobs | None = None
    ) -> list[str]:
        """The argv to start, placeholders filled; a bare ``python``/``python3`` program is the
        agent's own interpreter (``sys.executable``), so a worker sees the same installed packages
        (the agent's virtual environment) whatever ``PATH`` says."""
        argv: list[str] = []
        for item in self.argv:
            if item == KNOBS_ITEM:
                argv += knobs.engine_args() if knobs is not None else []
            else:
                argv.append(item.format(port=port, ready_file=ready_file, role=role, worker_id=worker_id))
        if argv[0] in _BARE_PYTHON:
            argv[0] = sys.executable
        return argv


class WorkerRecord(BaseModel):
    """One worker as persisted in the state file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    worker_id: str
    role: str
    pid: int = Field(gt=0)
    port: int = Field(ge=0, le=65535)
    started_at: float = Field(description="wall clock (time.time) at spawn")
    proc_starttime: int | None = Field(description="/proc/<pid>/stat starttime; None without /proc")
    ready_file: str
    ready: bool = False
    draining_since: float | None = Field(default=None, description="wall clock when SIGTERM was sent")
    killed: bool = Field(default=False, description="SIGKILLed after the drain timeout")
    knobs: EngineKnobs | None = Field(default=None, description="engine knobs it was started with")
    replaces: str | None = Field(default=None, description="the worker it replaces once ready (a knob roll)")

    @property
    def state(self) -> WorkerState:
        if self.draining_since is not None:
            return "draining"
        return "ready" if self.ready else "starting"


class WorkerExit(BaseModel):
    """A reaped worker; ``exit_code`` is None when it was not our child (adopted) so the status is unknown."""

    model_config = ConfigDict(frozen=True)

    worker_id: str
    role: str
    pid: int
    exit_code: int | None
    state: WorkerState


class _StateFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    workers: list[WorkerRecord]
    knobs: dict[str, EngineKnobs] = Field(default_factory=dict, description="wanted engine knobs per role")


class ProcessConnector(Connector):
    """Starts and drains local worker processes per role; see the module docstring for the lifecycle."""

    def __init__(
        self,
        roles: Mapping[str, WorkerCommand],
        state_file: Path,
        *,
        run_dir: Path | None = None,
        drain_timeout_s: float = 300.0,
        host: str = "127.0.0.1",
        clock: Clock | None = None,
    ) -> None:
        if not roles:
            raise ValueError("at least one role is needed")
        if drain_timeout_s < 0:
            raise ValueError("drain_timeout_s must be >= 0")
        self._roles = dict(roles)
        self._state_file = state_file
        self._run_dir = run_dir if run_dir is not None else state_file.with_name(state_file.name + ".run")
        self._drain_timeout_s = drain_timeout_s
        self._host = host
        self._clock: Clock = clock if clock is not None else WallClock()  # records wall times
        self._exits: list[WorkerExit] = []
        self._workers: dict[str, WorkerRecord] = {}
        self._knobs: dict[str, EngineKnobs] = {}
        self._run_dir.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = self._acquire_lock()
        try:
            state = self._load()
            self._knobs = dict(state.knobs)
            for record in state.workers:
                self._workers[record.worker_id] = record
            self._refresh(force_save=True)
        except BaseException:
            self._release_lock()
            raise
        if self._workers:
            log.info(
                "re-adopted %d worker(s) from %s: %s",
                len(self._workers),
                state_file,
                ", ".join(f"{w.worker_id} pid {w.pid} ({w.state})" for w in self._workers.values()),
            )

    # -- Connector interface -------------------------------------------------------------------

    async def apply(self, targets: dict[str, int]) -> None:
        for role, target in targets.items():
            if role not in self._roles:
                raise ValueError(f"unknown role {role!r}; configured: {sorted(self._roles)}")
            if target < 0:
                raise ValueError(f"role {role!r}: negative target {target}")
        self._ensure_open()
        self._refresh()
        try:
            for role, target in targets.items():
                active = self._counted(role)
                for _ in range(target - len(active)):
                    self._spawn(role)
                # older knobs first, then starting ones (no work yet), then the newest ready ones
                order = sorted(active, key=lambda w: (not self._stale(w), w.ready, -w.started_at))
                for worker in order[: max(0, len(active) - target)]:
                    self._drain(worker)
            self._roll()
        finally:
            self._save()

    async def observe_replicas(self) -> dict[str, ReplicaCounts]:
        self._ensure_open()
        self._refresh()
        self._roll()
        counts: dict[str, dict[WorkerState, int]] = {
            role: {"ready": 0, "starting": 0, "draining": 0} for role in self._roles
        }
        for worker in self._workers.values():
            if not self._surge(worker):
                counts[worker.role][worker.state] += 1
        return {role: ReplicaCounts(**c) for role, c in counts.items()}

    async def apply_knobs(self, knobs: Mapping[str, EngineKnobs]) -> None:
        """Roll each listed role's workers onto ``knobs`` (see the module docstring)."""
        for role in knobs:
            if role not in self._roles:
                raise ValueError(f"unknown role {role!r}; configured: {sorted(self._roles)}")
            if not self._roles[role].takes_knobs:
                raise ValueError(f"role {role!r}: its command has no {KNOBS_ITEM} item, so engine knobs cannot be set")
        self._ensure_open()
        self._refresh()
        changed = {role: k for role, k in knobs.items() if self._knobs.get(role) != k}
        if not changed:
            return
        self._knobs.update(changed)
        for role, k in changed.items():
            log.info("engine knobs for %s -> %s: rolling its workers one at a time", role, k)
        try:
            self._roll()
        finally:
            self._save()

    async def close(self) -> None:
        """Persist the state and release the lock; workers keep running for the next agent to adopt."""
        if self._lock is None:
            return
        self._save()
        self._release_lock()

    # -- inspection ----------------------------------------------------------------------------

    def workers(self) -> list[WorkerRecord]:
        """Tracked workers as of the last ``apply``/``observe_replicas``, oldest first."""
        return sorted(self._workers.values(), key=lambda w: w.started_at)

    @property
    def exits(self) -> list[WorkerExit]:
        """Workers reaped by this connector, in order."""
        return list(self._exits)

    def knobs(self) -> dict[str, EngineKnobs]:
        """The engine knobs wanted per role (workers converge on them)."""
        return dict(self._knobs)

    # -- internals -----------------------------------------------------------------------------

    def _stale(self, worker: WorkerRecord) -> bool:
        wanted = self._knobs.get(worker.role)
        return wanted is not None and worker.knobs != wanted

    def _surge(self, worker: WorkerRecord) -> bool:
        """A replacement still starting: extra to the pool's count until it is ready."""
        return worker.replaces is not None and not worker.ready and worker.draining_since is None

    def _counted(self, role: str) -> list[WorkerRecord]:
        """The role's workers that count toward its target: not draining, not a starting replacement."""
        return [w for w in self._workers.values() if w.role == role and w.draining_since is None and not self._surge(w)]

    def _roll(self) -> None:
        """One step of each role's knob roll: a ready replacement retires the worker it replaces;
        with no replacement under way, the oldest worker on older knobs gets one."""
        for role in self._knobs:
            replacements = [w for w in self._workers.values() if w.role == role and w.replaces is not None]
            busy = False
            for new in replacements:
                if new.draining_since is not None:  # drained by a scale-down meanwhile: no longer a replacement
                    self._workers[new.worker_id] = new.model_copy(update={"replaces": None})
                elif new.ready:
                    old = self._workers.get(new.replaces or "")
                    if old is not None and old.draining_since is None:
                        self._drain(old)
                    self._workers[new.worker_id] = new.model_copy(update={"replaces": None})
                else:
                    busy = True
            stale = sorted((w for w in self._counted(role) if self._stale(w)), key=lambda w: w.started_at)
            if busy or not stale:
                continue
            oldest = stale[0]
            if oldest.ready:
                self._spawn(role, replaces=oldest.worker_id)
            else:  # holds no work yet: replace it outright
                self._drain(oldest)
                self._spawn(role)

    def _ensure_open(self) -> None:
        if self._lock is None:
            raise RuntimeError("connector is closed")

    def _acquire_lock(self) -> IO[str]:
        lock_path = self._state_file.with_name(self._state_file.name + ".lock")
        handle = lock_path.open("a")  # O_CLOEXEC (Python default): workers never inherit the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise StateFileError(f"{self._state_file}: another agent holds {lock_path}") from exc
        return handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def _load(self) -> _StateFile:
        try:
            text = self._state_file.read_text()
        except FileNotFoundError:
            return _StateFile(workers=[])
        try:
            state = _StateFile.model_validate_json(text)
        except ValidationError as exc:
            raise StateFileError(
                f"{self._state_file} is not a valid worker state file ({exc.error_count()} error(s), first: "
                f"{exc.errors()[0]['msg']}). Nothing was started or stopped; check the processes it lists, "
                "then fix or remove it."
            ) from exc
        unknown = sorted(({w.role for w in state.workers} | set(state.knobs)) - set(self._roles))
        if unknown:
            raise StateFileError(
                f"{self._state_file} lists workers of unconfigured role(s) {unknown}; nothing was started "
                "or stopped. Configure those roles or stop those workers by hand."
            )
        return state

    def _save(self) -> None:
        body = _StateFile(workers=self.workers(), knobs=self._knobs).model_dump_json(indent=2)
        write_atomically(self._state_file, body, durable=True)

    def _refresh(self, *, force_save: bool = False) -> None:
        """Reap exited workers, promote ready ones, enforce drain timeouts."""
        changed = force_save
        now = self._clock.now()
        for worker in list(self._workers.values()):
            alive, exit_code = _probe(worker)
            if not alive:
                del self._workers[worker.worker_id]
                Path(worker.ready_file).unlink(missing_ok=True)
                self._exits.append(
                    WorkerExit(
                        worker_id=worker.worker_id,
                        role=worker.role,
                        pid=worker.pid,
                        exit_code=exit_code,
                        state=worker.state,
                    )
                )
                level = logging.INFO if worker.state == "draining" and exit_code in (0, None) else logging.WARNING
                log.log(
                    level,
                    "worker %s pid %d exited (code %s) while %s",
                    worker.worker_id,
                    worker.pid,
                    exit_code,
                    worker.state,
                )
                changed = True
            elif worker.state == "starting" and Path(worker.ready_file).exists():
                self._workers[worker.worker_id] = worker.model_copy(update={"ready": True})
                changed = True
            elif (
                worker.draining_since is not None
                and not worker.killed
                and now - worker.draining_since >= self._drain_timeout_s
            ):
                log.warning(
                    "worker %s pid %d still draining after %.0f s: SIGKILL to its process group",
                    worker.worker_id,
                    worker.pid,
                    self._drain_timeout_s,
                )
                _signal_group(worker.pid, signal.SIGKILL)
                self._workers[worker.worker_id] = worker.model_copy(update={"killed": True})
                changed = True
        if changed:
            self._save()

    def _spawn(self, role: str, replaces: str | None = None) -> None:
        worker_id = f"{role}-{uuid.uuid4().hex[:10]}"
        ready_file = self._run_dir / f"{worker_id}.ready"
        ready_file.unlink(missing_ok=True)
        port = _free_port(self._host)
        knobs = self._knobs.get(role)
        argv = self._roles[role].render(port=port, ready_file=ready_file, role=role, worker_id=worker_id, knobs=knobs)
        output = self._run_dir / f"{worker_id}.log"
        pid = os.posix_spawnp(
            argv[0],
            argv,
            {**os.environ, **self._roles[role].env},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(output), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,  # survives the agent's terminal/process group: a restarted agent re-adopts it
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT),
        )
        self._workers[worker_id] = WorkerRecord(
            worker_id=worker_id,
            role=role,
            pid=pid,
            port=port,
            started_at=self._clock.now(),
            proc_starttime=_proc_starttime(pid),
            ready_file=str(ready_file),
            knobs=knobs,
            replaces=replaces,
        )
        self._save()  # persist each spawn at once: a crash right after must not orphan the worker
        log.info("started worker %s pid %d port %d: %s", worker_id, pid, port, " ".join(argv))

    def _drain(self, worker: WorkerRecord) -> None:
        alive, _ = _probe(worker)
        if alive:  # checked just before signalling: never SIGTERM a process that reused the pid
            os.kill(worker.pid, signal.SIGTERM)
        self._workers[worker.worker_id] = worker.model_copy(update={"draining_since": self._clock.now()})
        log.info("draining worker %s pid %d (was %s)", worker.worker_id, worker.pid, worker.state)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, starttime) from /proc/<pid>/stat; None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # comm may contain spaces and parentheses
    return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime) of proc(5)


def _proc_starttime(pid: int) -> int | None:
    stat = _proc_stat(pid) if _HAS_PROC else None
    return stat[1] if stat is not None else None


def _probe(worker: WorkerRecord) -> tuple[bool, int | None]:
    """(alive, exit code if we reaped it). Reaps only a process that is provably ours."""
    zombie = False
    if _HAS_PROC:
        stat = _proc_stat(worker.pid)
        if stat is None or stat[1] != worker.proc_starttime:
            return False, None  # gone, or the pid now belongs to another process
        zombie = stat[0] == "Z"
    else:
        try:
            os.kill(worker.pid, 0)
        except ProcessLookupError:
            return False, None
        except PermissionError:
            return True, None
    try:
        pid, status = os.waitpid(worker.pid, os.WNOHANG)
    except ChildProcessError:  # adopted after a restart: someone else is its parent and reaps it
        return not zombie, None
    if pid == 0:
        return True, None
    return False, os.waitstatus_to_exitcode(status)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # workers are session (and group) leaders: pgid == pid


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
