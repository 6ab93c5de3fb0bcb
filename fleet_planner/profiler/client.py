"""A timing client for any OpenAI-compatible streaming endpoint (vLLM, SGLang, TRT-LLM, the emulator).

Prompts are sent as token ids, so the input length is exact on every server without a tokenizer;
``ignore_eos`` and ``min_tokens`` ask for exactly ``max_tokens`` output tokens. Every way a server
can misbehave ends in one :class:`ServerError` saying what was wrong and what to check.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import dataclass

import aiohttp

PROMPT_TOKEN_ID = 1000  # any ordinary token id; repeated, it is a valid prompt for every tokenizer


class ServerError(RuntimeError):
    """The server is unreachable or answered in a way a profile cannot be measured from."""


@dataclass(frozen=True)
class ServerInfo:
    """What the profiler learns from the server before measuring."""

    max_context: int | None  # /v1/models max_model_len, when reported
    kv_tokens: int | None  # from /metrics, when reported


@dataclass(frozen=True)
class StreamTiming:
    """One streamed request: arrival times (s, from sending) of its content chunks."""

    sent_at: float  # monotonic clock when the request was sent
    chunk_times: list[float]
    tokens: int  # output tokens (usage when reported, else chunks)

    @property
    def ttft_s(self) -> float:
        return self.chunk_times[0]

    @property
    def tokens_per_chunk(self) -> float:
        return self.tokens / len(self.chunk_times)


class OpenAIClient:
    """Streams completions from ``url`` for ``model``; one aiohttp session per client."""

    def __init__(self, url: str, model: str, session: aiohttp.ClientSession, *, timeout_s: float = 300.0):
        self.base = url.rstrip("/")
        self.model = model
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10.0)
        self.timeout_s = timeout_s

    async def probe(self) -> ServerInfo:
        """Check that the server is up and serves the model; read its context limit and KV size."""
        status, body = await self._get("/v1/models")
        if status == 404:
            max_context = None  # no model list: the first completion checks the name
        elif status != 200:
            raise ServerError(f"{self.base}/v1/models answered HTTP {status}: {body[:200]!r}")
        else:
            max_context = self._check_model(body)
        kv_tokens = None
        status, text = await self._get("/metrics")
        if status == 200:
            kv_tokens = kv_tokens_from_metrics(text)
        return ServerInfo(max_context=max_context, kv_tokens=kv_tokens)

    def _check_model(self, body: str) -> int | None:
        try:
            cards = json.loads(body)["data"]
            names = [card["id"] for card in cards]
        except (ValueError, KeyError, TypeError):
            raise ServerError(f"{self.base}/v1/models is not an OpenAI model list: {body[:200]!r}") from None
        if self.model not in names:
            raise ServerError(f"{self.base} serves {names}, not {self.model!r}; pass --model with one of those")
        card = cards[names.index(self.model)]
        value = card.get("max_model_len")
        return int(value) if isinstance(value, int) and value > 0 else None

    async def _get(self, path: str) -> tuple[int, str]:
        try:
            async with self.session.get(self.base + path, timeout=self.timeout) as response:
                return response.status, await response.text()
        except aiohttp.ClientConnectorError as exc:
            raise ServerError(f"cannot reach {self.base}: {exc.strerror or exc} (is the server running?)") from None
        except TimeoutError:
            raise ServerError(f"{self.base}{path}: no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise ServerError(f"{self.base}{path}: {exc!r}") from None

    async def stream(self, input_tokens: int, output_tokens: int) -> StreamTiming:
        """Send one streamed completion and time its chunks; exactly ``output_tokens`` must come back."""
        body = {
            "model": self.model,
            "prompt": [PROMPT_TOKEN_ID] * input_tokens,
            "max_tokens": output_tokens,
            "min_tokens": output_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
        }
        url = self.base + "/v1/completions"
        sent = time.monotonic()
        try:
            async with self.session.post(url, json=body, timeout=self.timeout) as response:
                if response.status != 200:
                    raise ServerError(_http_problem(url, response.status, await response.text()))
                kind = response.headers.get("Content-Type", "")
                if "text/event-stream" not in kind:
                    raise ServerError(
                        f"{url} answered stream=true with a non-streaming {kind or 'untyped'} body; "
                        "the profiler needs server-sent events to time tokens"
                    )
                times, usage = await _read_events(response, sent)
        except aiohttp.ClientConnectorError as exc:
            raise ServerError(f"cannot reach {self.base}: {exc.strerror or exc} (is the server running?)") from None
        except TimeoutError:
            raise ServerError(
                f"{url}: request ({input_tokens} in, {output_tokens} out) not finished within {self.timeout_s:g} s "
                "(raise --timeout?)"
            ) from None
        except aiohttp.ClientError as exc:
            raise ServerError(f"{url}: connection failed mid-request: {exc!r}") from None
        if not times:
            raise ServerError(f"{url}: the stream ended without any token")
        tokens = usage if usage is not None else len(times)
        if tokens != output_tokens:
            raise ServerError(
                f"{url}: asked for {output_tokens} output tokens, got {tokens}; the server must honour "
                "ignore_eos/min_tokens for a profile to be measured"
            )
        return StreamTiming(sent_at=sent, chunk_times=times, tokens=tokens)


async def _read_events(response: aiohttp.ClientResponse, sent: float) -> tuple[list[float], int | None]:
    """Arrival times of content-bearing SSE events and the reported completion tokens, if any."""
    times: list[float] = []
    usage: int | None = None
    buffer = b""
    async for raw in response.content:
        buffer += raw
        if not buffer.endswith(b"\n"):
            continue
        lines, buffer = buffer.split(b"\n"), b""
        now = time.monotonic() - sent
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return times, usage
            try:
                event = json.loads(payload)
            except json.JSONDecodeError:
                raise ServerError(f"{response.url}: malformed event {payload[:120]!r}") from None
            if isinstance(event, dict) and "error" in event:
                raise ServerError(f"{response.url}: error in stream: {event['error']}")
            if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                usage = event["usage"].get("completion_tokens", usage)
            if _has_content(event):
                times.append(now)
    return times, usage


def _has_content(event: object) -> bool:
    if not isinstance(event, dict):
        return False
    for choice in event.get("choices") or []:
        text = choice.get("text")
        if text is None:
            text = (choice.get("delta") or {}).get("content")
        if text:
            return True
    return False


def _http_problem(url: str, status: int, body: str) -> str:
    message = body[:300]
    with contextlib.suppress(ValueError, KeyError, TypeError):
        message = json.loads(body)["error"]["message"]
    hint = {404: " (wrong --model or not an OpenAI-compatible URL?)", 400: " (prompt too long for the server?)"}
    return f"{url} answered HTTP {status}: {message}{hint.get(status, '')}"


_CACHE_INFO = re.compile(r"^vllm:cache_config_info\{([^}]*)\}", re.MULTILINE)
_TOTAL_BLOCKS = re.compile(r"^dynamo_component_kvstats_total_blocks(?:\{[^}]*\})?\s+([0-9.eE+]+)", re.MULTILINE)


def kv_tokens_from_metrics(text: str) -> int | None:
    """KV cache capacity in tokens from vLLM's ``cache_config_info`` (blocks x block size) or Dynamo's
    ``kvstats_total_blocks`` (16-token blocks); None when neither is exported."""
    match = _CACHE_INFO.search(text)
    if match:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        try:
            return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
        except (KeyError, ValueError):
            pass
    match = _TOTAL_BLOCKS.search(text)
    if match:
        value = float(match.group(1))
        if math.isfinite(value) and value > 0:
            return int(value) * 16
    return None
