"""An OpenAI-compatible streaming server in front of an emulated engine.

Routes: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``stream: true`` gives
server-sent events in the OpenAI chunk format, ending with ``data: [DONE]``; otherwise one JSON
body), ``GET /v1/models`` (with ``max_model_len``, as vLLM reports it), ``GET /health`` and
``GET /metrics`` (Prometheus text). Every emitted token is one chunk whose text is `` tok``.

Draining (SIGTERM in the CLI): ``/health`` turns 503, new requests get 503, requests in flight
finish, then the server stops — what the local processes connector expects of a worker.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from fleet_planner.emulate.engine import Engine, EngineRole, RequestRejected, Sequence
from fleet_planner.emulate.metrics import EmulatorMetrics
from fleet_planner.emulate.openai import ChatRequest, CompletionRequest, error_body
from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel

TOKEN_TEXT = " tok"


@dataclass
class _Progress:
    """Tokens emitted by the engine and not yet written to the client."""

    event: asyncio.Event
    pending: int = 0
    done: bool = False
    t_first: float | None = None  # when the first and the last token were handed to the handler
    t_last: float | None = None


class EmulatorServer:
    """One emulated engine behind HTTP. ``app`` is the aiohttp application to run."""

    def __init__(
        self,
        model: PerfModel,
        *,
        served_model: str,
        knobs: EngineKnobs = EngineKnobs(),
        role: EngineRole = "agg",
        max_context: int | None = None,
        namespace: str = "emulator",
        frontend_metrics: bool = True,
        speed: float = 1.0,
    ):
        self.served_model = served_model
        self.max_context = max_context or model.max_context or int(model.max_kv_tokens)
        self.engine = Engine(model, knobs, role=role, speed=speed)
        self.metrics = EmulatorMetrics(
            self.engine, namespace=namespace, component=role, model=served_model, frontend=frontend_metrics
        )
        self.engine.on_iteration = self.metrics.on_iteration
        self.draining = False
        self._handlers = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
                web.get("/metrics", self._metrics),
            ]
        )
        self.app.on_startup.append(self._on_startup)
        self.app.on_cleanup.append(self._on_cleanup)

    async def _on_startup(self, _app: web.Application) -> None:
        self.engine.start()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.engine.stop()

    async def drain(self) -> None:
        """Refuse new work and wait until every request in flight has been answered."""
        self.draining = True
        await self._idle.wait()

    # ---- simple routes ----------------------------------------------------------------------
    async def _models(self, _request: web.Request) -> web.Response:
        card = {
            "id": self.served_model,
            "object": "model",
            "created": 0,
            "owned_by": "fleet-planner-emulator",
            "max_model_len": self.max_context,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _health(self, _request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    # ---- generation -------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        arrival = time.monotonic()
        if self.draining:
            return _error("the server is draining; retry on another replica", "ServiceUnavailable", 503)
        try:
            raw = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("the body is not valid JSON", "invalid_request_error", 400)
        try:
            body = ChatRequest.model_validate(raw) if chat else CompletionRequest.model_validate(raw)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in problem["loc"]) or "body"
            return _error(f"{where}: {problem['msg']}", "invalid_request_error", 400)
        if body.model != self.served_model:
            return _error(f"The model `{body.model}` does not exist.", "NotFoundError", 404)
        n_in, n_out = body.input_tokens(), body.output_tokens()
        if n_in + n_out > self.max_context:
            return _error(
                f"This model's maximum context length is {self.max_context} tokens. However, you requested "
                f"{n_in + n_out} tokens ({n_in} in the messages, {n_out} in the completion).",
                "BadRequestError",
                400,
            )
        progress = _Progress(asyncio.Event())

        def on_token(done: bool) -> None:
            progress.pending += 1
            progress.done = done
            progress.t_last = time.monotonic()
            if progress.t_first is None:
                progress.t_first = progress.t_last
            progress.event.set()

        seq = Sequence(n_in, n_out, on_token, arrival)
        try:
            self.engine.submit(seq)
        except RequestRejected as exc:
            return _error(str(exc), "BadRequestError", 400)
        self.metrics.on_arrival(n_in)
        self._handlers += 1
        self._idle.clear()
        try:
            if body.stream:
                return await self._stream(request, seq, progress, chat, body.include_usage)
            return await self._whole(seq, progress, chat)
        finally:
            if not progress.done:
                self.engine.cancel(seq)
            else:
                self._finished(seq, progress)
            self._handlers -= 1
            if self._handlers == 0:
                self._idle.set()

    def _finished(self, seq: Sequence, progress: _Progress) -> None:
        """Metrics from delivery times: what a client of this server sees."""
        first, last = progress.t_first, progress.t_last
        ttft = None if first is None else first - seq.arrival
        itl = None
        if first is not None and last is not None and seq.output_tokens > 1:
            itl = (last - first) / (seq.output_tokens - 1)
        self.metrics.on_finish(seq.output_tokens, ttft, itl)

    async def _stream(
        self, request: web.Request, seq: Sequence, progress: _Progress, chat: bool, usage: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunk = _Chunker(self.served_model, chat)
        if chat:
            await response.write(chunk.event({"role": "assistant", "content": ""}, None))
        written = 0
        while True:
            await progress.event.wait()
            progress.event.clear()
            count, progress.pending = progress.pending, 0
            parts = []
            for i in range(count):
                last = progress.done and i == count - 1
                parts.append(chunk.event(TOKEN_TEXT, "length" if last else None))
            written += count
            if progress.done:
                if usage:
                    parts.append(chunk.usage(seq.input_tokens, written))
                parts.append(b"data: [DONE]\n\n")
            await response.write(b"".join(parts))
            if progress.done:
                break
        await response.write_eof()
        return response

    async def _whole(self, seq: Sequence, progress: _Progress, chat: bool) -> web.Response:
        while not progress.done:
            await progress.event.wait()
            progress.event.clear()
        text = TOKEN_TEXT * seq.output_tokens
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response(
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.served_model,
                "choices": [choice],
                "usage": _usage(seq.input_tokens, seq.output_tokens),
            }
        )


class _Chunker:
    """Serialises the SSE events of one streamed response."""

    def __init__(self, model: str, chat: bool):
        self.chat = chat
        self.base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def event(self, content: str | dict[str, str], finish: str | None) -> bytes:
        if self.chat:
            delta = content if isinstance(content, dict) else {"content": content}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
        return b"data: " + json.dumps({**self.base, "choices": [choice]}).encode() + b"\n\n"

    def usage(self, prompt: int, completion: int) -> bytes:
        body: dict[str, Any] = {**self.base, "choices": [], "usage": _usage(prompt, completion)}
        return b"data: " + json.dumps(body).encode() + b"\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error(message: str, kind: str, status: int) -> web.Response:
    return web.json_response(error_body(message, kind, status), status=status)
