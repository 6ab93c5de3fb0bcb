"""Files other processes read while they are written (``fleet_planner.files``)."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from fleet_planner.files import write_atomically


def test_a_reader_sees_the_old_or_the_whole_new_content_never_a_part(tmp_path: Path) -> None:
    path = tmp_path / "shared.csv"
    versions = ["a" * 2_000_000 + "\n", "b" * 3_000_000 + "\n"]
    write_atomically(path, versions[0])
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(len(path.read_text()))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(40):
        write_atomically(path, versions[i % 2])
    done.set()
    reader.join()
    assert seen <= {len(v) for v in versions}
    assert [p.name for p in tmp_path.iterdir()] == ["shared.csv"]  # no temporary file left behind


def _write_many(path: str, letter: str) -> None:
    for _ in range(20):
        write_atomically(Path(path), letter * 1_000_000)


def test_processes_writing_the_same_file_at_once_leave_one_whole_version(tmp_path: Path) -> None:
    """Matrix workers derive the same input file in a fresh folder at once (a reader of a
    half-written CSV failed a whole benchmark run)."""
    path = tmp_path / "derived.csv"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_many, args=(str(path), letter)) for letter in "xy"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    text = path.read_text()
    assert len(text) == 1_000_000 and len(set(text)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["derived.csv"]


def test_a_failed_write_keeps_the_old_content_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomically(path, "old", durable=True)
    with pytest.raises(TypeError):
        write_atomically(path, None)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_bytes_and_private_files(tmp_path: Path) -> None:
    path = tmp_path / "agent.ck"
    write_atomically(path, b"\x00\xffbinary", private=True)
    assert path.read_bytes() == b"\x00\xffbinary" and path.stat().st_mode & 0o777 == 0o600
    umask = os.umask(0o022)
    os.umask(umask)
    write_atomically(path, "text")  # not private: the umask decides, as for open()
    assert path.read_text() == "text" and path.stat().st_mode & 0o777 == 0o666 & ~umask
