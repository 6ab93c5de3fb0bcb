"""Demand curves: the SLA attainment of one pool for every replica count at once.

Every quantity is an array over N = 1 .. max (plus N = inf, whose attainment is the curve's
``ceiling``), so a curve costs a few numpy calls, not a loop over N. Request shapes come from
the load's sample, summarised into groups so the cost does not grow with the sample.

Prefill (disaggregated): TTFT side
    A replica runs iterations of ``overhead + sum of chunk costs`` over its FIFO prompt queue,
    up to ``max_batch_tokens`` tokens each. The router sends each prompt to the replica with the
    least queued work, which behaves like one queue with N servers, so the pool is an M/G/c
    queue: Erlang C for P(wait), an exponential wait tail with the Allen–Cunneen mean
    ``E[S](ca^2 + cs^2) / 2 / (N (1 - rho))`` (``ca^2`` = 1 for Poisson arrivals; burstier
    traffic passes its measured ``Calibration.arrival_scv``, a G/G/c approximation), plus one
    overhead per partly filled iteration. A prompt's work is its variable prefill cost ``c(L)``
    plus its token share of a full iteration's overhead (so the stability limit is that of full
    iterations). Its own part of TTFT is ``overhead * chunks(L) + c(L) + KV transfer(L)``;
    attainment is the mean over the sample of ``P(wait <= TTFT SLA - own part)``.

Decode (disaggregated): ITL side
    Continuous batching. By Little's law the mean batch solves ``B = lambda E[d] itl(B + 1)``
    with ``d = output - 1`` decode iterations and ``itl`` at the residence-weighted mean context
    ``input + output / 2`` (``B + 1``: a request sees itself plus the others). The first crossing
    on a grid up to the batch cap (``max_num_seqs`` or the KV cache, each request reserving
    ``input + output`` tokens) is the operating point; none means overload (attainment 0). A
    request's ITL is taken as normal around ``itl(B + 1)``, its variance from a Poisson batch
    (variance B) and from the batch's mean context (variance of a sequence's context / (B + 1)),
    both through the local slopes of ``itl``. Waits for a free slot (Erlang C, Halfin–Whitt
    over the pool's slots) delay the first token; they count as misses beyond
    ``admission_budget_ms``.

Aggregated: both
    The same decode batch, but iterations also carry prefill chunks: decode slows by
    ``1 / (1 - rho_c)`` with ``rho_c`` the share of time spent on prefill (the ITL p90). For the
    ITL attainment the prompts are explicit: each prompt prefilled while a request decodes adds
    its cost (the share of its chunks the decode overlaps) to that request's decode time, a
    Poisson count of them: those arriving during its decode, and those queued behind its own
    prompt when its first token comes (routed to its replica while it waited and prefilled, less
    those its last prefill iteration takes whole). One long prompt is what makes a short decode
    miss; short answers often follow long prompts, so the queue behind is taken per decode
    length. Prompts queue as above,
    with the decode step as each iteration's fixed time and ``max_batch_tokens - B`` as the
    token budget; the router balances reserved KV tokens rather than prompt queues, so each
    replica is its own M/G/1 queue. Attainment is TTFT attainment times ITL attainment.

Checked against the simulator (fleet_sim, Poisson arrivals, Azure conversation and Mooncake
lengths, Llama-3.1-8B/H200 and 70B/H200 profiles): disaggregated attainment within about 0.01-0.05
and p90s within about 10% near the operating point; aggregated TTFT attainment within about
0.03, on the conservative side for N >= 2. ``Calibration`` corrects what remains.

Prompts longer than the engine's context (or ``max_input_tokens``) are rejected at admission:
they add no load, and the entry pool (prefill or agg) counts them as misses. Every curve is
clamped to [0, 1] and made non-decreasing in N (running max); N = 0 attains 0 under load and 1
without. p90 latencies are None where the pool is overloaded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_planner.knobs import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_NUM_SEQS
from fleet_planner.planning import SLA, PoolRole
from local_agent.sizing.load import Calibration, LoadEstimate
from local_agent.sizing.queueing import (
    erlang_c,
    exp_tail_met,
    first_root,
    group_means,
    groups_at,
    halfin_whitt_wait_probability,
    norm_cdf,
    quantile_bisect,
)

DEFAULT_KV_BYTES_PER_TOKEN = 131072
DEFAULT_KV_TRANSFER_GBPS = 50.0
ADMISSION_SHARE = 0.5  # share of the TTFT SLA a decode-slot wait may use by default
GRID_POINTS = 257  # batch-size grid of the decode fixed point
_CTX_STEPS = np.array([1.0 / 1.1, 1.1])  # context offsets for the ITL-vs-context slope
SAMPLE_GROUPS = 64  # equal-count groups of decode lengths for the ITL attainment
# Quantile edges of the own-TTFT groups: uniform in the body, ever finer toward the tail, where
# the share of requests that miss the TTFT SLA on their own is decided.
SAMPLE_EDGES = np.concatenate(
    (
        np.linspace(0.0, 0.9, 37)[:-1],
        np.linspace(0.9, 0.99, 19)[:-1],
        [0.99, 0.992, 0.994, 0.996, 0.998, 0.999, 0.9995, 0.9998, 1.0],
    )
)
P90_GROUPS = 8  # decode-length groups for the ITL p90 search
# Quantile edges of the own-TTFT groups for the p90 search: coarse in the body, fine in the tail.
P90_EDGES = np.array([0.0, 0.5, 0.7, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0])
P90 = 0.9
STALL_GROUPS = 16  # prompt groups by length for the stalls of an aggregated pool's decodes
# Nodes and weights of E[f(Z)], Z standard normal, for the router's choice in _left_behind.
_ROUTE_Z = np.linspace(-5.0, 5.0, 41)
_ROUTE_WEIGHTS = np.exp(-0.5 * _ROUTE_Z**2) / np.exp(-0.5 * _ROUTE_Z**2).sum()
_ROUTE_SHIFTS = np.concatenate(([0.0], np.geomspace(0.01, 10.0, 40)))  # a request's tokens over a load's spread
_Z90 = 1.2815515655446004  # standard normal 0.9 quantile

KvTransferFn = Callable[[np.ndarray], np.ndarray]
# What a caller reads of a curve, so that nothing else is computed: every column (``full``); the
# attainment alone (``attainment``: the p90 columns None, without their quantile searches, about
# a quarter of a curve's cost); or an entry pool's TTFT side alone (``entry_ttft``: an aggregated
# pool's attainment then counts the first token alone, and its ITL side, over a third of the curve's
# cost, is left out).
CurveDetail = Literal["full", "attainment", "entry_ttft"]


class EngineModel(Protocol):
    """What sizing needs of a performance model (``fleet_planner.perf.PerfModel`` fits)."""

    @property
    def prefill_overhead_ms(self) -> float: ...
    @property
    def max_kv_tokens(self) -> int: ...
    @property
    def max_context(self) -> int | None: ...
    def ttft_ms(self, isl: Any) -> Any: ...
    def itl_ms(self, batch: Any, context: Any) -> Any: ...


class PoolCurve(BaseModel):
    """Expected SLA attainment and latency of one pool at each replica count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: PoolRole
    replicas: list[int]
    attainment: list[float] = Field(description="share of requests meeting this pool's part of the SLA; non-decreasing")
    ttft_p90_ms: list[float | None] = Field(
        description="p90 of this pool's part of TTFT (decode: slot wait); None when overloaded"
    )
    itl_p90_ms: list[float | None] = Field(description="p90 of per-request mean ITL; None if n/a")
    utilisation: list[float] = Field(description="offered load over capacity per replica (> 1: overloaded; inf at N=0)")
    ceiling: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="attainment with unlimited replicas: requests rejected for length or too "
        "long to serve within the SLA on an idle engine miss it however many replicas run",
    )

    @model_validator(mode="after")
    def _aligned(self) -> PoolCurve:
        n = len(self.replicas)
        columns = (self.attainment, self.ttft_p90_ms, self.itl_p90_ms, self.utilisation)
        if any(len(column) != n for column in columns):
            raise ValueError("curve columns must have one entry per replica count")
        return self


