"""The engine's shared state: settings, per-request arrays, per-pool counters and one replica.

These are plain data; the behaviour lives in the stages (``router``, ``prefill``, ``decode``,
``admission``) and in the ``Pool`` that scales the replicas.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fleet_planner.knobs import EngineKnobs

from .prefix_cache import PrefixCache

if TYPE_CHECKING:
    from .pool import Pool

# Replica states
STARTING, READY, DRAINING, RETIRED = range(4)

# Event kinds
EV_READY, EV_ITER_END, EV_DECODE, EV_KV_ARRIVE, EV_START, EV_CALL = range(6)


@dataclass(frozen=True)
class EngineConfig:
    """A pool's engine beyond its profile: the knobs it starts with (the agent may change them at
    run time, ``Pool.set_knobs``) and the facts of the hardware and the engine build."""

    knobs: EngineKnobs = field(default_factory=EngineKnobs)
    kv_bytes_per_token: int = 131072  # KV cache size of one token (Llama-3.1-8B, fp16: 128 KiB)
    kv_transfer_gbps: float = 50.0  # prefill -> decode KV transfer bandwidth
    prefix_cache: bool = True  # prefill/agg replicas reuse cached KV prefixes (needs trace hash_ids)
    prefix_cache_blocks: int | None = None  # LRU capacity in 512-token blocks; None: max KV tokens / 512


class Requests:
    """Per-request state as parallel columns; grows for closed loops.

    Columns written or read about once a request are typed arrays (``array.array``: 8 bytes a
    float instead of a pointer and a boxed float, 31% less peak memory on a 1.2M-request replay);
    the token counts, read several times a request by the router, prefill and decode, stay lists,
    whose ints are not boxed anew on every read (as arrays they cost 5% of the engine's speed)."""

    __slots__ = ("arrival", "deployment", "endpoint", "hashes", "input", "output", "rejected", "t_finish", "t_first")

    def __init__(self) -> None:
        self.arrival = array("d")
        self.input: list[int] = []  # read several times a request: a list's ints are not boxed anew
        self.output: list[int] = []
        self.endpoint = array("i")
        self.deployment = array("i")
        self.t_first = array("d")
        self.t_finish = array("d")
        self.rejected = array("b")
        self.hashes: list[list[int] | None] | None = None  # prefix-block ids per request, if any

    def load(
        self, arrival: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray, endpoint: np.ndarray
    ) -> None:
        """Replace the state with a whole workload's requests (none routed, started or finished)."""
        n = len(arrival)
        self.arrival = _column("d", arrival)
        self.endpoint = _column("i", endpoint)
        self.input = _shared_ints(np.asarray(input_tokens))
        self.output = _shared_ints(np.asarray(output_tokens))
        self.deployment = array("i", [-1]) * n
        self.t_first = array("d", [math.nan]) * n
        self.t_finish = array("d", [math.nan]) * n
        self.rejected = array("b", [0]) * n

    def add(self, arrival: float, input_tokens: int, output_tokens: int, endpoint: int) -> int:
        self.arrival.append(arrival)
        self.input.append(input_tokens)
        self.output.append(output_tokens)
        self.endpoint.append(endpoint)
        self.deployment.append(-1)
        self.t_first.append(math.nan)
        self.t_finish.append(math.nan)
        self.rejected.append(0)
        if self.hashes is not None:
            self.hashes.append(None)
        return len(self.arrival) - 1

    def __len__(self) -> int:
        return len(self.arrival)


def _shared_ints(values: np.ndarray) -> list[int]:
    """``values.tolist()`` with one int object per distinct value. Token counts take a few
    thousand distinct values, and an int above 256 is a 32-byte object of its own: a day of
    ``diurnal-two-tenant`` (6 million requests) held 235 MB of them. Indexed through a table of
    every value up to the largest when that is no longer than the column, else ``np.unique``."""
    if values.size and values.min() >= 0 and values.max() < values.size:
        distinct, index = np.arange(values.max() + 1), values
    else:
        distinct, index = np.unique(values, return_inverse=True)
    return np.array(distinct.tolist(), dtype=object)[index].tolist()


def _column(typecode: str, values: np.ndarray) -> array:
    column = array(typecode)
    column.frombytes(np.ascontiguousarray(values, dtype=np.dtype(typecode)).tobytes())
    return column


class PoolStats:
    """Per-interval accumulators a pool fills while running; read and reset at each collection."""

    __slots__ = (
        "admitted",
        "input_tokens",
        "iteration_s",
        "iterations",
        "itl_ms",
        "output_tokens",
        "prefill_input_tokens",
        "prefix_hit_tokens",
        "tokens",
        "ttft_ms",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.admitted = 0
        self.input_tokens: list[int] = []
        self.output_tokens: list[int] = []
        self.ttft_ms: list[float] = []
        self.itl_ms: list[float] = []
        self.iterations = 0
        self.iteration_s = 0.0
        self.tokens = 0.0
        self.prefix_hit_tokens = 0  # prompt tokens served from the prefix cache
        self.prefill_input_tokens = 0  # prompt tokens of requests whose prefill started


class Replica:
    """One engine instance. Prefill replicas run token-budget iterations; decode replicas run a
    continuous batch; aggregated replicas mix prefill chunks into decode iterations."""

    __slots__ = (
        "batch",
        "busy",
        "context_sum",
        "counter",
        "created_at",
        "due",
        "epoch",
        "finish_heap",
        "iter_dt",
        "kv_reserved",
        "load",
        "plan",
        "pool",
        "prefill_queue",
        "prefix_cache",
        "queued_prefill_tokens",
        "rate",
        "ready_at",
        "start_pending",
        "state",
        "t_last",
        "wait_queue",
    )

    def __init__(self, pool: Pool, now: float):
        self.pool = pool
        self.state = STARTING
        self.created_at = now
        self.ready_at = now + pool.startup_s
        self.load = 0  # outstanding tokens assigned here (router's least-load key)
        # Prefill (prefill.py): prompts being computed, the current iteration's plan.
        self.prefill_queue: deque[list[int]] = deque()  # [request, tokens_done]
        self.queued_prefill_tokens = 0
        self.busy = False  # an iteration is running
        self.start_pending = False  # an iteration start is scheduled at the next step boundary
        self.plan: list[tuple[list[int], int]] = []  # (prefill_queue item, tokens this iteration)
        self.iter_dt = 0.0
        # Decode (decode.py): the cumulative counter and the heap of finish thresholds.
        self.counter = 0.0
        self.rate = 0.0
        self.t_last = now
        self.finish_heap: list[tuple[float, int]] = []
        self.batch = 0
        self.context_sum = 0.0
        self.epoch = 0  # bumped to cancel an armed decode event
        self.due = 0.0  # counter value the armed decode event is for
        # Admission (admission.py): KV reserved by running + queued requests, and who waits for it.
        self.kv_reserved = 0
        self.wait_queue: deque[int] = deque()
        # Cached prefix blocks (prefill-capable replicas with the cache enabled only).
        self.prefix_cache = PrefixCache(pool.prefix_blocks) if pool.prefix_blocks else None

    def idle(self) -> bool:
        return not self.busy and self.batch == 0 and not self.prefill_queue and not self.wait_queue
