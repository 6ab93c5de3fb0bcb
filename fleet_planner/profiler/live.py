"""``profile live``: measure an engine profile against a running OpenAI-compatible server.

Two sweeps, each point a few real streamed requests:

- **prefill**: one request at a time (``max_tokens`` 1) per input length; TTFT is the fastest of
  ``repeats`` requests, since a busy host or network only ever adds delay to the engine's own
  prefill time. This is the profile's single-request TTFT curve.
- **decode**: ``concurrency`` requests of ``isl`` input and ``osl`` output tokens sent together.
  ITL is timed over the *steady window* only — after the last of them got its first token and
  before the first of them finished — so every gap measured is a decode iteration with exactly
  ``concurrency`` sequences and no prompt being prefilled beside them. The point's context is
  ``isl + osl/2`` (the profile's convention).

Points that do not fit the server (input + output above its context limit, or a batch whose KV
would not fit the cache) are left out. The prefill points are measured in rounds (one request per
input length per round) and recorded together; each decode point is appended to
``<out>/measurements.jsonl`` as soon as it is measured. Rerunning the same command skips the
points already there, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet_planner.profiler.client import OpenAIClient, ServerError, StreamTiming
from fleet_planner.profiler.layout import DecodePoint, PrefillPoint

MIN_STEADY_GAPS = 8  # per request; fewer and the window says more about jitter than about decode
WARMUP_REQUESTS = 5
# A prompt this short has a TTFT of a few milliseconds, of which the HTTP stack on both sides and
# the host's scheduling are a tenth or more; it is timed this many times as often (the fastest is
# kept, so more samples find the floor), for a few milliseconds each.
SHORT_PROMPT_TOKENS = 1024
SHORT_PROMPT_SAMPLES = 4
PLAN_FILE = "sweep.json"
MEASUREMENTS_FILE = "measurements.jsonl"

FULL_PREFILL_ISL = (128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 65536, 131072)
QUICK_PREFILL_ISL = (256, 1024, 4096, 8192)
FULL_DECODE_ISL = (256, 1024, 2048, 4096, 8192, 16384)
QUICK_DECODE_ISL = (1024, 4096)
FULL_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_CONCURRENCY = (1, 4, 16)


class SweepPlan(BaseModel):
    """Everything that determines the measured points; stored so a resumed run measures the same sweep."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    model: str
    max_context: int = Field(gt=1)
    kv_tokens: int = Field(gt=0)
    prefill_isl: list[int]
    repeats: int = Field(ge=1)
    decode_isl: list[int]
    osl: int = Field(ge=MIN_STEADY_GAPS + 2)
    concurrency: list[int]

    def prefill_points(self) -> list[int]:
        return [isl for isl in self.prefill_isl if isl + 1 <= self.max_context]

    def decode_points(self) -> list[tuple[int, int]]:
        return [
            (isl, n)
            for isl in self.decode_isl
            if isl + self.osl <= self.max_context
            for n in self.concurrency
            if n * (isl + self.osl) <= self.kv_tokens
        ]

    def point_keys(self) -> list[str]:
        return [f"prefill:{i}" for i in self.prefill_points()] + [f"decode:{i}:{n}" for i, n in self.decode_points()]


