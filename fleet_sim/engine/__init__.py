"""The discrete-event core of the fleet simulator: replicas, pools and the event loop.

Where each concern lives:

- ``simulator``: the event loop (timed events merged with the sorted arrivals) and GPU inventory.
- ``pool``: one role of one deployment; scales its replicas to a target; queue timeouts.
- ``router``: which ready replica a request goes to (least load, or KV-aware with prefix hashes).
- ``prefill``: chunked token-budget prefill iterations and the KV hand-off to decode.
- ``decode``: the continuous batch as one cumulative counter (the reason the simulator is fast).
- ``admission``: a request runs on a decode or agg replica only when its KV fits.
- ``prefix_cache``: the per-replica LRU of prompt blocks.
- ``state``: the plain data they share (settings, request arrays, interval counters, a replica).

Speed comes from the decode model: a replica's continuous batch is one cumulative counter advancing
at ``1/iteration time``, so a heap of finish thresholds replaces per-iteration events: the loop
only wakes on arrivals, prefill iterations, KV transfers, decode completions, replica starts and
planner ticks. All times are seconds; engine profiles speak milliseconds and are converted at the
call site.
"""

from .pool import Pool
from .prefix_cache import PREFIX_BLOCK_TOKENS, PrefixCache
from .simulator import Simulator
from .state import (
    DRAINING,
    EV_CALL,
    READY,
    RETIRED,
    STARTING,
    EngineConfig,
    PoolStats,
    Replica,
    Requests,
)

__all__ = [
    "DRAINING",
    "EV_CALL",
    "PREFIX_BLOCK_TOKENS",
    "READY",
    "RETIRED",
    "STARTING",
    "EngineConfig",
    "Pool",
    "PoolStats",
    "PrefixCache",
    "Replica",
    "Requests",
    "Simulator",
]
