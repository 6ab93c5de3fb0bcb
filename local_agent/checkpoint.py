"""The agent's learned state across restarts.

A sidecar is restarted for many reasons (an upgrade, an OOM kill, a liveness probe, a node
drain). Started cold, the agent forgets its forecast history, the TTFT and ITL corrections, the
misses it remembers, its stabilisation window and when it last reversed, and decides on an
uncorrected model again: two cold restarts an hour turned a steady pool into one that reversed four
times per hour (docs/local-agent.md, *Restarts*). So the runtime checkpoints its
:class:`~local_agent.agent.LocalAgent` every ``checkpoint.every_s`` and when it stops, and a
restarted agent resumes from the checkpoint instead of from nothing.

The checkpoint is the pickled agent behind a one-line JSON header: the format, the body's
checksum, the digest of the code that wrote it (a pickle is only read by the very code that wrote
it: a changed class would load and fail later), the plan's fingerprint (deployment, options, tick
and the profiles' bytes: a changed config plans afresh) and the wall time it was saved. A
checkpoint that is older than ``checkpoint.max_age_s`` (the traffic it learned may be gone), of
other code or another plan, damaged, or writable by anyone but the agent's own user is set aside
with one log line that says why, and the agent starts cold, as without one; so is a resumed agent
whose first step fails (the runtime's part). Reading a pickle runs code, hence the ownership
check: the file is written 0600 in the agent's own state folder, and one that group or others
may write, or another user owns, is not read.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fleet_planner.errors import unreadable
from fleet_planner.files import write_atomically
from fleet_planner.planning import DeploymentSpec
from local_agent.agent import LocalAgent
from local_agent.decide.options import AgentOptions

FORMAT = 1
CLOCK_SLACK_S = 60.0  # a checkpoint stamped this far in the future is still read (clocks disagree a little)


@cache
def code_digest() -> str:
    """A hash of the planning code (``fleet_planner`` and ``local_agent``): the classes a pickle names."""
    import fleet_planner
    import local_agent

    digest = hashlib.sha256()
    for package in (fleet_planner, local_agent):
        root = Path(package.__path__[0])
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def plan_fingerprint(spec: DeploymentSpec, options: AgentOptions, tick_s: float) -> str:
    """What the learned state belongs to: the deployment as configured, the options, the tick and
    every profile's files (a re-profiled engine starts from its new profile)."""
    digest = hashlib.sha256()
    digest.update(spec.model_dump_json().encode() + b"\0" + options.model_dump_json().encode())
    digest.update(f"\0{tick_s!r}\0".encode())
    for profile in sorted({pool.profile_path for pool in spec.pools.values()}):
        folder = Path(profile)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Restored:
    """A checkpoint read back: the agent, or None and why it was set aside."""

    agent: LocalAgent | None
    reason: str


def checkpoint_bytes(agent: LocalAgent, fingerprint: str, now_s: float) -> bytes:
    """The checkpoint of ``agent`` as it is now (taken where nothing else changes it: the
    runtime's loop, between ticks)."""
    body = pickle.dumps(agent, protocol=pickle.HIGHEST_PROTOCOL)
    header = {
        "format": FORMAT,
        "code": code_digest(),
        "plan": fingerprint,
        "saved_s": now_s,
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return json.dumps(header).encode() + b"\n" + body


def write_checkpoint(path: Path, data: bytes) -> None:
    """Write checkpoint bytes to ``path`` (its folder created; atomically, durably, 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, durable=True, private=True)


def save_checkpoint(path: Path, agent: LocalAgent, fingerprint: str, now_s: float) -> int:
    """Take and write ``agent``'s checkpoint; returns the bytes written."""
    data = checkpoint_bytes(agent, fingerprint, now_s)
    write_checkpoint(path, data)
    return len(data)


def load_checkpoint(path: Path, fingerprint: str, now_s: float, max_age_s: float) -> Restored:
    """The agent saved at ``path`` if it may be resumed now, else None and the reason."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return Restored(None, "no checkpoint yet")
    except OSError as exc:
        return Restored(None, f"cannot look it up: {unreadable(exc)}")
    if not stat.S_ISREG(info.st_mode):
        return Restored(None, "not a regular file")
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return Restored(None, "another user owns it or may write it (a pickle runs code when read)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Restored(None, f"cannot read it: {unreadable(exc)}")
    first, _, body = data.partition(b"\n")
    try:
        header = json.loads(first)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Restored(None, "no checkpoint header (damaged, or not a checkpoint)")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return Restored(None, f"format {header.get('format') if isinstance(header, dict) else None!r}, not {FORMAT}")
    if header.get("code") != code_digest():
        return Restored(None, "written by other code (an upgrade): its classes may have changed")
    if header.get("plan") != fingerprint:
        return Restored(None, "written for another deployment, options, tick or profile")
    saved = header.get("saved_s")
    if not isinstance(saved, int | float) or saved != saved:
        return Restored(None, "no valid save time")
    age = now_s - float(saved)
    if age > max_age_s:
        return Restored(None, f"saved {age:.0f} s ago, more than checkpoint.max_age_s ({max_age_s:.0f} s)")
    if age < -CLOCK_SLACK_S:
        return Restored(None, f"stamped {-age:.0f} s in the future (the clock went back?)")
    if header.get("sha256") != hashlib.sha256(body).hexdigest():
        return Restored(None, "damaged: its content does not match its checksum")
    try:
        agent = pickle.loads(body)
    except Exception as exc:  # a truncated or damaged pickle raises almost anything
        return Restored(None, f"damaged: {type(exc).__name__}: {exc}")
    if not isinstance(agent, LocalAgent):
        return Restored(None, f"holds a {type(agent).__name__}, not an agent")
    return Restored(agent, f"saved {max(0.0, age):.0f} s ago")
