"""A real-time engine whose timing follows a profile: the simulator's engine model, run on a clock.

One asyncio task runs iterations back to back, exactly as ``docs/simulator.md`` describes the
simulated engine, so live runs and simulations of the same traffic can be compared:

- *Admission* reserves ``input + output`` KV tokens; a request waits while the KV cache
  (``max_kv_tokens`` of the profile) or the batch cap (``max_num_seqs``) is full.
- *An iteration* takes queued prompts in order up to the token budget (``max_batch_tokens`` minus
  the running sequences; long prompts are chunked) and, in the same step, one decode token for every
  running sequence. It lasts ``ITL(batch, mean context) + sum of chunk costs`` (the profile's
  per-chunk cost ``V(b) - V(a)``), or the prefill overhead plus the chunk costs when nothing decodes.
  A sequence's context is ``input + output/2``, as in the profile's decode sweep.
- *Roles*: ``agg`` does both; ``prefill`` returns the first token only; ``decode`` skips the prompt
  (its KV arrived from a prefill worker) and emits the first token when admitted.

Iterations are laid end to end on an absolute timeline (an iteration starts when the previous one
ended, or when work arrives at an idle engine), so a late wake-up of the event loop delays token
delivery but never stretches the engine's schedule. The timing is accurate while the host keeps up;
``lag_s`` records how late iterations were delivered.

*Time compression* (``speed`` N > 1, ``fleet-planner emulate --speed N``): every iteration lasts
1/N of the profile's time, so the engine serves N times the traffic in the same wall time with the
same batching decisions, and every latency a client measures is 1/N of the profile's. Host delays
(event loop, HTTP, the timer precision ``SPIN_S``) are not compressed, so they weigh N times more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel

EngineRole = Literal["agg", "prefill", "decode"]
SPIN_S = 0.002  # the last stretch of each iteration is waited for actively (timer precision)


class RequestRejected(ValueError):
    """The request can never run on this engine (longer than the KV cache)."""


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. ``on_token`` is called once per emitted token with whether
    that was the last one; it must not block."""

    input_tokens: int
    output_tokens: int
    on_token: Callable[[bool], None]
    arrival: float
    id: int = field(default_factory=itertools.count().__next__)
    prefilled: int = 0
    emitted: int = 0
    t_first: float | None = None  # scheduled time of the first token
    cancelled: bool = False

    @property
    def kv_need(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def context(self) -> float:
        return self.input_tokens + 0.5 * self.output_tokens


@dataclass
class IterationRecord:
    """What one iteration did, for metrics."""

    seconds: float
    tokens: int  # prompt tokens prefilled + decode tokens emitted
    decode_batch: int


class Engine:
    """Continuous batching with chunked prefill on a real clock; see the module docstring."""

    def __init__(
        self,
        model: PerfModel,
        knobs: EngineKnobs = EngineKnobs(),
        *,
        role: EngineRole = "agg",
        clock: Callable[[], float] = time.monotonic,
        on_iteration: Callable[[IterationRecord], None] | None = None,
        speed: float = 1.0,
    ):
        """``speed`` > 1 compresses time: every iteration lasts the profile's time / ``speed``."""
        if not speed > 0:
            raise ValueError(f"speed must be > 0 (got {speed})")
        self.model = model
        self.knobs = knobs
        self.role = role
        self.speed = speed
        self.max_kv = int(model.max_kv_tokens)
        self.clock = clock
        self.on_iteration = on_iteration
        self.waiting: deque[Sequence] = deque()  # not admitted: KV or batch slots full
        self.prefilling: deque[Sequence] = deque()  # admitted, prompt not (fully) computed
        self.running: list[Sequence] = []  # decoding
        self.kv_reserved = 0
        self.lag_s = 0.0  # largest delay between an iteration's scheduled and actual end
        self.iterations = 0
        self._t_end = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- public -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="emulated-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, sequence: Sequence) -> None:
        """Queue a request; it is admitted as soon as KV capacity and a batch slot allow."""
        if sequence.input_tokens < 1 or sequence.output_tokens < 1:
            raise RequestRejected("a request needs at least one input and one output token")
        if sequence.kv_need > self.max_kv:
            raise RequestRejected(
                f"needs {sequence.kv_need} KV tokens (input + output) but the engine holds {self.max_kv}"
            )
        if not self.prefilling and not self.running:
            self._t_end = max(self._t_end, self.clock())  # an idle engine starts when work arrives
        self.waiting.append(sequence)
        self._admit()
        self._wake.set()

    def cancel(self, sequence: Sequence) -> None:
        """The client went away: the request leaves at the next iteration boundary."""
        sequence.cancelled = True
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)

    # ---- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._drop_cancelled()
            self._admit()
            if not self.prefilling and not self.running:
                self._wake.clear()
                await self._wake.wait()
                continue
            plan, seconds = self._plan()
            end = self._t_end + seconds
            await self._sleep_until(end)
            self.lag_s = max(self.lag_s, self.clock() - end)
            self._t_end = end
            self._finish_iteration(plan, seconds)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep, then yield in a tight loop for the last ``SPIN_S``: the event loop's timers wake
        up to a millisecond late, which is 10% of a short prefill."""
        remaining = deadline - self.clock()
        if remaining > SPIN_S:
            await asyncio.sleep(remaining - SPIN_S)
        while self.clock() < deadline:
            await asyncio.sleep(0)

    def _plan(self) -> tuple[list[tuple[Sequence, int]], float]:
        """Chunks of queued prompts within the token budget, and the iteration's duration (s)."""
        budget = max(1, self.knobs.max_batch_tokens - len(self.running))
        model = self.model
        plan = []
        prefill_ms = 0.0
        for seq in self.prefilling:
            take = min(seq.input_tokens - seq.prefilled, budget)
            prefill_ms += model.prefill_chunk_ms(seq.prefilled, take)
            plan.append((seq, take))
            budget -= take
            if budget <= 0:
                break
        if self.running:
            context = sum(s.context for s in self.running) / len(self.running)
            base_ms = model.itl_ms(len(self.running), context)
        else:
            base_ms = model.prefill_overhead_ms
        return plan, (base_ms + prefill_ms) / 1000.0 / self.speed

    def _finish_iteration(self, plan: list[tuple[Sequence, int]], seconds: float) -> None:
        self._drop_cancelled()
        now = self._t_end  # tokens carry the schedule's time; delivery may be later on a busy host
        self.iterations += 1
        decoded = list(self.running)
        prefilled_tokens = 0
        for seq in decoded:
            self._emit(seq, now)
        self.running = [s for s in decoded if s.emitted < s.output_tokens]
        for seq, take in plan:
            if seq.cancelled:
                continue
            seq.prefilled += take
            prefilled_tokens += take
            if seq.prefilled >= seq.input_tokens:
                self.prefilling.remove(seq)
                self._first_token(seq, now)
        if self.on_iteration is not None:
            self.on_iteration(IterationRecord(seconds, prefilled_tokens + len(decoded), len(decoded)))
        self._admit()

    def _first_token(self, seq: Sequence, now: float) -> None:
        seq.t_first = now
        if self.role == "prefill":
            seq.emitted = seq.output_tokens - 1  # a prefill worker hands over after the first token
        self._emit(seq, now)
        if seq.emitted < seq.output_tokens:
            self.running.append(seq)

    def _emit(self, seq: Sequence, now: float) -> None:
        seq.emitted += 1
        done = seq.emitted >= seq.output_tokens
        if done:
            self.kv_reserved -= seq.kv_need
        seq.on_token(done)

    def _admit(self) -> None:
        """Admit waiting requests in order while KV capacity and batch slots allow."""
        while self.waiting:
            seq = self.waiting[0]
            if seq.cancelled:
                self.waiting.popleft()
                continue
            admitted = len(self.running) + len(self.prefilling)
            if admitted >= self.knobs.max_num_seqs or self.kv_reserved + seq.kv_need > self.max_kv:
                return
            self.waiting.popleft()
            self.kv_reserved += seq.kv_need
            if self.role == "decode":
                self._first_token(seq, max(self._t_end, self.clock()))  # the prompt's KV came from a prefill worker
                self._wake.set()
            else:
                self.prefilling.append(seq)

    def _drop_cancelled(self) -> None:
        """Free the KV of requests whose clients went away."""
        for group in (self.prefilling, self.running):
            for seq in [s for s in group if s.cancelled]:
                group.remove(seq)
                self.kv_reserved -= seq.kv_need
