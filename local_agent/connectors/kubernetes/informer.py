"""A watch-fed cache of one resource's objects (list once, then watch; relist on resync and on 410).

The connector reads its view of DGDs, scaling adapters and pods from these caches instead of
polling: a LIST gives the objects and a ``resourceVersion``; a WATCH from that version streams
every change. The watch is re-opened every ``resync_s`` with a fresh LIST (so a missed event cannot
leave the cache wrong for long), and a ``410 Gone`` (history compacted) also triggers a relist.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from kubernetes_asyncio import watch

from fleet_planner.kube import status_of

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ListCall = Callable[..., Awaitable[Any]]


class Informer:
    """Objects of one LIST call by name, kept current by a background watch."""

    def __init__(self, list_call: ListCall, *, resync_s: float, retry_s: float = 1.0, **params: Any):
        self._list_call = list_call
        self._params = params
        self.resync_s = resync_s
        self.retry_s = retry_s
        self.objects: dict[str, Obj] = {}
        self.resource_version = ""
        self.relists = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """List now (errors raise), then keep watching in the background."""
        await self._relist()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _relist(self) -> None:
        response = await self._list_call(**self._params, _preload_content=False)
        body = json.loads(await response.read())
        self.objects = {item["metadata"]["name"]: item for item in body.get("items") or []}
        self.resource_version = body["metadata"]["resourceVersion"]
        self.relists += 1

    async def _run(self) -> None:
        """Watch until ``resync_s`` ends the stream, then relist; ``last_error`` is set while the
        API cannot be read, so readers can refuse to act on a stale cache."""
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if status_of(exc) != 410:  # 410: history compacted, a relist is the remedy
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("watch failed (%s); relisting in %.1f s", self.last_error, self.retry_s)
                    await asyncio.sleep(self.retry_s)
            try:
                await self._relist()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("relist failed (%s); retrying in %.1f s", self.last_error, self.retry_s)
                await asyncio.sleep(self.retry_s)

    async def _watch_once(self) -> None:
        stream = watch.Watch()
        try:
            async for event in stream.stream(
                self._list_call,
                **self._params,
                resource_version=self.resource_version,
                timeout_seconds=max(1, int(self.resync_s)),
            ):
                obj = event["raw_object"]
                name = obj["metadata"]["name"]
                if event["type"] == "DELETED":
                    self.objects.pop(name, None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self.objects[name] = obj
                self.resource_version = obj["metadata"]["resourceVersion"]
        finally:
            await stream.close()
