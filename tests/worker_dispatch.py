"""The tests' client of the example worker protocol (``local_agent.connectors.worker``): send jobs
round-robin to ready workers, retry elsewhere.

A job is retried on another worker only when the worker provably did not take it (connection
refused or reset before any reply, or an explicit ``refused``), so a graceful drain never runs a
job twice and never loses one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from local_agent.connectors.worker import DONE_REPLY, JOB_VERB, REFUSED_REPLY


class JobOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    port: int
    attempts: int


class DispatchError(RuntimeError):
    """A job could not be placed on any worker before the deadline, or its fate is unknown."""


class Dispatcher:
    """Round-robin over whatever ports ``ready_ports()`` returns at each attempt."""

    def __init__(
        self,
        ready_ports: Callable[[], Sequence[int]],
        *,
        host: str = "127.0.0.1",
        retry_delay_s: float = 0.02,
        give_up_after_s: float = 30.0,
    ) -> None:
        self._ready_ports = ready_ports
        self._host = host
        self._retry_delay_s = retry_delay_s
        self._give_up_after_s = give_up_after_s
        self._next = 0

    async def dispatch(self, job_id: str, duration_ms: float) -> JobOutcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._give_up_after_s
        attempts = 0
        failed_in_a_row = 0
        while loop.time() < deadline:
            ports = list(self._ready_ports())
            if ports:
                port = ports[self._next % len(ports)]
                self._next += 1
                attempts += 1
                if await self._try(port, job_id, duration_ms):
                    return JobOutcome(job_id=job_id, port=port, attempts=attempts)
                failed_in_a_row += 1
            if not ports or failed_in_a_row >= len(ports):
                failed_in_a_row = 0
                await asyncio.sleep(self._retry_delay_s)
        raise DispatchError(f"job {job_id}: no worker took it within {self._give_up_after_s} s ({attempts} attempts)")

    async def _try(self, port: int, job_id: str, duration_ms: float) -> bool:
        """True when the job is done; False when this worker did not take it (safe to retry)."""
        try:
            reader, writer = await asyncio.open_connection(self._host, port)
        except OSError:
            return False  # refused: not listening (draining or gone)
        try:
            writer.write(f"{JOB_VERB} {job_id} {duration_ms:g}\n".encode())
            await writer.drain()
            timeout = duration_ms / 1000.0 + self._give_up_after_s
            reply = await asyncio.wait_for(reader.readline(), timeout)
        except ConnectionError:
            return False  # reset before any reply: the worker never read the job
        except TimeoutError as exc:
            raise DispatchError(f"job {job_id}: no reply from port {port}; it may still be running") from exc
        finally:
            writer.close()
        if not reply:
            return False  # closed before reading (listening socket closed under a queued connection)
        verb, _, rest = reply.decode().strip().partition(" ")
        if verb == DONE_REPLY and rest == job_id:
            return True
        if verb == REFUSED_REPLY and rest == job_id:
            return False
        raise DispatchError(f"job {job_id}: unexpected reply {reply!r} from port {port}")