def kv_transfer_ms(
    input_tokens: np.ndarray,
    *,
    kv_bytes_per_token: int = DEFAULT_KV_BYTES_PER_TOKEN,
    gbps: float = DEFAULT_KV_TRANSFER_GBPS,
) -> np.ndarray:
    """Prefill-to-decode KV cache transfer time, as the simulator charges it."""
    return np.asarray(input_tokens, dtype=np.float64) * kv_bytes_per_token * 8.0 / (gbps * 1e6)


@dataclass(frozen=True)
class _LengthGroups:
    """Decoding requests grouped by decode length (their ITL spread depends only on it)."""

    iterations: np.ndarray  # mean decode iterations of each group
    weights: np.ndarray  # share of decoding requests in each group
    inputs: np.ndarray  # mean prompt tokens of each group (short answers often follow long prompts)


@dataclass(frozen=True)
class _DecodeShape:
    """Request-shape statistics of the decode batch, weighted by time spent in it."""

    mean_iterations: float  # decode iterations (output - 1) per request, over all requests
    context: float  # residence-weighted mean of input + output / 2
    context_variance: float  # residence-weighted variance of one sequence's context
    kv_per_seq: float  # residence-weighted mean of input + output (reserved KV tokens)
    kv_per_seq_square: float  # residence-weighted mean of its square (the spread of a replica's reserved KV)
    decoding_share: float  # share of requests with at least one decode iteration
    fine: _LengthGroups  # for attainment
    coarse: _LengthGroups  # for the p90 search


def _decode_shape(load: LoadEstimate) -> _DecodeShape:
    """The sample's decode summary. It depends on the sample alone, which an agent sizes at
    several rates per tick (and the same lengths for several ticks): cached by content."""
    return _decode_shape_of(load.input_tokens.tobytes(), load.output_tokens.tobytes())


@functools.lru_cache(maxsize=32)
def _decode_shape_of(input_bytes: bytes, output_bytes: bytes) -> _DecodeShape:
    """:func:`_decode_shape` of the float64 arrays with these bytes (arrays read-only: cached)."""
    inputs, outputs = np.frombuffer(input_bytes), np.frombuffer(output_bytes)
    d = np.maximum(outputs - 1.0, 0.0)
    total = d.sum()
    w = d / total if total > 0 else np.full(d.size, 1.0 / d.size)
    order = np.argsort(d, kind="stable")
    order = order[d[order] > 0]
    decoding, decoding_inputs = d[order], inputs[order]
    context = inputs + 0.5 * outputs
    mean_context = float(np.dot(w, context))

    def grouped(count: int) -> _LengthGroups:
        iterations, weights = group_means(decoding, count)
        prompts, _ = group_means(decoding_inputs, count, keep_order=True)  # in decoding's groups
        for column in (iterations, weights, prompts):
            column.setflags(write=False)
        return _LengthGroups(iterations, weights, prompts)

    return _DecodeShape(
        mean_iterations=float(d.mean()),
        context=mean_context,
        context_variance=float(np.dot(w, (context - mean_context) ** 2)),
        kv_per_seq=float(np.dot(w, inputs + outputs)),
        kv_per_seq_square=float(np.dot(w, np.square(inputs + outputs))),
        decoding_share=decoding.size / d.size,
        fine=grouped(SAMPLE_GROUPS),
        coarse=grouped(P90_GROUPS),
    )


