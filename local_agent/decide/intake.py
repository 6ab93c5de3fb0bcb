"""Observation intake: what the agent keeps from each window of observations.

The admitted rate feeds the predictor (not completions: under backpressure completions
under-count demand), recent length summaries and prefix-cache hit rates feed sizing, window
counts give the arrivals' burstiness, and the decode model learns from observed iterations.
Missing metrics are None, never 0: unknown traffic is not zero traffic.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from fleet_planner.planning import MAX_OBSERVED, Distribution, PoolObservation, PoolRole
from local_agent.decide.elapsed import Elapsed
from local_agent.decide.options import AgentOptions
from local_agent.forecast.base import Predictor
from local_agent.perf_correction import CorrectedPerfModel
from local_agent.sizing.burstiness import count_dispersion

MAX_PREFIX_HIT = 0.9  # sizing never counts on more prefix-cache reuse than this
SMOOTHING_WINDOWS = 4  # windows averaged into the load that SLA misses are remembered at
# Requests whose lengths must have been seen before sizing trusts their distribution: a window
# holding one request would otherwise set the first forecast sizing (and the schedule of the next
# ones) from that request alone.
MIN_LENGTH_REQUESTS = 10

Lengths = tuple[Distribution, Distribution]


class Intake:
    """Per-deployment memory of recent windows; ``observe`` returns the admitted rate (or None)."""

    def __init__(
        self,
        options: AgentOptions,
        predictor: Predictor,
        entry_role: PoolRole,
        endpoint_share: float | None,
        elapsed: Elapsed,
        trend: Predictor | None = None,
    ):
        self.options = options
        self.elapsed = elapsed
        self.predictor = predictor
        self.trend = trend  # the scale-down guard's second forecast (``guard_predictor``), fed alike
        self.entry_role = entry_role
        self.endpoint_share = endpoint_share
        self._lengths: deque[tuple[int, Distribution, Distribution]] = deque(maxlen=options.length_windows)
        # (weight, prefix-cache hit rate) of recent entry-pool windows: prefill sizing discounts reuse.
        self._prefix_hits: deque[tuple[int, float]] = deque(maxlen=options.length_windows)
        self._counts: deque[float] = deque(maxlen=max(options.burst_windows, 1))
        self._rates: deque[float] = deque(maxlen=SMOOTHING_WINDOWS)
        self.last_admission_s: float | None = None
        self.started_s: float | None = None
        self.windows = 0  # windows with an admission metric observed so far

    def observe(self, now_s: float, pools: dict[PoolRole, PoolObservation], decode: object) -> float | None:
        """Take one tick's observations; ``decode`` is the decode pool's model (learns if it can)."""
        entry = pools.get(self.entry_role)
        if entry is None or entry.admitted is None:
            self.unknown(now_s)
            return None
        share = self.endpoint_share
        shared = share is not None and entry.endpoint_admitted is not None
        # Demand: what was admitted and what the gateway shed (an admission limit's excess).
        count = _endpoint_demand(entry) * share if share is not None and shared else entry.admitted + _shed_share(entry)
        rate = count / entry.window_s
        self._feed(self._endpoint_rate(entry, rate) if self.endpoint_share is not None else rate)
        self.windows += 1
        self._counts.append(count)
        self._rates.append(rate)
        if self.started_s is None:
            self.started_s = now_s
        if entry.admitted > 0 or entry.endpoint_shed or (shared and entry.endpoint_admitted):
            # A deployment sharing its endpoint is busy while the endpoint is (scaled to zero, it
            # gets no traffic of its own), and sizes on the endpoint's lengths until it has its own.
            self.last_admission_s = now_s
            if entry.admitted > 0 and entry.input_tokens is not None and entry.output_tokens is not None:
                self._lengths.append((entry.admitted, entry.input_tokens, entry.output_tokens))
            elif shared and entry.endpoint_input_tokens is not None and entry.endpoint_output_tokens is not None:
                self._lengths.append(
                    (entry.endpoint_admitted or 0, entry.endpoint_input_tokens, entry.endpoint_output_tokens)
                )
        self._learn_decode(pools, decode)
        if entry.prefix_hit_rate is not None:
            self._prefix_hits.append((max(entry.admitted, 1), entry.prefix_hit_rate))
        return rate

    def _endpoint_rate(self, entry: PoolObservation, rate: float) -> float | None:
        """What a deployment sharing its endpoint forecasts: the endpoint's rate (its own traffic
        read as its share of it when the endpoint's is missing; unknown at a share of 0). Its
        forecast is then scaled by the share in force when it sizes, so a new share counts at once
        instead of showing up as a step in the forecast's history."""
        if entry.endpoint_admitted is not None:
            return _endpoint_demand(entry) / entry.window_s
        share = self.endpoint_share or 0.0
        return rate / share if share > 0 else None

    def unknown(self, now_s: float) -> None:
        """No usable admission metric this tick: the predictor sees a gap, and the agent never
        counts unknown traffic as idle."""
        self._feed(None)
        self.last_admission_s = now_s

    def _feed(self, rate: float | None) -> None:
        self.predictor.observe(rate)
        if self.trend is not None:
            self.trend.observe(rate)

    def _learn_decode(self, pools: dict[PoolRole, PoolObservation], model: object) -> None:
        """Feed the decode model one window-averaged iteration: the per-token latency requests saw
        (``itl_ms.mean``) at the window's mean running batch per replica and mean context."""
        obs = pools.get("decode")
        if not isinstance(model, CorrectedPerfModel) or obs is None or obs.itl_ms is None or not obs.ready:
            return
        if obs.scheduled_tokens_per_s is None or not self._lengths:
            return
        batch = obs.scheduled_tokens_per_s * obs.itl_ms.mean / 1000.0 / obs.ready
        _, inputs, outputs = self._lengths[-1]
        if batch >= 1.0 and obs.itl_ms.count >= 10:
            model.observe_iteration("decode", obs.itl_ms.mean, batch, inputs.mean + outputs.mean / 2)

    def arrival_scv(self) -> float:
        """The arrivals' ``ca^2`` from recent window counts (1 = Poisson until enough windows)."""
        if self.options.burst_windows == 0:
            return 1.0
        return count_dispersion(list(self._counts)) or 1.0

    def smoothed_rate(self) -> float | None:
        """Mean admitted rate of the last few windows (what a miss is remembered at)."""
        return float(np.mean(self._rates)) if self._rates else None

    def recent_peak_rate(self) -> float | None:
        """Highest admitted rate of the last few windows."""
        return max(self._rates) if self._rates else None

    def prefix_hit_rate(self) -> float:
        """Admission-weighted prefix-cache hit rate of recent windows (0 when never reported),
        capped at ``MAX_PREFIX_HIT``. (The anchor ignored prefix-cache reuse and oversized prefill.)"""
        if not self._prefix_hits:
            return 0.0
        total = sum(weight for weight, _ in self._prefix_hits)
        pooled = sum(weight * hit for weight, hit in self._prefix_hits) / total
        return min(max(pooled, 0.0), MAX_PREFIX_HIT)

    def lengths(self) -> Lengths | None:
        """Count-weighted pool of recent windows' length summaries (tail-aware: keeps p90/p99);
        None until :data:`MIN_LENGTH_REQUESTS` requests are in it."""
        if sum(count for count, _, _ in self._lengths) < MIN_LENGTH_REQUESTS:
            return None
        weights = np.array([count for count, _, _ in self._lengths], dtype=float)
        weights /= weights.sum()

        def pooled(index: int) -> Distribution:
            rows: list[Distribution] = [entry[index] for entry in self._lengths]  # type: ignore[misc]
            return Distribution(
                count=int(min(sum(r.count for r in rows), MAX_OBSERVED)),  # a weight; bounded like one window's
                mean=float(np.dot(weights, [r.mean for r in rows])),
                p50=float(np.dot(weights, [r.p50 for r in rows])),
                p90=float(np.dot(weights, [r.p90 for r in rows])),
                p99=float(max(r.p99 for r in rows)),
            )

        return pooled(1), pooled(2)

    def idle(self, now_s: float, pools: dict[PoolRole, PoolObservation], after_s: float) -> bool:
        """Traffic stopped: nothing admitted for ``after_s`` and nothing queued. (The anchor
        skipped its tick on zero traffic and never scaled down.)"""
        if self.started_s is None or not self.elapsed.reached(now_s, self.started_s, after_s):
            return False
        last = self.last_admission_s
        if last is not None and not self.elapsed.reached(now_s, last, after_s):
            return False
        queued = sum((obs.queued_requests or 0) for obs in pools.values())
        return queued == 0


def _endpoint_demand(entry: PoolObservation) -> int:
    """The endpoint's requests of the window, admitted or shed by its gateway."""
    return (entry.endpoint_admitted or 0) + (entry.endpoint_shed or 0)


def _shed_share(entry: PoolObservation) -> float:
    """This deployment's part of what its endpoint's gateway shed: demand too, or a planner's
    admission limit would hide the load that set it, and be lifted a round later (the limit then
    flickers on and off while the queue refills). The endpoint's shed requests count in proportion
    to the admitted ones this deployment got (all of them when it is alone, or when none was
    admitted anywhere)."""
    shed = entry.endpoint_shed or 0
    if not shed:
        return 0.0
    if not entry.endpoint_admitted:  # alone (no endpoint count), or nothing admitted anywhere
        return float(shed)
    return shed * min((entry.admitted or 0) / entry.endpoint_admitted, 1.0)
