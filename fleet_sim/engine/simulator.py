"""The event loop: a heap of timed events merged with the sorted arrival list, the GPU inventory,
and the hooks that connect pools to the traffic source."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from heapq import heappush
from typing import TYPE_CHECKING, Any

from .state import EV_DECODE, EV_ITER_END, EV_KV_ARRIVE, EV_READY, EV_START, Requests

if TYPE_CHECKING:
    from .pool import Pool


class Simulator:
    """Event loop, GPU inventory and the hooks that connect pools to the traffic source."""

    def __init__(self, inventory: dict[str, int], end_s: float):
        self.inventory = dict(inventory)
        self.gpus_in_use = dict.fromkeys(inventory, 0)
        self.max_gpus_in_use = dict.fromkeys(inventory, 0)
        self.end_s = end_s
        self.now = 0.0
        self.requests = Requests()
        self.pools: list[Pool] = []
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._next_seq = itertools.count().__next__  # FIFO among events at the same time
        self.on_complete: Callable[[int, float], None] | None = None
        self._next_arrival = 0

    def schedule(self, time: float, kind: int, a: object = None, b: object = None) -> None:
        """Event ``kind`` at ``time`` with its arguments (see ``run`` for what each kind carries)."""
        heappush(self._heap, (time, self._next_seq(), kind, a, b))

    def gpu_delta(self, gpu_type: str, delta: int) -> None:
        used = self.gpus_in_use.get(gpu_type, 0) + delta
        self.gpus_in_use[gpu_type] = used
        if used > self.max_gpus_in_use.get(gpu_type, 0):
            self.max_gpus_in_use[gpu_type] = used

    def start_pending(self, now: float) -> None:
        """Start wanted replicas, the longest-waiting first, while their GPU type has free GPUs.

        Like pending pods before the Kubernetes scheduler (one priority class): the oldest is tried
        first, one that does not fit waits without blocking smaller ones behind it, and the
        inventory is never exceeded. Replicas wanted at the same moment go in pool order."""
        waiting = sorted(
            ((since, index, pool) for index, pool in enumerate(self.pools) for since in pool.pending_since),
            key=lambda entry: entry[:2],
        )
        for _, _, pool in waiting:
            free = self.inventory.get(pool.gpu_type, 0) - self.gpus_in_use.get(pool.gpu_type, 0)
            if free >= pool.gpus_per_replica:
                pool.pending_since.pop(0)
                pool.start_replica(now)

    def completed(self, request: int, now: float) -> None:
        if self.on_complete is not None:
            self.on_complete(request, now)

    def run(self, stop_s: float, arrivals: Sequence[float], on_arrival: Callable[[int, float], None]) -> None:
        """Process events and arrivals up to ``stop_s`` (resumable: call again with a later stop).

        ``arrivals`` is sorted; request ``i`` arrives at ``arrivals[i]`` and is handed to
        ``on_arrival``. Merging this pointer with the heap keeps arrivals out of the heap.
        Events carry a replica (decode wake-up with its epoch, iteration end and start, ready), a
        request and the router it reaches (KV arrival), or a callable (planner tick)."""
        heap = self._heap
        pop = heapq.heappop
        index = self._next_arrival
        count = len(arrivals)
        inf = math.inf
        while True:
            t_arrival = arrivals[index] if index < count else inf
            t_event = heap[0][0] if heap else inf
            if t_arrival <= t_event:
                if t_arrival > stop_s:
                    break
                self.now = t_arrival
                on_arrival(index, t_arrival)
                index += 1
                continue
            if t_event > stop_s:
                break
            now, _, kind, a, b = pop(heap)
            self.now = now
            if kind == EV_DECODE:
                a.pool.decode.on_event(a, b, now)
            elif kind == EV_ITER_END:
                a.pool.prefill.on_iteration_end(a, now)
            elif kind == EV_KV_ARRIVE:
                b.submit(a, now)
            elif kind == EV_START:
                a.pool.prefill.on_start(a, now)
            elif kind == EV_READY:
                a.pool.on_ready(a, now)
            else:
                a(now)
        self._next_arrival = index
        self.now = max(self.now, stop_s) if stop_s < inf else self.now

    def idle(self) -> bool:
        """True when no request is in flight anywhere."""
        return all(not pool.router.queue and all(r.idle() for r in pool.replicas) for pool in self.pools) and not any(
            kind == EV_KV_ARRIVE for _, _, kind, _, _ in self._heap
        )
