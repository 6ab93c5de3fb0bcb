"""The agent's checkpoint: a restarted agent resumes what it learned, and any checkpoint it must
not trust (stale, another plan, other code, damaged, writable by others) is set aside with the
reason while the agent starts cold and keeps planning."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
from test_agent_runtime import PROFILE, Clock, config_data, prometheus_url, report

from fleet_sim.matrix import quick_cells
from local_agent.checkpoint import load_checkpoint, plan_fingerprint, save_checkpoint
from local_agent.config import parse_config
from local_agent.runtime import open_runtime

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

__all__ = ["prometheus_url"]  # the fixture, used by name


class Readings:
    """A clock that returns these times in turn (each tick and each shutdown reads it once)."""

    def __init__(self, *times: float):
        self.times = iter(times)

    def now(self) -> float:
        return next(self.times)


METRICS: dict[str, float | None] = {}  # the last runtime's checkpoint metrics, read after it stopped


async def _ticks(config, clock, n: int) -> list:
    """``n`` ticks of a runtime whose orchestrator runs each target by the next tick."""
    decisions = []
    async with open_runtime(config, clock=clock) as runtime:
        for _ in range(n):
            decisions.append(await runtime.tick())
            report(config.state_dir, ready=decisions[-1].pools[0].target)
        agent = runtime.agent
    registry = runtime.metrics.registry
    METRICS.clear()
    METRICS["resumed"] = registry.get_sample_value("fleet_agent_resumed", {"deployment": "chat"})
    for outcome in ("ok", "failed"):
        labels = {"deployment": "chat", "outcome": outcome}
        METRICS[outcome] = registry.get_sample_value("fleet_agent_checkpoint_writes_total", labels)
    return [decisions, agent]


def _signature(decision) -> list:
    return [(p.role, p.current, p.target, p.reason.value, p.detail) for p in decision.pools]


async def test_a_restarted_agent_resumes_exactly_where_it_stopped(tmp_path: Path, prometheus_url: str, caplog) -> None:
    config = parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path)
    path = tmp_path / "agent-checkpoint.pickle"
    report(tmp_path, ready=3)
    ticks = [1005.0, 1010.0, 1015.0, 1020.0, 1025.0, 1035.0, 1040.0, 1045.0]
    straight, _ = await _ticks(config, Readings(*ticks, 1050.0), 8)
    path.unlink()  # written when that runtime stopped
    report(tmp_path, ready=3)

    first, stopped = await _ticks(config, Readings(*ticks[:5], 1030.0), 5)
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600  # written on shutdown, private
    with caplog.at_level(logging.INFO, logger="local_agent.runtime"):
        second, resumed = await _ticks(config, Readings(*ticks[5:], 1050.0), 3)
    assert "resuming the learned state" in caplog.text and METRICS["resumed"] == 1
    # The same decisions as one agent running all eight ticks, and the same learned state.
    assert [_signature(d) for d in first + second] == [_signature(d) for d in straight]
    assert resumed is not stopped and resumed.intake.windows == stopped.intake.windows + 3


async def test_checkpoints_are_written_every_interval(tmp_path: Path, prometheus_url: str) -> None:
    data = config_data(tmp_path, prometheus_url, checkpoint={"file": "ck/agent.ck", "every_s": "12s"})
    config = parse_config(data, base_dir=tmp_path)
    report(tmp_path, ready=2)
    path = tmp_path / "ck" / "agent.ck"
    saved: list[float] = []
    async with open_runtime(config, clock=Clock()) as runtime:
        for _ in range(7):  # 5 s apart
            await runtime.tick()
            header = json.loads(path.read_bytes().partition(b"\n")[0])
            saved.append(header["saved_s"])
    assert sorted(set(saved)) == [1005.0, 1020.0, 1035.0]  # the first tick, then at least 12 s apart
    writes = runtime.metrics.registry.get_sample_value(
        "fleet_agent_checkpoint_writes_total", {"deployment": "chat", "outcome": "ok"}
    )
    assert writes == 4  # and once more on shutdown


async def test_no_checkpoint_section_writes_and_reads_nothing(tmp_path: Path, prometheus_url: str) -> None:
    config = parse_config(config_data(tmp_path, prometheus_url, checkpoint=None), base_dir=tmp_path)
    report(tmp_path, ready=2)
    await _ticks(config, Clock(), 2)
    assert not list(tmp_path.glob("*.pickle"))


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda p: p.write_bytes(b"not a checkpoint"), "no checkpoint header"),
        (lambda p: p.write_bytes(p.read_bytes()[:-200]), "damaged"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])), "match its checksum"),
        (lambda p: os.chmod(p, 0o666), "another user owns it or may write it"),
        (lambda p: _header(p, code="0" * 64), "written by other code"),
        (lambda p: _header(p, format=0), "format 0, not 1"),
        (lambda p: _header(p, saved_s=0.0), "more than checkpoint.max_age_s"),
        (lambda p: _header(p, saved_s=1e9), "in the future"),
        (lambda p: _header(p, saved_s=float("nan")), "no valid save time"),
    ],
)
async def test_an_untrustworthy_checkpoint_is_set_aside_and_the_agent_starts_cold(
    tmp_path: Path, prometheus_url: str, caplog, spoil, reason: str
) -> None:
    config = parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path)
    report(tmp_path, ready=3)
    clock = Clock()
    await _ticks(config, clock, 4)
    spoil(tmp_path / "agent-checkpoint.pickle")
    with caplog.at_level(logging.INFO, logger="local_agent.runtime"):
        decisions, agent = await _ticks(config, clock, 1)
    assert f"starting cold: checkpoint {tmp_path / 'agent-checkpoint.pickle'}: " in caplog.text
    assert reason in caplog.text and METRICS["resumed"] == 0
    assert agent.intake.windows == 1 and decisions[0].pools[0].current == 3  # cold, from what runs


def _header(path: Path, **changes) -> None:
    first, _, body = path.read_bytes().partition(b"\n")
    header = {**json.loads(first), **changes}
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)
    os.chmod(path, 0o600)


async def test_another_plan_starts_cold(tmp_path: Path, prometheus_url: str, caplog) -> None:
    report(tmp_path, ready=3)
    clock = Clock()
    await _ticks(parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path), clock, 3)
    changed = config_data(tmp_path, prometheus_url, options={"throughput_interval_s": 60})
    with caplog.at_level(logging.INFO, logger="local_agent.runtime"):
        _, agent = await _ticks(parse_config(changed, base_dir=tmp_path), clock, 1)
    assert "written for another deployment, options, tick or profile" in caplog.text
    assert agent.options.throughput_interval_s == 60 and agent.intake.windows == 1


async def test_a_checkpoint_that_cannot_be_written_is_logged_and_planning_goes_on(
    tmp_path: Path, prometheus_url: str, caplog
) -> None:
    (tmp_path / "blocked").write_text("a file where the checkpoint's folder should be")
    data = config_data(tmp_path, prometheus_url, checkpoint={"file": "blocked/agent.ck"})
    report(tmp_path, ready=2)
    with caplog.at_level(logging.WARNING, logger="local_agent.runtime"):
        decisions, _ = await _ticks(parse_config(data, base_dir=tmp_path), Clock(), 2)
    assert len(decisions) == 2 and "checkpoint not written to" in caplog.text
    assert METRICS["failed"] == 2 and METRICS["ok"] is None  # the first tick's and the shutdown's


def test_the_fingerprint_covers_the_profiles_bytes(tmp_path: Path) -> None:
    from agent_link_helpers import chat_deployment

    copy = tmp_path / "profile"
    copy.mkdir()
    for file in PROFILE.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    data = {**config_data(tmp_path, "http://127.0.0.1:9"), "deployment": chat_deployment(profile=str(copy))}
    config = parse_config(data, base_dir=tmp_path)
    before = plan_fingerprint(config.spec(), config.options, 5.0)
    assert plan_fingerprint(config.spec(), config.options, 5.0) == before
    assert plan_fingerprint(config.spec(), config.options, 10.0) != before
    first = sorted(copy.iterdir())[0]
    first.write_bytes(first.read_bytes() + b" ")
    assert plan_fingerprint(config.spec(), config.options, 5.0) != before


def test_warm_restarts_in_replay_change_no_decision(tmp_path: Path) -> None:
    """Through the checkpoint file, in the simulator: agents stopped and resumed twice decide
    exactly as agents never stopped; agents restarted cold do not."""
    from bench_restart import run

    cell = quick_cells()[1]
    runs = {mode: run(cell, mode, [150.0, 330.0], 0.0, tmp_path) for mode in ("none", "warm", "cold")}
    assert runs["warm"]["decisions"] == runs["none"]["decisions"]
    assert runs["cold"]["decisions"] != runs["none"]["decisions"]


def test_load_checkpoint_reports_a_missing_file_quietly(tmp_path: Path) -> None:
    restored = load_checkpoint(tmp_path / "none.ck", "x", 0.0, 60.0)
    assert restored.agent is None and restored.reason == "no checkpoint yet"
    folder = tmp_path / "folder.ck"
    folder.mkdir()
    assert load_checkpoint(folder, "x", 0.0, 60.0).reason == "not a regular file"


def test_save_checkpoint_creates_its_folder(tmp_path: Path) -> None:
    from fleet_sim.adapters.local import build_agents
    from fleet_sim.matrix import build_scenario
    from local_agent.decide.options import AgentOptions

    scenario = build_scenario(quick_cells()[1], "local", tmp_path / "data")
    agent = next(iter(build_agents(scenario.deployment_specs(), 30.0, AgentOptions()).values()))
    fingerprint = plan_fingerprint(agent.spec, agent.options, agent.tick_s)
    size = save_checkpoint(tmp_path / "a" / "b.ck", agent, fingerprint, 100.0)
    restored = load_checkpoint(tmp_path / "a" / "b.ck", fingerprint, 130.0, 60.0)
    assert size > 0 and restored.agent is not None and restored.reason == "saved 30 s ago"
    assert restored.agent.targets() == agent.targets()


async def test_a_resumed_agent_that_fails_its_first_step_is_replaced_by_a_cold_one(
    tmp_path: Path, prometheus_url: str, caplog
) -> None:
    """A checkpoint that loads but holds an agent that cannot plan (a bug, a state no test saw)
    must not stop planning: the runtime drops it for a cold agent on the same tick."""
    config = parse_config(config_data(tmp_path, prometheus_url), base_dir=tmp_path)
    report(tmp_path, ready=3)
    clock = Clock()
    _, agent = await _ticks(config, clock, 4)
    agent.sizer = None  # loads fine, fails at its first step
    assert config.checkpoint is not None
    fingerprint = plan_fingerprint(config.spec(), config.options, config.tick_s)
    save_checkpoint(config.checkpoint.file, agent, fingerprint, clock.time)
    with caplog.at_level(logging.INFO, logger="local_agent.runtime"):
        decisions, fresh = await _ticks(config, clock, 2)
    assert "resuming the learned state" in caplog.text
    assert "failed its first step: starting cold" in caplog.text
    assert fresh is not None and fresh.sizer is not None and fresh.intake.windows == 2
    assert [d.pools[0].current for d in decisions] == [3, decisions[0].pools[0].target]