def _slots(model: EngineModel, shape: _DecodeShape, max_num_seqs: int) -> float:
    """Concurrent sequences one replica admits (a sequence larger than the cache runs alone)."""
    return max(1.0, min(float(max_num_seqs), model.max_kv_tokens / shape.kv_per_seq))


@dataclass(frozen=True)
class _DecodePoint:
    """Operating point of the decode batch for each replica count."""

    batch: np.ndarray  # mean running sequences (inf when overloaded)
    itl: np.ndarray  # decode iteration a request sees, itl(B + 1), before prefill stretch
    variance: np.ndarray  # of the iteration time a request sees, from batch and context noise
    stable: np.ndarray
    itl_at_cap: float
    utilisation: np.ndarray


def _decode_point(
    model: EngineModel,
    shape: _DecodeShape,
    rate_per_replica: np.ndarray,
    slots: float,
    itl_factor: float,
    stretch: np.ndarray,
    arrival_scv: float = 1.0,
) -> _DecodePoint:
    """Solve ``B = lambda E[d] stretch itl(B + 1)`` on a batch grid, for every N at once.

    Iteration-time noise: the batch has variance ``B ca^2`` (Poisson arrivals: B; burstier
    arrivals: proportionally more) and its mean context averages B + 1 sequences' contexts; both
    are scaled by the local slopes of ``itl``.
    """
    grid = np.linspace(0.0, slots, GRID_POINTS)
    itl = np.asarray(model.itl_ms(np.minimum(grid + 1.0, slots), shape.context)) * itl_factor
    demand = rate_per_replica * shape.mean_iterations / 1000.0  # sequences per ms of decoding
    finite = np.isfinite(stretch)
    stretched = demand * np.where(finite, stretch, 0.0)
    gap = grid[None, :] - stretched[:, None] * itl[None, :]
    root, j, found = first_root(grid, gap)
    stable = found & finite
    batch = np.where(stable, root, 0.0)
    slope = (itl[j] - itl[j - 1]) / (grid[j] - grid[j - 1])
    at_root = np.interp(batch, grid, itl)
    seen = np.minimum(batch + 1.0, slots)
    wider = np.asarray(model.itl_ms(np.concatenate((seen, seen)), np.repeat(shape.context * _CTX_STEPS, seen.size)))
    context_slope = (
        (wider[seen.size :] - wider[: seen.size]) * itl_factor / (shape.context * (_CTX_STEPS[1] - _CTX_STEPS[0]))
    )
    variance = slope**2 * batch * arrival_scv + context_slope**2 * shape.context_variance / (batch + 1.0)
    capacity = slots / itl[-1]  # sequences per ms of decode time at the cap
    return _DecodePoint(
        batch=np.where(stable, root, np.inf),
        itl=at_root,
        variance=variance,
        stable=stable,
        itl_at_cap=float(itl[-1]),
        utilisation=demand / capacity,
    )


def _itl_attainment(
    sla_itl: float, shape: _DecodeShape, mean: np.ndarray, variance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Share of requests whose mean ITL meets the SLA, and the ITL p90, per replica count, with
    every request's ITL ~ Normal(mean, variance) (a disaggregated decode pool: no prefill beside
    it). Requests with no decode iteration have no ITL and always meet it."""
    if shape.decoding_share == 0:
        return np.ones_like(mean), np.full_like(mean, np.nan)
    met = norm_cdf((sla_itl - mean) / np.sqrt(variance + 1e-12)) * shape.fine.weights.sum()
    return 1.0 - shape.decoding_share + shape.decoding_share * met, mean + _Z90 * np.sqrt(variance)


def _itl_p90(
    shape: _DecodeShape,
    mean: np.ndarray,
    batch_variance: np.ndarray,
    interference: np.ndarray,
    chunking: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The ITL p90 of an aggregated pool per replica count: per decode-length group ITL ~
    Normal(mean, batch_variance + interference / d x chunking(d)) (``chunking``: see
    :func:`_chunk_spread`), the prefill beside the decode as a spread around its mean stretch.
    (The attainment counts the stalls one by one: :func:`_stalled_itl_met`.) NaN without decodes."""
    if shape.decoding_share == 0:
        return np.full_like(mean, np.nan)
    if not np.any(interference > 0):  # one normal for every request: closed form
        return mean + _Z90 * np.sqrt(batch_variance)
    lengths = shape.coarse
    per_group = chunking(lengths.iterations) / lengths.iterations
    sd = np.sqrt(batch_variance[:, None] + 1e-12 + interference[:, None] * per_group[None, :])

    def cdf(t: np.ndarray) -> np.ndarray:
        return norm_cdf((t - mean)[:, None] / sd) @ lengths.weights

    return quantile_bisect(cdf, mean, mean + 1.5 * sd.max(axis=1), P90)


@dataclass(frozen=True)
class _Stalls:
    """Prompts prefilled on an aggregated replica while a request decodes, a Poisson count per
    request: ``per_iteration`` arriving during each of its decode iterations, plus
    ``left_behind`` queued behind its own prompt when its first token comes (prefilled in its
    first iterations). Each stalls the decode by its prefill cost, in the share of its chunks the
    decode overlaps; prompts are summarised in groups by length (cost and chunks grow with it)."""

    per_iteration: np.ndarray  # (N,)
    left_behind: np.ndarray  # (N, decode-length groups)
    cost: np.ndarray  # (prompt groups,) variable prefill cost, ms
    chunks: np.ndarray  # (prompt groups,)
    weights: np.ndarray  # (prompt groups,)