class Measurement(BaseModel):
    """One line of ``measurements.jsonl``: a measured point, or one the server could not give."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    kind: Literal["prefill", "decode"]
    prefill: PrefillPoint | None = None
    decode: DecodePoint | None = None
    skipped: str | None = None  # why no value (e.g. the steady window was too short)


class SweepState:
    """The measurements folder: plan, finished points, append-only log."""

    def __init__(self, folder: Path, plan: SweepPlan, *, restart: bool):
        self.folder = folder
        self.plan = plan
        folder.mkdir(parents=True, exist_ok=True)
        plan_file = folder / PLAN_FILE
        self.log = folder / MEASUREMENTS_FILE
        if restart:
            self.log.unlink(missing_ok=True)
        elif plan_file.exists() and self.log.exists():
            try:
                old = SweepPlan.model_validate_json(plan_file.read_text())
            except ValidationError:
                raise ServerError(f"{plan_file} is not a sweep plan; remove it or pass --restart") from None
            if old != plan:
                changed = sorted(k for k in SweepPlan.model_fields if getattr(old, k) != getattr(plan, k))
                raise ServerError(
                    f"{folder} holds a different sweep (differs in {', '.join(changed)}); "
                    "use another --out or pass --restart to discard it"
                )
        plan_file.write_text(plan.model_dump_json(indent=1))
        self.done: dict[str, Measurement] = {}
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                try:
                    item = Measurement.model_validate_json(line)
                except ValidationError:
                    continue  # a line cut short by an interruption: that point is measured again
                self.done[item.key] = item
            # rewritten without the broken lines, so new points are appended to whole lines
            self.log.write_text("".join(m.model_dump_json() + "\n" for m in self.done.values()))

    def record(self, item: Measurement) -> None:
        with self.log.open("a") as handle:
            handle.write(item.model_dump_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.done[item.key] = item

    def points(self) -> tuple[list[PrefillPoint], list[DecodePoint], list[str]]:
        prefill = [m.prefill for m in self.done.values() if m.prefill is not None]
        decode = [m.decode for m in self.done.values() if m.decode is not None]
        skipped = [f"{m.key}: {m.skipped}" for m in self.done.values() if m.skipped]
        return prefill, decode, skipped


async def run_sweep(client: OpenAIClient, state: SweepState, progress: Callable[[int], None] | None = None) -> None:
    """Measure every point of the plan not measured yet: the prefill points together, then the
    decode points one by one."""
    todo = [key for key in state.plan.point_keys() if key not in state.done]
    for _ in range(WARMUP_REQUESTS if todo else 0):
        await client.stream(128, 4)  # connection set-up and first-request costs stay out of the points
    prefill = [key for key in todo if key.startswith("prefill:")]
    if prefill:
        for item in await measure_prefill(client, prefill, state.plan.repeats):
            state.record(item)
            if progress is not None:
                progress(1)
    for key in todo:
        if key.startswith("decode:"):
            _, isl, concurrency = key.split(":")
            state.record(await measure_decode(client, int(isl), state.plan.osl, int(concurrency), key))
            if progress is not None:
                progress(1)


async def measure_prefill(client: OpenAIClient, keys: list[str], repeats: int) -> list[Measurement]:
    """TTFT per input length, in rounds of one request per length: a burst of load on the host
    then touches one sample of many points rather than every sample of one. Short prompts get
    ``SHORT_PROMPT_SAMPLES`` times the rounds."""
    lengths = [int(key.split(":")[1]) for key in keys]
    samples: list[list[float]] = [[] for _ in keys]
    for round_ in range(repeats * SHORT_PROMPT_SAMPLES):
        for i, isl in enumerate(lengths):
            if round_ < repeats or isl <= SHORT_PROMPT_TOKENS:
                samples[i].append((await client.stream(isl, 1)).ttft_s * 1000.0)
    return [
        Measurement(key=key, kind="prefill", prefill=PrefillPoint(isl=isl, ttft_ms=min(ttfts)))
        for key, isl, ttfts in zip(keys, lengths, samples, strict=True)
    ]


async def measure_decode(client: OpenAIClient, isl: int, osl: int, concurrency: int, key: str) -> Measurement:
    timings = await asyncio.gather(*(client.stream(isl, osl) for _ in range(concurrency)))
    itl_ms, gaps = steady_itl_ms(timings)
    if gaps < MIN_STEADY_GAPS:
        return Measurement(
            key=key,
            kind="decode",
            skipped=f"steady window of only {gaps} token gaps (prefill of the batch took most of the "
            f"{osl} output tokens); raise --osl",
        )
    point = DecodePoint(context=isl + osl / 2, batch=concurrency, itl_ms=itl_ms)
    return Measurement(key=key, kind="decode", decode=point)


def steady_itl_ms(timings: list[StreamTiming]) -> tuple[float, int]:
    """Mean time per output token inside the window where all requests decode together, and the
    fewest token gaps any request had in it (its reliability)."""
    start = max(t.sent_at + t.chunk_times[0] for t in timings)
    end = min(t.sent_at + t.chunk_times[-1] for t in timings)
    per_request = []
    fewest = None
    for t in timings:
        inside = [t.sent_at + c for c in t.chunk_times if start - 1e-9 <= t.sent_at + c <= end + 1e-9]
        gaps = len(inside) - 1
        fewest = gaps if fewest is None else min(fewest, gaps)
        if gaps >= 1:
            per_request.append((inside[-1] - inside[0]) / (gaps * t.tokens_per_chunk))
    if not per_request or fewest is None:
        return float("nan"), 0
    return statistics.fmean(per_request) * 1000.0, fewest


async def open_client(url: str, model: str, timeout_s: float) -> tuple[OpenAIClient, aiohttp.ClientSession]:
    """A client with a connection pool large enough for the biggest batch."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False)
    return OpenAIClient(url, model, session, timeout_s=timeout_s), session


def describe(state: SweepState) -> str:
    prefill, decode, skipped = state.points()
    text = f"{len(prefill)} prefill and {len(decode)} decode points"
    if skipped:
        text += f"; {len(skipped)} skipped ({skipped[0]}{', ...' if len(skipped) > 1 else ''})"
    return text


def parse_int_list(value: str, name: str) -> list[int]:
    """``1,2,4`` -> [1, 2, 4] with a clear error."""
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {value!r}") from None
    if not numbers or any(n < 1 for n in numbers):
        raise ValueError(f"{name}: expected positive integers, got {value!r}")
    return sorted(set(numbers))
