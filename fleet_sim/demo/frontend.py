"""The demo's frontend: routes streamed completions to emulated engine processes over HTTP.

Aggregated deployments: each request goes to the ``agg`` worker with the fewest requests in
flight, and its SSE stream is passed through. Disaggregated ones: the prompt goes to the least busy
``prefill`` worker (``max_tokens`` 1, its token is not forwarded), then — after the KV transfer time
the simulator charges (``input x kv_bytes_per_token / kv_transfer_gbps``) — to the least busy
``decode`` worker, whose stream (first token on admission, as in the simulator) is passed through.
So TTFT includes prefill, KV transfer and decode admission, as it does in ``simulate``.

``/metrics`` exports the Dynamo frontend request metrics (``dynamo_frontend_*``, labelled
``dynamo_namespace`` = the deployment) the agent's Prometheus queries read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from fleet_planner.emulate.metrics import FrontendMetrics

WorkerUrls = Callable[[str], list[str]]  # role -> base URLs of the ready workers


@dataclass
class RequestRecord:
    """What the frontend saw of one request (times on the frontend's clock, seconds)."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    t_first: float | None = None
    t_last: float | None = None

    @property
    def itl_ms(self) -> float | None:
        if self.t_first is None or self.t_last is None or self.output_tokens < 2:
            return None
        return (self.t_last - self.t_first) * 1000 / (self.output_tokens - 1)


class Frontend:
    """One deployment's router; ``workers(role)`` is asked on every request (replicas change)."""

    def __init__(
        self,
        mode: str,
        workers: WorkerUrls,
        *,
        kv_transfer_s_per_token: float,
        namespace: str,
        model: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.mode = mode
        self.registry = CollectorRegistry()
        self.metrics = FrontendMetrics(self.registry, namespace=namespace, model=model)
        self.clock = clock
        self.records: list[RequestRecord] = []
        self.workers = workers
        self.kv_transfer_s_per_token = kv_transfer_s_per_token
        self.in_flight: dict[str, int] = {}
        self.refused: set[str] = set()  # workers that turned a request away (draining): not asked again
        self.session: aiohttp.ClientSession | None = None
        self.app = web.Application()
        self.app.add_routes([web.post("/v1/completions", self._completions), web.get("/metrics", self._metrics)])
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)

    async def _start(self, _app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)

    async def _stop(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    def _pick(self, role: str) -> str | None:
        urls = [url for url in self.workers(role) if url not in self.refused]
        return min(urls, key=lambda url: self.in_flight.get(url, 0)) if urls else None

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = RequestRecord(self.clock(), len(body["prompt"]), int(body["max_tokens"]))
        self.records.append(record)
        self.metrics.on_arrival(record.input_tokens)
        if self.mode == "disagg":
            status, text = await self._retrying("prefill", lambda url: self._prefill(url, body))
            if status != 200:
                return web.Response(status=status, text=text, content_type="application/json")
            await asyncio.sleep(len(body["prompt"]) * self.kv_transfer_s_per_token)
        role = "decode" if self.mode == "disagg" else "agg"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        status, text = await self._retrying(role, lambda url: self._proxy(request, response, url, body, record))
        if status != 200:
            return web.Response(status=status, text=text, content_type="application/json")
        return response

    async def _retrying(self, role: str, attempt: Callable[[str], Awaitable[tuple[int, str]]]) -> tuple[int, str]:
        """Try the least busy ready worker; one that turns the request away (draining: 503, or
        already gone) is not asked again and the request goes to another, as a real frontend does."""
        while True:
            url = await self._wait_for(role)
            try:
                status, text = await attempt(url)
            except aiohttp.ClientConnectorError:
                status, text = 503, ""
            if status != 503:
                return status, text
            self.refused.add(url)

    async def _wait_for(self, role: str) -> str:
        """A pool without a ready replica holds its requests (as the simulator's pool queue does)."""
        while (url := self._pick(role)) is None:
            await asyncio.sleep(0.05)
        return url

    async def _prefill(self, url: str, body: dict) -> tuple[int, str]:
        assert self.session is not None
        self.in_flight[url] = self.in_flight.get(url, 0) + 1
        try:
            async with self.session.post(url + "/v1/completions", json={**body, "max_tokens": 1}) as response:
                return response.status, await response.text()
        finally:
            self.in_flight[url] -= 1

    async def _proxy(
        self, request: web.Request, response: web.StreamResponse, url: str, body: dict, record: RequestRecord
    ) -> tuple[int, str]:
        """Stream one worker's answer through; (status, error body) when it did not answer 200."""
        assert self.session is not None
        self.in_flight[url] = self.in_flight.get(url, 0) + 1
        try:
            async with self.session.post(url + "/v1/completions", json=body) as upstream:
                if upstream.status != 200:
                    return upstream.status, await upstream.text()
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if record.t_first is None:
                        record.t_first = self.clock()
                    await response.write(chunk)
                record.t_last = self.clock()
                ttft = None if record.t_first is None else record.t_first - record.arrival_s
                self.metrics.on_finish(
                    record.output_tokens, ttft, None if record.itl_ms is None else record.itl_ms / 1000
                )
                await response.write_eof()
                return 200, ""
        finally:
            self.in_flight[url] -= 1