def _stall_prompts(sorted_inputs: np.ndarray, costs: np.ndarray, budget: int) -> tuple[np.ndarray, ...]:
    """Prompt cost and chunk count in ``STALL_GROUPS`` equal-count groups by length, and weights
    (``costs``: the variable prefill cost of each of ``sorted_inputs``)."""
    cost, weights = group_means(costs, STALL_GROUPS, keep_order=True)
    chunks, _ = group_means(np.maximum(np.ceil(sorted_inputs / max(1, budget)), 1.0), STALL_GROUPS, keep_order=True)
    return cost, chunks, weights


def _left_behind(
    servers: np.ndarray,
    rate_per_ms: np.ndarray,
    batch: np.ndarray,
    shape: _DecodeShape,
    ttft_ms: np.ndarray,
) -> np.ndarray:
    """Prompts routed to a request's replica while its own prompt waits and prefills, per replica
    count and decode-length group: the pool's arrivals over the group's TTFT, times the chance
    that the router (least reserved KV tokens) picks that replica although it holds the
    request's tokens more than it did. Replica loads are taken as independent normals (a
    Poisson batch of sequences), so with ``s`` the request's tokens over a load's spread the
    chance is ``E[(1 - Phi(Z + s))^(N - 1)]``: 1 for one replica, 1/N for a negligible request,
    next to nothing when the other replicas are idle."""
    finite = np.isfinite(servers)
    n = np.where(finite, servers, 1.0)
    spread = np.sqrt(np.maximum(np.where(np.isfinite(batch), batch, 0.0), 0.0) * shape.kv_per_seq_square)
    reserved = shape.fine.inputs + shape.fine.iterations + 1.0
    shift = reserved[None, :] / np.maximum(spread, 1e-9)[:, None]
    # The chance is smooth in the shift: read it from a table on a grid of shifts (the hot path).
    on_grid = _route_table(int(n.max()))[n.astype(np.int64) - 1]  # (N, shifts)
    position = np.interp(np.minimum(shift, _ROUTE_SHIFTS[-1]), _ROUTE_SHIFTS, np.arange(_ROUTE_SHIFTS.size))
    low = np.minimum(position.astype(np.int64), _ROUTE_SHIFTS.size - 2)
    frac = position - low
    rows = np.arange(n.size)[:, None]
    chance = (1.0 - frac) * on_grid[rows, low] + frac * on_grid[rows, low + 1]
    chance = np.where(shift > _ROUTE_SHIFTS[-1], np.where(n == 1.0, 1.0, 0.0)[:, None], chance)
    return np.where(finite, n * rate_per_ms, 0.0)[:, None] * chance * ttft_ms


@functools.cache
def _route_table(replicas: int) -> np.ndarray:
    """``E[(1 - Phi(Z + s))^(n - 1)]`` for n = 1 .. ``replicas`` (rows) on ``_ROUTE_SHIFTS``."""
    free = 1.0 - norm_cdf(_ROUTE_Z[None, :] + _ROUTE_SHIFTS[:, None])  # (shifts, nodes)
    table = np.power(free[None, :, :], np.arange(replicas, dtype=np.float64)[:, None, None]) @ _ROUTE_WEIGHTS
    table.setflags(write=False)
    return table


def _absorbed(
    prompts: np.ndarray,
    prompt_costs: np.ndarray,
    sorted_inputs: np.ndarray,
    token_budget: np.ndarray,
    step: np.ndarray,
    ttft_ms: np.ndarray,
) -> np.ndarray:
    """Share of the prompts queued behind a request (``prompts`` tokens, ``prompt_costs`` ms of
    prefill, per decode-length group) that its own last prefill iteration takes whole, so they
    never stall its decode: those that arrived before that iteration started and fit in the
    token budget its last chunk leaves (``sorted_inputs``: the load's prompts). Per replica count
    and group."""
    budget = token_budget[:, None]
    last = np.where(prompts[None, :] <= budget, prompts[None, :], np.mod(prompts[None, :] - 1.0, budget) + 1.0)
    fits = np.searchsorted(sorted_inputs, np.maximum(budget - last, 0.0), side="right") / sorted_inputs.size
    last_iteration = step[:, None] + prompt_costs[None, :] * last / np.maximum(prompts[None, :], 1.0)
    early = np.clip(1.0 - last_iteration / np.maximum(ttft_ms, 1e-9), 0.0, 1.0)
    return early * fits


