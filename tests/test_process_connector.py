"""Local process connector with real worker processes: scaling under load loses no job, drains
finish in-flight work, a restarted agent re-adopts its workers, bad state files are handled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from worker_dispatch import Dispatcher

from local_agent.connectors import ProcessConnector, ReplicaCounts, StateFileError, WorkerCommand

REPO_ROOT = Path(__file__).resolve().parents[1]
ConnectorFactory = Callable[..., ProcessConnector]


def demo_command(tmp_path: Path) -> WorkerCommand:
    return WorkerCommand(
        argv=[
            sys.executable,
            "-m",
            "local_agent.connectors.worker",
            "--port",
            "{port}",
            "--ready-file",
            "{ready_file}",
            "--job-log",
            str(tmp_path / "jobs-{worker_id}.log"),
        ],
        env={"PYTHONPATH": str(REPO_ROOT)},
    )


@pytest.fixture
def connectors() -> Iterator[ConnectorFactory]:
    """Makes connectors; afterwards kills every worker any of them still tracks, even on failure."""
    made: list[ProcessConnector] = []

    def make(*args: object, **kwargs: object) -> ProcessConnector:
        conn = ProcessConnector(*args, **kwargs)  # type: ignore[arg-type]
        made.append(conn)
        return conn

    yield make
    for conn in made:
        for worker in conn.workers():
            try:
                if os.waitpid(worker.pid, os.WNOHANG)[0] == 0:  # still our unreaped child: safe to kill
                    os.killpg(worker.pid, signal.SIGKILL)
                    os.waitpid(worker.pid, 0)
            except (ChildProcessError, ProcessLookupError):
                pass
        asyncio.run(conn.close())


async def wait_counts(conn: ProcessConnector, role: str, want: ReplicaCounts, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (got := (await conn.observe_replicas())[role]) != want:
        assert loop.time() < deadline, f"{role}: waited {timeout_s} s for {want}, have {got}"
        await asyncio.sleep(0.02)


def ready_ports(conn: ProcessConnector) -> Callable[[], list[int]]:
    return lambda: [w.port for w in conn.workers() if w.state == "ready"]


def job_log(tmp_path: Path) -> list[tuple[str, int, bool]]:
    """(job id, pid, finished while draining) for every job any worker finished."""
    rows = []
    for path in tmp_path.glob("jobs-*.log"):
        for line in path.read_text().splitlines():
            _, job_id, pid, draining = line.split()
            rows.append((job_id, int(pid.removeprefix("pid=")), draining == "draining=1"))
    return rows


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_scale_1_3_1_under_load_loses_no_job_and_restart_readopts(
    tmp_path: Path, connectors: ConnectorFactory
) -> None:
    roles = {"agg": demo_command(tmp_path)}
    state = tmp_path / "state.json"
    conn = connectors(roles, state, drain_timeout_s=30.0)
    await conn.apply({"agg": 1})
    await wait_counts(conn, "agg", ReplicaCounts(ready=1))

    # the router's view of ready workers lags (like load-balancer endpoints): it keeps sending to
    # draining workers for a while, which must refuse so the client retries elsewhere
    routed: list[int] = ready_ports(conn)()
    dispatcher = Dispatcher(lambda: routed, give_up_after_s=10.0)
    jobs: list[asyncio.Task] = []
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            i = len(jobs)
            jobs.append(asyncio.create_task(dispatcher.dispatch(f"j{i}", 100 + (i % 5) * 50)))
            await asyncio.sleep(0.01)

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.3)
    await conn.apply({"agg": 3})
    await conn.apply({"agg": 3})  # idempotent: no extra workers
    assert len(conn.workers()) == 3
    await wait_counts(conn, "agg", ReplicaCounts(ready=3))
    routed = ready_ports(conn)()
    await asyncio.sleep(0.8)

    await conn.apply({"agg": 1})
    assert (await conn.observe_replicas())["agg"] == ReplicaCounts(ready=1, draining=2)
    await asyncio.sleep(0.3)
    routed = ready_ports(conn)()
    await wait_counts(conn, "agg", ReplicaCounts(ready=1))  # both drained, exited and reaped
    await asyncio.sleep(0.3)
    stop.set()
    await producer
    outcomes = await asyncio.gather(*jobs)

    dispatched = {f"j{i}" for i in range(len(jobs))}
    assert {o.job_id for o in outcomes} == dispatched
    assert any(o.attempts > 1 for o in outcomes), "stale routing made some jobs retry on another worker"
    finished = job_log(tmp_path)
    per_job = Counter(job_id for job_id, _, _ in finished)
    assert set(per_job) == dispatched, "every dispatched job finished on some worker"
    assert set(per_job.values()) == {1}, "no job ran twice"
    assert len({pid for _, pid, _ in finished}) == 3, "all three workers served jobs"

    drained = conn.exits
    assert [(e.state, e.exit_code) for e in drained] == [("draining", 0), ("draining", 0)]
    drained_pids = {e.pid for e in drained}
    assert any(draining for _, pid, draining in finished if pid in drained_pids), "in-flight work finished during drain"
    assert not any(pid_alive(pid) for pid in drained_pids)

    # agent restart: a second live agent is refused; after close, a new one adopts the survivor
    with pytest.raises(StateFileError, match="another agent"):
        ProcessConnector(roles, state)
    (survivor,) = conn.workers()
    await conn.close()
    spawned_before = sorted(p.name for p in state.with_name("state.json.run").glob("*.log"))

    conn2 = connectors(roles, state, drain_timeout_s=30.0)
    assert [(w.pid, w.worker_id) for w in conn2.workers()] == [(survivor.pid, survivor.worker_id)]
    assert (await conn2.observe_replicas())["agg"] == ReplicaCounts(ready=1)
    await conn2.apply({"agg": 1})
    assert [w.pid for w in conn2.workers()] == [survivor.pid]
    spawned_after = sorted(p.name for p in state.with_name("state.json.run").glob("*.log"))
    assert spawned_after == spawned_before, "nothing new started"
    outcome = await Dispatcher(ready_ports(conn2)).dispatch("after-restart", 50)
    assert outcome.port == survivor.port

    await conn2.apply({"agg": 0})
    await wait_counts(conn2, "agg", ReplicaCounts())
    assert [(e.pid, e.exit_code) for e in conn2.exits] == [(survivor.pid, 0)]
    assert not pid_alive(survivor.pid)
    assert json.loads(state.read_text())["workers"] == []


async def test_drain_refuses_new_connections_and_sigkills_only_after_timeout(
    tmp_path: Path, connectors: ConnectorFactory
) -> None:
    conn = connectors({"decode": demo_command(tmp_path)}, tmp_path / "state.json", drain_timeout_s=0.6)
    await conn.apply({"decode": 1})
    await wait_counts(conn, "decode", ReplicaCounts(ready=1))
    (worker,) = conn.workers()
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(b"JOB long 20000\n")  # far longer than the drain timeout
    await writer.drain()
    await asyncio.sleep(0.1)

    await conn.apply({"decode": 0})
    await asyncio.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", worker.port)
    assert (await conn.observe_replicas())["decode"] == ReplicaCounts(draining=1)
    assert pid_alive(worker.pid), "not killed before the drain timeout"

    await wait_counts(conn, "decode", ReplicaCounts(), timeout_s=5.0)
    assert [(e.pid, e.exit_code) for e in conn.exits] == [(worker.pid, -signal.SIGKILL)]
    assert await reader.read() == b""
    writer.close()


async def test_stale_state_file_is_cleaned_up_without_signalling_anyone(
    tmp_path: Path, connectors: ConnectorFactory
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = tmp_path / "state.json"

    def record(worker_id: str, pid: int, starttime: int) -> dict[str, object]:
        return {
            "worker_id": worker_id,
            "role": "agg",
            "pid": pid,
            "port": 1,
            "started_at": 0.0,
            "proc_starttime": starttime,
            "ready_file": str(tmp_path / f"{worker_id}.ready"),
            "ready": True,
        }

    # a dead pid, and a live pid (this test process) whose start time does not match: pid reuse
    workers = [record("agg-dead", dead.pid, 1), record("agg-reused", os.getpid(), 1)]
    state.write_text(json.dumps({"version": 1, "workers": workers}))
    conn = connectors({"agg": demo_command(tmp_path)}, state)
    assert conn.workers() == []
    assert json.loads(state.read_text())["workers"] == []
    await conn.apply({"agg": 0})
    assert (await conn.observe_replicas())["agg"] == ReplicaCounts()


@pytest.mark.parametrize("body", ["{not json", '{"version": 1, "workers": [{"pid": "x"}]}', ""])
def test_corrupt_state_file_raises_and_touches_nothing(tmp_path: Path, connectors: ConnectorFactory, body: str) -> None:
    state = tmp_path / "state.json"
    state.write_text(body)
    for _ in range(2):  # the failed attempt released its lock: the second fails the same way
        with pytest.raises(StateFileError, match="not a valid worker state file"):
            connectors({"agg": demo_command(tmp_path)}, state)
    assert state.read_text() == body
    assert list(state.with_name("state.json.run").iterdir()) == []


def test_state_file_with_unconfigured_role_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "version": 1,
                "workers": [
                    {
                        "worker_id": "x",
                        "role": "prefill",
                        "pid": 1,
                        "port": 1,
                        "started_at": 0.0,
                        "proc_starttime": None,
                        "ready_file": "r",
                    }
                ],
            }
        )
    )
    with pytest.raises(StateFileError, match="unconfigured role"):
        ProcessConnector({"agg": demo_command(tmp_path)}, state)


def test_worker_command_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ready_file"):
        WorkerCommand(argv=["worker", "--port", "{port}"])
    with pytest.raises(ValidationError, match="placeholder"):
        WorkerCommand(argv=["worker", "{ready_file}", "{gpu}"])


async def test_apply_rejects_unknown_roles_and_negative_targets(tmp_path: Path, connectors: ConnectorFactory) -> None:
    conn = connectors({"agg": demo_command(tmp_path)}, tmp_path / "state.json")
    with pytest.raises(ValueError, match="unknown role"):
        await conn.apply({"prefill": 1})
    with pytest.raises(ValueError, match="negative"):
        await conn.apply({"agg": -1})
    assert conn.workers() == []


async def test_bare_python_runs_the_agents_own_interpreter(
    tmp_path: Path, connectors: ConnectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``argv: [python, ...]`` starts ``sys.executable`` (the agent's virtual environment), not
    whatever ``python`` is first on PATH — here PATH has a ``python`` that cannot run a worker."""
    decoy = tmp_path / "bin"
    decoy.mkdir()
    (decoy / "python").write_text("#!/bin/sh\nexit 3\n")
    (decoy / "python").chmod(0o755)
    monkeypatch.setenv("PATH", f"{decoy}{os.pathsep}{os.environ.get('PATH', '')}")
    command = WorkerCommand(
        argv=["python", "-m", "local_agent.connectors.worker", "--port", "{port}", "--ready-file", "{ready_file}"]
    )
    assert command.render(port=1, ready_file=tmp_path / "r", role="agg", worker_id="w")[0] == sys.executable
    conn = connectors({"agg": command}, tmp_path / "state.json", drain_timeout_s=5.0)
    await conn.apply({"agg": 1})
    await wait_counts(conn, "agg", ReplicaCounts(ready=1))


