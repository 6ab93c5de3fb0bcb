"""A real demo worker for the local process connector: a tiny asyncio TCP job server that drains.

Protocol (one job per connection, newline-terminated ASCII): the client sends ``JOB <id> <ms>``;
the worker sleeps ``ms`` milliseconds ("works") and answers ``done <id>``. Readiness: once it
listens, the worker atomically writes ``--ready-file`` (JSON with pid and port) and prints
``READY <port>``. On SIGTERM/SIGINT it drains: it closes the listening socket (new connections
are refused, so clients retry elsewhere), answers ``refused <id>`` to jobs that arrive on
connections accepted just before, finishes every job it had already taken, logs one line per
finished job to ``--job-log``, and exits 0.

Run: ``python -m local_agent.connectors.worker --port P --ready-file F [--job-log L]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from fleet_planner.files import write_atomically

JOB_VERB = "JOB"
DONE_REPLY = "done"
REFUSED_REPLY = "refused"
ERROR_REPLY = "error"
READ_TIMEOUT_S = 5.0  # a client that connects and says nothing must not hold a drain open forever


def parse_job(line: bytes) -> tuple[str, float] | None:
    """``JOB <id> <ms>`` -> (id, seconds); None when malformed."""
    parts = line.decode("ascii", errors="replace").split()
    if len(parts) != 3 or parts[0] != JOB_VERB:
        return None
    try:
        ms = float(parts[2])
    except ValueError:
        return None
    if not 0 <= ms < 3_600_000:
        return None
    return parts[1], ms / 1000.0


class Worker:
    """Serves jobs until told to stop, then drains without losing any job it accepted."""

    def __init__(self, port: int, ready_file: Path, job_log: Path | None, host: str = "127.0.0.1") -> None:
        self._port = port
        self._host = host
        self._ready_file = ready_file
        self._job_log = job_log.open("a", buffering=1) if job_log is not None else None
        self._draining = False
        self._handlers: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await asyncio.start_server(self._handle, self._host, self._port)
        port = server.sockets[0].getsockname()[1]
        if not stop.is_set():
            write_atomically(self._ready_file, json.dumps({"pid": os.getpid(), "port": port}))
            print(f"READY {port}", flush=True)
        await stop.wait()
        self._draining = True
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # let handlers of just-accepted connections register before we wait on them
        while self._handlers:
            await asyncio.gather(*list(self._handlers), return_exceptions=True)
        if self._job_log is not None:
            self._job_log.close()
        print("DRAINED", flush=True)
        return 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            job = parse_job(line)
            if job is None:
                writer.write(f"{ERROR_REPLY}\n".encode())
            elif self._draining:
                writer.write(f"{REFUSED_REPLY} {job[0]}\n".encode())
            else:
                job_id, seconds = job
                await asyncio.sleep(seconds)
                if self._job_log is not None:
                    self._job_log.write(f"{DONE_REPLY} {job_id} pid={os.getpid()} draining={int(self._draining)}\n")
                writer.write(f"{DONE_REPLY} {job_id}\n".encode())
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # the client went away; a taken job was still finished and logged above
        finally:
            writer.close()
            self._handlers.discard(task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on --host (0 = any free port)")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--job-log", type=Path, default=None, help="append one line per finished job")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    worker = Worker(args.port, args.ready_file, args.job_log, args.host)
    return asyncio.run(worker.run())


if __name__ == "__main__":
    sys.exit(main())