def _stalled_itl_met(
    sla_itl: float,
    shape: _DecodeShape,
    mean_decode_only: np.ndarray,
    batch_variance: np.ndarray,
    stalls: _Stalls,
) -> np.ndarray:
    """Share of requests whose mean ITL meets the SLA on an aggregated replica, per replica count.

    A request decoding ``d`` iterations meets it when its stalls add up to at most
    ``d x (SLA - its decode-only ITL)``. With ``K ~ Poisson(per_iteration d + left_behind)``
    stalls: ``K = 0`` is the decode alone; ``K = 1`` is exact over the prompt groups (one long
    prompt is what makes a short decode miss, which a normal over the mean stall cannot see);
    ``K >= 2`` as one normal over the sum, given ``K >= 2``. The decode-only ITL is normal as in
    :func:`_itl_p90`. Requests with no decode iteration always meet it."""
    if shape.decoding_share == 0:
        return np.ones_like(mean_decode_only)
    d = shape.fine.iterations  # (G,)
    overlap = np.minimum(d[:, None], stalls.chunks[None, :]) / stalls.chunks[None, :]
    stall = stalls.cost[None, :] * overlap  # (G, P): one prompt's stall on a decode of d iterations, ms
    stall_mean = stall @ stalls.weights
    stall_var = np.maximum(np.square(stall) @ stalls.weights - np.square(stall_mean), 0.0)
    slack = (sla_itl - mean_decode_only)[:, None] * d[None, :]  # (N, G) ms of stall a decode absorbs
    noise = np.sqrt(batch_variance + 1e-12)[:, None] * d[None, :]
    mu = stalls.per_iteration[:, None] * d[None, :] + stalls.left_behind

    none = norm_cdf(slack / noise)
    one = norm_cdf((slack[:, :, None] - stall[None, :, :]) / noise[:, :, None]) @ stalls.weights
    # K >= 2: the sum of K stalls as one normal over K given K >= 2 (for long decodes, where K
    # is large, this is the compound-Poisson normal; short ones miss on two stalls anyway).
    quiet = np.exp(-mu)
    two_or_more = np.maximum(-np.expm1(-mu) - mu * quiet, 0.0)
    given = np.maximum(two_or_more, 1e-300)
    count_mean = np.where(two_or_more > 1e-12, (mu - mu * quiet) / given, 2.0)
    count_var = np.where(two_or_more > 1e-12, np.maximum((mu + mu * mu - mu * quiet) / given - count_mean**2, 0.0), 0.0)
    spread = count_mean * stall_var[None, :] + count_var * np.square(stall_mean)[None, :] + np.square(noise)
    several = norm_cdf((slack - count_mean * stall_mean[None, :]) / np.sqrt(spread + 1e-12))
    met = quiet * (none + mu * one) + two_or_more * several
    return 1.0 - shape.decoding_share + shape.decoding_share * (np.clip(met, 0.0, 1.0) @ shape.fine.weights)


@dataclass(frozen=True)
class _OwnTime:
    """Each request's own part of TTFT (no queueing) as groups of the sample sorted by it: the
    smallest and largest value of each group, shaped (N or 1, groups). Fine groups serve the
    attainment, coarse ones the p90 search."""

    lo: np.ndarray
    hi: np.ndarray
    weights: np.ndarray
    tail_lo: np.ndarray
    tail_hi: np.ndarray
    tail_weights: np.ndarray
    p90: np.ndarray  # shaped (N or 1,)


def _own_time(size: int, value_at: Callable[[np.ndarray], np.ndarray]) -> _OwnTime:
    """Group a sample of ``size`` by own time; ``value_at`` gives the own times of sorted
    positions (own time grows along the sort)."""
    (first, last, weights), (tail_first, tail_last, tail_weights) = _own_time_groups(size)
    return _OwnTime(
        value_at(first),
        value_at(last),
        weights,
        value_at(tail_first),
        value_at(tail_last),
        tail_weights,
        value_at(np.array([int(P90 * (size - 1))]))[:, 0],
    )