def emulator_command() -> WorkerCommand:
    """A real engine stand-in that takes engine-knob flags: ``fleet-planner emulate``."""
    profile = REPO_ROOT / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
    argv = [sys.executable, "-m", "fleet_planner.emulate", "--profile", str(profile), "--port", "{port}"]
    return WorkerCommand(argv=[*argv, "--ready-file", "{ready_file}", "{knobs}"], env={"PYTHONPATH": str(REPO_ROOT)})


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]


async def test_new_knobs_roll_one_worker_at_a_time_keeping_capacity(
    tmp_path: Path, connectors: ConnectorFactory
) -> None:
    """Two emulated engines move to new knobs: each step starts a replacement with the new flags
    beside an old worker and drains the old one only once the new one is ready, so the pool never
    has fewer than two ready engines and never runs two replacements at once; a restarted agent
    keeps the wanted knobs."""
    from fleet_planner.knobs import EngineKnobs

    state = tmp_path / "state.json"
    conn = connectors({"agg": emulator_command()}, state, drain_timeout_s=30.0)
    await conn.apply({"agg": 2})
    await wait_counts(conn, "agg", ReplicaCounts(ready=2), timeout_s=60.0)
    old = {w.worker_id for w in conn.workers()}
    assert all("--max-num-seqs" not in cmdline(w.pid) for w in conn.workers())  # no knobs set yet: engine defaults

    knobs = EngineKnobs(max_num_seqs=12, max_batch_tokens=1024)
    await conn.apply_knobs({"agg": knobs})
    await conn.apply_knobs({"agg": knobs})  # idempotent
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120.0
    while True:
        counts = (await conn.observe_replicas())["agg"]
        assert counts.ready == 2 and counts.starting == 0, "capacity kept; the replacement is not counted"
        assert sum(1 for w in conn.workers() if w.replaces is not None) <= 1, "one replacement at a time"
        if counts == ReplicaCounts(ready=2) and not old & {w.worker_id for w in conn.workers()}:
            break
        assert loop.time() < deadline, f"roll did not finish: {conn.workers()}"
        await asyncio.sleep(0.05)
    for worker in conn.workers():
        assert worker.knobs == knobs
        args = cmdline(worker.pid)
        assert args[args.index("--max-num-batched-tokens") + 1] == "1024"
        assert args[args.index("--max-num-seqs") + 1] == "12"
    assert [e.state for e in conn.exits] == ["draining", "draining"]
    await conn.close()
    conn2 = connectors({"agg": emulator_command()}, state, drain_timeout_s=30.0)
    assert conn2.knobs() == {"agg": knobs}
    await conn2.apply({"agg": 0})
    await wait_counts(conn2, "agg", ReplicaCounts(), timeout_s=30.0)


async def test_knobs_need_a_knobs_item_and_a_known_role(tmp_path: Path, connectors: ConnectorFactory) -> None:
    from fleet_planner.knobs import EngineKnobs

    conn = connectors({"agg": demo_command(tmp_path)}, tmp_path / "state.json")
    with pytest.raises(ValueError, match=r"no \{knobs\} item"):
        await conn.apply_knobs({"agg": EngineKnobs()})
    with pytest.raises(ValueError, match="unknown role"):
        await conn.apply_knobs({"decode": EngineKnobs()})
    assert conn.knobs() == {}
    with pytest.raises(ValidationError, match="an argv item of its own"):
        WorkerCommand(argv=["engine", "--ready", "{ready_file}", "--x={knobs}"])