@functools.lru_cache(maxsize=16)
def _own_time_groups(size: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The fine and coarse groups of a sample of ``size``; fixed edges, so cached by size
    (arrays read-only)."""
    fine, coarse = groups_at(SAMPLE_EDGES, size), groups_at(P90_EDGES, size)
    for column in (*fine, *coarse):
        column.setflags(write=False)
    return fine, coarse


@dataclass(frozen=True)
class _PromptQueue:
    """A prompt queue per replica count, as M/G/c (c = 1 for a queue per replica)."""

    stable: np.ndarray
    utilisation: np.ndarray
    wait_probability: np.ndarray  # Erlang C
    wait_scale_ms: np.ndarray  # mean wait of those who wait (exponential tail)


def _prompt_queue(
    rate_per_ms: np.ndarray,
    servers: np.ndarray,
    mean_work: np.ndarray | float,
    mean_work_sq: np.ndarray | float,
    vacation_ms: np.ndarray | float,
    arrival_scv: float = 1.0,
) -> _PromptQueue:
    """Erlang C with the Allen–Cunneen correction for general arrivals and service times (G/G/c:
    the M/M/c wait scaled by ``(ca^2 + cs^2) / 2``). Work is a prompt's prefill cost plus its token
    share of a full iteration's fixed time (prompts queued together share one iteration);
    ``vacation_ms`` adds what partly filled iterations cost on top."""
    offered = rate_per_ms * mean_work
    rho = offered / servers
    stable = rho < 1.0
    free = np.where(stable, 1.0 - rho, 1.0)
    # E[S] (ca^2 + cs^2) / 2 = (E[S^2] + (ca^2 - 1) E[S]^2) / (2 E[S])
    excess = (arrival_scv - 1.0) * np.square(mean_work)
    residual = np.maximum(mean_work_sq + excess, 1e-12) / (2.0 * np.maximum(mean_work, 1e-12))
    return _PromptQueue(
        stable=stable,
        utilisation=rho,
        wait_probability=erlang_c(servers, np.where(stable, offered, 0.0)),
        wait_scale_ms=(residual + vacation_ms) / (servers * free),
    )


def _ttft_met(
    sla_ttft: float, own: _OwnTime, queue: _PromptQueue, with_p90: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Share of requests with own part + queueing wait within the SLA, and the p90 of that sum
    (all NaN without ``with_p90``); 0 and NaN where the queue is unstable."""
    waits = np.where(queue.stable, queue.wait_probability, 0.0)[:, None]
    scale = np.where(queue.stable, queue.wait_scale_ms, 1.0)
    decay = 1.0 / np.maximum(scale, 1e-12)[:, None]
    met = exp_tail_met(sla_ttft - own.hi, sla_ttft - own.lo, waits, decay) @ own.weights
    if not with_p90:
        return np.where(queue.stable, met, 0.0), np.full(scale.shape, np.nan)

    # Where under 0.5% of prompts wait the p90 is the own part's (to within the own part's
    # 0.9 - 0.905 quantile gap); search only the other rows.
    p90 = np.broadcast_to(own.p90, scale.shape).copy()
    search = queue.stable & (waits[:, 0] > 0.005)
    if search.any():
        lo, hi = (v if v.shape[0] == 1 else v[search] for v in (own.tail_lo, own.tail_hi))
        waits_s, decay_s = waits[search], decay[search]

        def cdf(t: np.ndarray) -> np.ndarray:
            t = t[:, None]
            return exp_tail_met(t - hi, t - lo, waits_s, decay_s) @ own.tail_weights

        tail = np.log(np.maximum(waits_s[:, 0], 1.0 - P90) / (1.0 - P90)) * scale[search]
        low = np.broadcast_to(lo.min(axis=1), tail.shape)
        p90[search] = quantile_bisect(cdf, low, hi.max(axis=1) + tail, P90)
    return np.where(queue.stable, met, 0.0), np.where(queue.stable, p90, np.nan)


def _admission_ok(
    slots: float,
    servers: np.ndarray,
    point: _DecodePoint,
    residence_ms: np.ndarray,
    budget_ms: float,
) -> tuple[np.ndarray, np.ndarray]:
    """P(slot wait <= budget) and the wait's p90 over the pool's slots (the router balances
    reserved KV, so slots pool): Erlang C wait, exponential at rate (slots - busy) / residence."""
    replicas = np.where(np.isinf(servers), 1.0, servers)
    offered = replicas * np.where(point.stable, point.batch, 0.0)
    total = replicas * slots
    waits = halfin_whitt_wait_probability(total, offered)
    rate = np.maximum(total - offered, 1e-9) / np.maximum(residence_ms, 1e-9)
    ok = np.where(point.stable, 1.0 - waits * np.exp(-budget_ms * rate), 0.0)
    p90 = np.log(np.maximum(waits, 1.0 - P90) / (1.0 - P90)) / rate
    return ok, np.where(point.stable, p90, np.nan)


def _replica_counts(max_replicas: int) -> np.ndarray:
    """Rows of every per-N computation: N = 1 .. max, then N = inf (no load per replica), whose
    attainment is the curve's ceiling."""
    return np.append(np.arange(1, max_replicas + 1, dtype=np.float64), np.inf)


def _rate_per_ms(load: LoadEstimate, calibration: Calibration) -> float:
    """Arrivals per millisecond to plan for (latencies are in ms), headroom included."""
    return load.rate_rps * calibration.load_factor / 1000.0


def _servable(
    model: EngineModel, load: LoadEstimate, max_input_tokens: int | None
) -> tuple[LoadEstimate | None, float]:
    """The requests an engine accepts and their share: prompts over the context limit (or
    ``max_input_tokens``) are rejected at admission, add no load, and never meet the SLA."""
    limits = [v for v in (max_input_tokens, model.max_context) if v]
    if not limits:
        return load, 1.0
    kept = load.input_tokens <= min(limits)
    share = float(kept.mean())
    if share == 1.0:
        return load, 1.0
    if share == 0.0:
        return None, 0.0
    served = LoadEstimate(
        rate_rps=load.rate_rps * share,
        input_tokens=load.input_tokens[kept],
        output_tokens=load.output_tokens[kept],
    )
    return served, share


def _check_limits(max_replicas: int, **positive: int) -> None:
    if max_replicas < 0:
        raise ValueError(f"max_replicas must be >= 0, got {max_replicas}")
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _prefill_costs(model: EngineModel, inputs: np.ndarray, calibration: Calibration) -> tuple[float, np.ndarray]:
    """Per-iteration overhead and each prompt's variable cost (chunks add up to it exactly)."""
    overhead = model.prefill_overhead_ms
    variable = np.asarray(model.ttft_ms(inputs)) - overhead
    return overhead * calibration.prefill_factor, variable * calibration.prefill_factor


def prefill_curve(
    model: EngineModel,
    load: LoadEstimate,
    sla: SLA,
    *,
    max_replicas: int,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_input_tokens: int | None = None,
    kv_transfer_ms_fn: KvTransferFn | None = None,
    calibration: Calibration = Calibration(),
    detail: CurveDetail = "full",
) -> PoolCurve:
    """TTFT attainment of a disaggregated prefill pool (queue + prefill + KV transfer); prompts
    the engine rejects for length count as misses.

    ``kv_transfer_ms_fn`` maps input lengths to transfer times; None uses the simulator's
    defaults (128 KiB per token over 50 Gb/s). ``detail``: see ``CurveDetail``.
    """
    _check_limits(max_replicas, max_batch_tokens=max_batch_tokens)
    served, share = _servable(model, load, max_input_tokens)
    if served is None:
        return _constant_curve("prefill", max_replicas, 0.0 if load.rate_rps > 0 else 1.0)
    inputs = served.input_tokens
    overhead, variable = _prefill_costs(model, inputs, calibration)
    transfer = (kv_transfer_ms_fn or kv_transfer_ms)(inputs)
    own = np.ceil(inputs / max_batch_tokens) * overhead + variable + transfer
    work = variable + overhead * inputs / max_batch_tokens

    # Least-work routing over N replicas acts like one FIFO queue with N servers (M/G/c).
    servers = _replica_counts(max_replicas)
    unlimited = np.isinf(servers)
    queue = _prompt_queue(
        np.where(unlimited, 0.0, _rate_per_ms(served, calibration)),
        np.where(unlimited, 1.0, servers),
        float(work.mean()),
        float(np.mean(work**2)),
        overhead,
        calibration.arrival_scv,
    )
    order = np.sort(own)
    grouped = _own_time(order.size, lambda at: order[at][None, :])
    attainment, ttft_p90 = _ttft_met(sla.ttft_ms, grouped, queue, with_p90=detail != "attainment")
    none = np.full(servers.size, np.nan)
    return _curve("prefill", load.rate_rps, share, attainment, ttft_p90, none, queue.utilisation)


def decode_curve(
    model: EngineModel,
    load: LoadEstimate,
    sla: SLA,
    *,
    max_replicas: int,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_input_tokens: int | None = None,
    admission_budget_ms: float | None = None,
    calibration: Calibration = Calibration(),
) -> PoolCurve:
    """ITL attainment of a disaggregated decode pool, times the share of requests whose wait
    for a decode slot stays within ``admission_budget_ms`` (default: half the TTFT SLA).

    Requests rejected for length upstream never reach decode and are left out.
    """
    _check_limits(max_replicas, max_num_seqs=max_num_seqs)
    served, _ = _servable(model, load, max_input_tokens)
    if served is None or served.rate_rps == 0:
        return _constant_curve("decode", max_replicas, 1.0)
    budget = ADMISSION_SHARE * sla.ttft_ms if admission_budget_ms is None else admission_budget_ms
    shape = _decode_shape(served)
    slots = _slots(model, shape, max_num_seqs)
    servers = _replica_counts(max_replicas)
    rate = _rate_per_ms(served, calibration) * 1000.0 / servers  # req/s per replica
    point = _decode_point(
        model, shape, rate, slots, calibration.itl_factor, np.ones_like(rate), calibration.arrival_scv
    )

    itl_met, itl_p90 = _itl_attainment(sla.itl_ms, shape, point.itl, point.variance)
    if point.itl_at_cap <= sla.itl_ms:  # the batch cap bounds every iteration
        itl_met = np.ones_like(rate)
    itl_p90 = np.where(point.stable, np.minimum(itl_p90, point.itl_at_cap), np.nan)
    admitted, wait_p90 = _admission_ok(slots, servers, point, shape.mean_iterations * point.itl, budget)
    attainment = np.where(point.stable, itl_met * admitted, 0.0)
    return _curve("decode", served.rate_rps, 1.0, attainment, wait_p90, itl_p90, point.utilisation)


def agg_curve(
    model: EngineModel,
    load: LoadEstimate,
    sla: SLA,
    *,
    max_replicas: int,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_input_tokens: int | None = None,
    admission_budget_ms: float | None = None,
    calibration: Calibration = Calibration(),
    detail: CurveDetail = "full",
) -> PoolCurve:
    """Attainment of both TTFT and ITL in an aggregated pool (prefill and decode share
    iterations, so each slows the other); prompts rejected for length count as misses.
    ``detail``: see ``CurveDetail``."""
    _check_limits(max_replicas, max_batch_tokens=max_batch_tokens, max_num_seqs=max_num_seqs)
    served, share = _servable(model, load, max_input_tokens)
    if served is None:
        return _constant_curve("agg", max_replicas, 0.0 if load.rate_rps > 0 else 1.0)
    budget = ADMISSION_SHARE * sla.ttft_ms if admission_budget_ms is None else admission_budget_ms
    inputs = served.input_tokens
    overhead, variable = _prefill_costs(model, inputs, calibration)
    shape = _decode_shape(served)
    slots = _slots(model, shape, max_num_seqs)
    servers = _replica_counts(max_replicas)
    lam = _rate_per_ms(served, calibration) / servers  # per replica and ms

    # Decode: prefill chunks take a share rho_c of the time, stretching every iteration.
    rho_c = lam * variable.mean()
    stretch = np.where(rho_c < 1.0, 1.0 / np.maximum(1.0 - rho_c, 1e-12), np.inf)
    point = _decode_point(model, shape, lam * 1000.0, slots, calibration.itl_factor, stretch, calibration.arrival_scv)
    batch = np.where(point.stable, point.batch, 0.0)
    stretch = np.where(point.stable, stretch, 1.0)
    mean_itl = point.itl * stretch

    # Prefill: queued prompts share each iteration, with the token budget the batch leaves;
    # the iteration's fixed time is the decode step (or the overhead when nothing decodes).
    busy = 1.0 - np.exp(-batch)
    decode_step = np.asarray(model.itl_ms(np.maximum(batch, 1.0), shape.context))
    step = busy * decode_step * calibration.itl_factor + (1.0 - busy) * overhead
    token_budget = np.maximum(max_batch_tokens - batch, 1.0)
    share_per_token = step / token_budget
    mean_work = variable.mean() + share_per_token * inputs.mean()
    mean_work_sq = (
        np.mean(variable**2)
        + 2.0 * share_per_token * np.mean(variable * inputs)
        + share_per_token**2 * np.mean(inputs**2)
    )
    # Agg routing balances reserved KV tokens, not prompt queues: each replica is its own M/G/1,
    # with the decode step as a vacation that the least-loaded choice among N replicas dodges
    # about N - 1 times in N (fitted against the simulator).
    queue = _prompt_queue(lam, np.ones_like(servers), mean_work, mean_work_sq, step / servers, calibration.arrival_scv)
    queue = replace(queue, stable=queue.stable & point.stable)
    residual = busy * mean_itl / 2.0  # of the iteration running when a prompt arrives
    order = np.argsort(inputs, kind="stable")

    def own(at: np.ndarray) -> np.ndarray:
        """Own TTFT of sorted positions: it grows with the prompt."""
        picks = order[at]
        chunks = np.ceil(inputs[picks][None, :] / token_budget[:, None])
        return residual[:, None] + chunks * step[:, None] + variable[picks][None, :]

    ttft_met, ttft_p90 = _ttft_met(sla.ttft_ms, _own_time(inputs.size, own), queue, with_p90=detail != "attainment")
    admitted, _ = _admission_ok(slots, servers, point, shape.mean_iterations * mean_itl, budget)
    utilisation = np.maximum(rho_c + point.utilisation, queue.utilisation)
    unknown = np.full(servers.size, np.nan)
    if detail == "entry_ttft":
        attainment = np.where(point.stable, ttft_met * admitted, 0.0)
        return _curve("agg", load.rate_rps, share, attainment, ttft_p90, unknown, utilisation)

    # ITL: a prompt prefilled while a request decodes stalls it by the prompt's cost; short
    # decodes miss on one long prompt, including those queued behind their own.
    prompts = shape.fine.inputs
    _, prompt_costs = _prefill_costs(model, prompts, calibration)
    wait_mean = np.where(queue.stable, queue.wait_probability * queue.wait_scale_ms, 0.0)
    ttft_mean = (
        (residual + wait_mean)[:, None]
        + np.ceil(prompts[None, :] / token_budget[:, None]) * step[:, None]
        + prompt_costs[None, :]
    )
    cost, chunks, weights = _stall_prompts(inputs[order], variable[order], max_batch_tokens)
    left_behind = _left_behind(servers, lam, batch, shape, ttft_mean)
    absorbed = _absorbed(prompts, prompt_costs, inputs[order], token_budget, step, ttft_mean)
    stalls = _Stalls(
        per_iteration=lam * mean_itl,
        left_behind=left_behind * (1.0 - absorbed),
        cost=cost,
        chunks=chunks,
        weights=weights,
    )
    itl_met = _stalled_itl_met(sla.itl_ms, shape, point.itl, point.variance, stalls)
    attainment = np.where(point.stable, ttft_met * admitted * itl_met, 0.0)
    if detail == "attainment":
        return _curve("agg", load.rate_rps, share, attainment, ttft_p90, unknown, utilisation)
    itl_p90 = _itl_p90(
        shape,
        mean_itl,
        point.variance * stretch**2,
        lam * mean_itl * np.mean(variable**2),
        _chunk_spread(inputs, variable, max_batch_tokens),
    )
    itl_p90 = np.where(point.stable, itl_p90, np.nan)
    return _curve("agg", load.rate_rps, share, attainment, ttft_p90, itl_p90, utilisation)


def _chunk_spread(inputs: np.ndarray, variable: np.ndarray, budget: int) -> Callable[[np.ndarray], np.ndarray]:
    """How chunked prefill changes the ITL spread prompts cause, by decode length ``d``.

    A prompt prefilled in ``c = ceil(L / budget)`` iterations stalls each of them by ``V / c``.
    A request decoding ``d`` iterations overlaps ``min(d, c)`` of one prompt's chunks, and about
    ``d + c - 1`` iterations' worth of prompts overlap it, so its variance from one prompt's
    arrival rate is ``V^2 (d + c - 1) min(d, c)^2 / (c^2 d^2)``: ``V^2 / d`` without chunking
    (``c = 1``) or for long decodes, ``V^2 / c`` for decodes shorter than the chunking. Returned
    relative to ``V^2 / d`` (1 when no prompt is chunked)."""
    chunks = np.maximum(np.ceil(inputs / max(1, budget)), 1.0)
    if np.all(chunks == 1.0):
        return np.ones_like
    weights = variable**2
    total = float(weights.sum()) or 1.0

    def factor(d: np.ndarray) -> np.ndarray:
        c = chunks[:, None]
        dd = np.maximum(d, 1.0)[None, :]
        h = (dd + c - 1.0) * np.minimum(dd, c) ** 2 / (c**2 * dd)
        return np.asarray(weights @ h / total)

    return factor


def _curve(
    role: PoolRole,
    rate_rps: float,
    served_share: float,
    attainment: np.ndarray,
    ttft_p90: np.ndarray,
    itl_p90: np.ndarray,
    utilisation: np.ndarray,
) -> PoolCurve:
    """Rows N = 1 .. max, inf -> a curve over N = 0 .. max: N = 0 prepended, the last row kept
    as the ceiling, attainment clamped to [0, 1] and non-decreasing, p90s non-increasing."""
    loaded = rate_rps > 0
    rows = np.clip(np.nan_to_num(attainment, nan=0.0), 0.0, 1.0) * served_share
    met = np.maximum.accumulate(np.concatenate(([0.0 if loaded else 1.0], rows[:-1])))
    util = np.concatenate(([np.inf if loaded else 0.0], utilisation[:-1]))
    return PoolCurve.model_construct(  # columns are built aligned and typed here
        role=role,
        replicas=list(range(len(met))),
        attainment=met.tolist(),
        ttft_p90_ms=[None, *_non_increasing(ttft_p90[:-1])],
        itl_p90_ms=[None, *_non_increasing(itl_p90[:-1])],
        utilisation=util.tolist(),
        ceiling=float(max(rows[-1], met[-1])),
    )


def _constant_curve(role: PoolRole, max_replicas: int, attainment: float) -> PoolCurve:
    """A pool with nothing to serve: every prompt rejected for length (0) or none arriving (1)."""
    n = max_replicas + 1
    return PoolCurve(
        role=role,
        replicas=list(range(n)),
        attainment=[attainment] * n,
        ttft_p90_ms=[None] * n,
        itl_p90_ms=[None] * n,
        utilisation=[0.0] * n,
        ceiling=attainment,
    )


def _non_increasing(values: np.ndarray) -> list[float | None]:
    """Running minimum over N (more replicas never hurt); None where unknown or unstable."""
    finite = np.where(np.isfinite(values), values, np.inf)
    best = np.minimum.accumulate(finite) if finite.size else finite
    return [None if v == math.inf else v for v in best.tolist()]
