"""The scale-down guard: a scale-down happens only when it is safe and has been for a while.

In order: no scale-down within ``scale_down_grace_s`` of a scale-up or while replicas start;
no scale-down that reverses a scale-up within ``reversal_interval_s`` of the pool's last reversal
(a budget of direction reversals: ups are never held here, so only the way down can wait);
*consolidation*: the survivors must carry ``N/(N-1)`` of the load each, checked with the
(burst-aware, corrected) model at the largest of the forecast upper, the trend forecast's upper
(``guard_predictor``: a damped trend, so a pool does not descend into a rise the moving average
still trails), (with ``check_recent_peak``)
the last few windows' highest load and the load's level (observed or forecast mean) times
``1 + down_margin`` (a dead band: up at one load, down only below it by the margin;
``decode_down_margin`` for a disaggregated decode pool, whose latency has no queue to blow up;
``dead_band_over: upper`` widens the largest of them instead, as before 2026-12-05); the
survivors' KV cache must stay below ``kv_low``; *miss memory*: not down to a load per replica at
which this pool recently missed its SLA (or ran over its queue or KV threshold, or, with
``near_miss``, came within one replica of missing), until the load has fallen by ``miss_margin``;
*warm-up*: none before ``warmup_windows`` windows of traffic were observed, nor (with
``warmup_until_corrected``) of the entry pool before its TTFT correction is in force (until then
the forecast has no error estimate and the burstiness, TTFT correction and miss memory have next
to nothing to learn from, so "safe" is the uncorrected model's word alone), except the *opening
cut* (``opening_margin``): a pool other than the entry pool that has not changed yet may go down
once, straight to what is safe at a wide margin over the load, and then waits for a forecast
sized after the cut; *a first descent on a fresh forecast* (``warmup_until_sized``): the pool's
first scale-down after the warm-up waits for a forecast sized after the tick it was first found
safe (the last sizing may be minutes old, made from the first window or two); *dwell*: a safe
scale-down still waits ``scale_down_dwell_s`` after the pool's last one (``decode_dwell_s`` for a
disaggregated decode pool, whose ITL shows a step within a window), so each step is observed
before the next; *stabilisation*: only down to the highest of the recommendations of the last
``stabilization_window_s`` (the Kubernetes HPA's scale-down rule), in steps of
``scale_down_gap_fraction`` of the way there (the last two replicas in one, on a shared endpoint
only from a pool of six or more).
Together (the defaults) they make a pool started above its need converge on it from above
without undershooting (docs/local-agent.md, *the scale-down descent*).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping

from fleet_planner.planning import PoolObservation, PoolRole
from local_agent.decide.elapsed import Elapsed
from local_agent.decide.intake import Lengths
from local_agent.decide.options import AgentOptions
from local_agent.decide.reactive import Proposal
from local_agent.decide.sizer import Sizer
from local_agent.models import DecisionReason
from local_agent.sizing import PoolCurve

R = DecisionReason
MAX_MISSES = 64  # remembered misses per pool (the oldest go first)
# What a count that missed its p90 latency target is worth at most: over a tenth of its requests
# were late. A bid's curve says no more than this wherever the load per replica is at least one
# the pool was seen to miss at (:meth:`ScaleDownGuard.bid_ceiling`).
MISSED_ATTAINMENT = 0.9
WARMUP_WAIT = 4  # the entry pool waits for its TTFT correction at most this many warm-ups
OPENING_WINDOWS = 2  # windows with an admission metric before an opening cut (the first may be empty)
LAST_STEP = 2  # a descent this close to the window's highest recommendation takes the rest in one change
# On a shared endpoint, only from a pool at least this many times that gap: a gateway balancing by
# load moves a step's traffic onto the siblings, and a pool losing a third of its replicas or more at
# once (a decode pool 3 -> 1 on the matrix) pushed a sibling past its ITL (docs/local-agent.md).
SHARED_POOL_PER_STEP = 3
# Windows in a row a pool must miss its SLA before its report says it is late (its load per replica
# then is what the planner weighs as its capacity): one late window is a burst, and read as a
# shortage it let a higher priority take GPUs for nothing (``shortage``: the top tenant's
# one-replica A100 pool, late for one window, took A100s from the other tenant, 54.24 -> 43.26%,
# for 0.05 point of its own).
LATE_WINDOWS = 3


class PoolMemory:
    """What the guard remembers of one pool."""

    __slots__ = (
        "last_direction",
        "last_reversal_s",
        "last_scale_down_s",
        "last_scale_up_s",
        "last_sla_miss_s",
        "late",
        "misses",
        "opening_cut_sizing",
        "recommendations",
        "sla_misses",
        "warm_sizing",
    )

    def __init__(self) -> None:
        self.last_scale_up_s = -math.inf
        self.last_scale_down_s = -math.inf
        self.last_direction = 0  # +1 up, -1 down, 0 no change yet
        self.last_reversal_s = -math.inf
        self.last_sla_miss_s = -math.inf  # the last window whose SLA miss counted as pressure
        self.misses: deque[tuple[float, float]] = deque(maxlen=MAX_MISSES)  # (time, load per replica)
        self.sla_misses: deque[tuple[float, float]] = deque(maxlen=MAX_MISSES)  # the SLA's alone, likewise
        self.late: deque[tuple[float, float]] = deque(maxlen=MAX_MISSES)  # the windows in a row late now, likewise
        self.recommendations: deque[tuple[float, int]] = deque()  # (time, count) in the window
        self.opening_cut_sizing: int | None = None  # the sizer's forecast sizings at the opening cut
        self.warm_sizing: int | None = None  # the sizer's forecast sizings when a scale-down was first safe


class ScaleDownGuard:
    def __init__(self, options: AgentOptions, sizer: Sizer, roles: list[PoolRole], elapsed: Elapsed):
        self.options = options
        self.sizer = sizer
        self.elapsed = elapsed
        self.pools = {role: PoolMemory() for role in roles}

    def scaled(self, role: PoolRole, now_s: float, direction: int) -> None:
        """The pool's target changed (+1 up, -1 down): grace and reversal bookkeeping, and whether
        this was a scale-down before the warm-up ended (the opening cut)."""
        memory = self.pools[role]
        if direction > 0:
            memory.last_scale_up_s = now_s
        else:
            memory.last_scale_down_s = now_s
            if memory.last_direction == 0 and self._warming_up(role) is not None:
                memory.opening_cut_sizing = self.sizer.sizings
        if memory.last_direction == -direction:
            memory.last_reversal_s = now_s
        memory.last_direction = direction

    def missed(self, role: PoolRole, now_s: float, ready: int, rate: float | None) -> None:
        """The pool missed its SLA (or its queue or KV use ran over the threshold that adds a
        replica) at ``ready`` replicas and (smoothed) load ``rate``."""
        self._remember(self.pools[role].misses, now_s, ready, rate)

    def sla_window(self, role: PoolRole, now_s: float, ready: int, rate: float | None, *, missed: bool) -> None:
        """This window of the pool at ``ready`` replicas and (smoothed) load ``rate``: whether its
        SLA miss counted as pressure (it asks for a replica; one replica more shortens the late
        latency)."""
        memory = self.pools[role]
        if not missed:
            memory.late.clear()
            return
        memory.last_sla_miss_s = now_s
        self._remember(memory.sla_misses, now_s, ready, rate)
        self._remember(memory.late, now_s, ready, rate)

    def late_per_replica(self, role: PoolRole, now_s: float) -> float | None:
        """The lowest load per replica of the windows the pool has missed its SLA in, up to this
        one, when there are ``LATE_WINDOWS`` of them in a row (None otherwise, and always with the
        miss memory off): a pool late at that load carries less than its model says, and the
        planner may read it so."""
        late = self.pools[role].late
        if len(late) < LATE_WINDOWS or late[-1][0] != now_s:
            return None
        return min(per_replica for _, per_replica in late)

    def bid_ceiling(self, role: PoolRole, now_s: float, rate: float | None) -> int:
        """The most replicas that would carry ``rate`` at a load per replica this pool missed its
        SLA at within ``miss_memory_s`` (0: none): a bid's curve credits those counts with at most
        ``MISSED_ATTAINMENT``. The curve is the model's word, and where the pool has just been shown
        late the model was wrong there: on ``day-clients d1+d4 supply=0.67`` the high-priority
        prefill pool missed its TTFT at two replicas for minutes while its curve valued two at
        99.6%, so the planner saw nothing to gain in a third and kept it on a lower priority."""
        lowest = self._lowest(self.pools[role].sla_misses, now_s)
        if lowest is None or rate is None or rate <= 0:
            return 0
        return math.floor(rate / lowest + 1e-9)

    def _remember(self, misses: deque[tuple[float, float]], now_s: float, ready: int, rate: float | None) -> None:
        """Add a miss at ``ready`` replicas and load ``rate`` to ``misses`` (as a load per replica)."""
        if self.options.miss_memory_s > 0 and rate is not None and rate > 0 and ready > 0:
            misses.append((now_s, rate / ready))

    def _lowest(self, misses: deque[tuple[float, float]], now_s: float) -> float | None:
        """The lowest load per replica among ``misses`` within ``miss_memory_s`` (older ones are
        forgotten), or None when there is none."""
        while misses and self.elapsed.beyond(now_s, misses[0][0], self.options.miss_memory_s):
            misses.popleft()
        return min(per_replica for _, per_replica in misses) if misses else None

    def recently_short(self, role: PoolRole, now_s: float) -> bool:
        """Whether a miss of the pool's SLA counted as pressure within ``miss_memory_s``: the model
        that judges a backlog transient has just been shown short there."""
        return not self.elapsed.beyond(now_s, self.pools[role].last_sla_miss_s, self.options.miss_memory_s)

    def recommend(self, role: PoolRole, now_s: float, count: int) -> None:
        """What this tick's sizing asked for (before stabilisation), for the window."""
        window = self.options.stabilization_window_s
        if window <= 0:
            return
        history = self.pools[role].recommendations
        history.append((now_s, count))
        while history and self.elapsed.reached(now_s, history[0][0], window):
            history.popleft()

    def check(
        self,
        role: PoolRole,
        now_s: float,
        obs: PoolObservation,
        current: int,
        proposal: Proposal,
        floor: int,
        targets: Mapping[PoolRole, int],
        observed_rate: float | None,
        smoothed_rate: float | None,
        lengths: Lengths | None,
    ) -> tuple[Proposal, int]:
        """The proposal if its scale-down is safe (else a hold at ``current`` with the reason),
        and the fewest replicas (not below ``floor``) that are safe now: this tick's
        recommendation for the stabilisation window."""
        if not self.elapsed.reached(now_s, self.pools[role].last_scale_up_s, self.options.scale_down_grace_s):
            return Proposal(current, R.GRACE_PERIOD, "replicas were just added"), current
        if obs.starting > 0:
            return Proposal(current, R.HOLD, "replicas still starting"), current
        memory = self.pools[role]
        if memory.last_direction > 0 and not self.elapsed.reached(
            now_s, memory.last_reversal_s, self.options.reversal_interval_s
        ):
            detail = f"last direction reversal {now_s - memory.last_reversal_s:.0f} s ago"
            return Proposal(current, R.GRACE_PERIOD, detail), current
        # Consolidation: after removing replicas the survivors carry current/wanted times the
        # load each. Check at the largest of the observed and forecast upper load (the 2<->1
        # oscillation came from ignoring this), the trend's upper (``guard_predictor``), the
        # recent peak, and the level plus the dead band ``down_margin``: sizing up and down at
        # the same load boundary would flap with noise.
        margin = self.options.decode_down_margin if role == "decode" else self.options.down_margin
        rate, source = self._check_load(observed_rate, margin)
        curves = None if lengths is None else self.sizer.curves_at(rate, lengths, detail="attainment")
        recent = max(smoothed_rate or 0.0, observed_rate or 0.0)

        others = self._others(role, curves, targets)

        def refusal(wanted: int) -> Proposal | None:
            survivors = {**others, role: wanted}
            if curves is not None and wanted > 0 and not self.sizer.meets(curves, survivors):
                detail = f"{wanted} replicas could not absorb {rate:.2f} req/s, {source}"
                return Proposal(current, R.CONSOLIDATION_REFUSED, detail)
            if role in ("decode", "agg") and obs.active_kv_tokens is not None and obs.kv_capacity_tokens and wanted:
                per_replica_capacity = obs.kv_capacity_tokens / max(1, obs.ready + obs.draining)
                if obs.active_kv_tokens > self.options.kv_low * per_replica_capacity * wanted:
                    return Proposal(current, R.CONSOLIDATION_REFUSED, "survivors' KV cache would be too full")
            if wanted == 0 and rate > 0:
                return Proposal(current, R.CONSOLIDATION_REFUSED, "traffic is not zero")
            missed = self._remembered_miss(self.pools[role], now_s, wanted, recent)
            return None if missed is None else Proposal(current, R.MISS_MEMORY, missed)

        refused = refusal(proposal.wanted)
        if refused is not None:
            return refused, current
        lowest = proposal.wanted
        if self.options.stabilization_window_s > 0:
            lowest = _fewest(lowest, floor, lambda wanted: refusal(wanted) is None)
        warming = self._warming_up(role)
        if warming is not None:
            cut = self._opening_cut(role, current, floor, rate, lengths, targets, refusal)
            if cut is not None:
                return cut, lowest
            # Safe by the model, but a model not yet checked against the traffic: wait (the
            # recommendation stands).
            return Proposal(current, R.GRACE_PERIOD, warming), lowest
        if memory.warm_sizing is None:
            memory.warm_sizing = self.sizer.sizings
        if self.options.warmup_until_sized and memory.warm_sizing == self.sizer.sizings:
            # Safe by a forecast sized before the warm-up ended (at the start, from one window):
            # the first step down waits for one that has seen the warm-up's windows (a ramp in
            # the first minutes; on the matrix the descent it let through was reversed later).
            return Proposal(current, R.GRACE_PERIOD, "warmed up: waiting for a forecast sized after it"), lowest
        if memory.opening_cut_sizing == self.sizer.sizings:
            # The cut was judged on the first windows alone: the next step waits for a forecast
            # that has seen more of the traffic (a ramp in the first minutes).
            return Proposal(current, R.GRACE_PERIOD, "opening cut: waiting for the next forecast"), lowest
        dwell = self.options.scale_down_dwell_s
        if role == "decode" and self.options.decode_dwell_s is not None:
            dwell = self.options.decode_dwell_s
        if not self.elapsed.reached(now_s, memory.last_scale_down_s, dwell):
            # Safe, but the last step is still being observed: wait (the recommendation stands).
            detail = f"last scale-down {now_s - memory.last_scale_down_s:.0f} s ago"
            return Proposal(current, R.GRACE_PERIOD, detail), lowest
        return proposal, lowest

    def _opening_cut(
        self,
        role: PoolRole,
        current: int,
        floor: int,
        rate: float,
        lengths: Lengths | None,
        targets: Mapping[PoolRole, int],
        refusal: Callable[[int], Proposal | None],
    ) -> Proposal | None:
        """A pool started far above its need (the matrix starts every pool at its maximum) waits out
        the warm-up at that count; with ``opening_margin`` it may go down once, before its first
        change, to the fewest replicas that carry (1 + margin) times the scale-down's check load
        by the model (and pass every other check). Not the entry pool: its TTFT model is not yet
        corrected, and a margin on the load does not cover a latency the profile underestimates."""
        margin = self.options.opening_margin
        if (
            margin is None
            or role == self.sizer.entry_role
            or self.pools[role].last_direction != 0
            or lengths is None
            or self.sizer.intake.windows < OPENING_WINDOWS
        ):
            return None
        wide = rate * (1.0 + margin)
        curves = self.sizer.curves_at(wide, lengths)
        others = self._others(role, curves, targets)
        cut = _fewest(
            current,
            max(floor, 1),
            lambda wanted: self.sizer.meets(curves, {**others, role: wanted}) and refusal(wanted) is None,
        )
        if cut >= current:
            return None
        return Proposal(cut, R.OPENING_CUT, f"{cut} replicas carry {wide:.2f} req/s ({1 + margin:.1f}x the load)")

    def _others(
        self, role: PoolRole, curves: dict[PoolRole, PoolCurve] | None, targets: Mapping[PoolRole, int]
    ) -> dict[PoolRole, int]:
        """The other pools at the larger of their target and their need by ``curves``: a pool's
        scale-down is judged on its own part, not refused for another pool's shortfall (that pool
        scales up on its own)."""
        needs = {} if curves is None else self.sizer.sized(curves)
        return {other: max(count, needs.get(other, 0)) for other, count in targets.items() if other != role}

    def _check_load(self, observed_rate: float | None, margin: float) -> tuple[float, str]:
        """The load a scale-down's survivors must carry, and which term set it (for the record)."""
        forecast, trend = self.sizer.forecast, self.sizer.trend_forecast
        terms = {
            "the observed load": observed_rate or 0.0,
            "the forecast's upper": forecast.upper if forecast else 0.0,
            "the trend's upper": trend.upper if trend else 0.0,
            "the recent peak": (self.sizer.intake.recent_peak_rate() or 0.0) if self.options.check_recent_peak else 0.0,
        }
        over_level = self.options.dead_band_over == "level"
        if over_level:
            # The upper quantile already carries the forecast's uncertainty: widen the level, not
            # the upper again (stacked, a wide upper on a ramp held pools far above their need).
            level = max(observed_rate or 0.0, forecast.mean if forecast else 0.0)
            terms[f"the load's level with its {margin:.0%} band"] = level * (1.0 + margin)
        source = max(terms, key=lambda name: terms[name])
        if over_level:
            return terms[source], source
        return terms[source] * (1.0 + margin), f"{source} with its {margin:.0%} band"

    def _warming_up(self, role: PoolRole) -> str | None:
        """Why the model is not yet checked against the traffic, or None once it is: fewer than
        ``warmup_windows`` windows of traffic, or, for the entry pool with ``ttft_correction``, a
        TTFT correction not yet in force (a first step sized on the uncorrected profile cut pools
        the corrected model, a window or two later, needed back). Traffic too thin to teach the
        correction holds the entry pool for at most ``WARMUP_WAIT`` times the warm-up."""
        seen, needed = self.sizer.intake.windows, self.options.warmup_windows
        if seen < needed:
            return f"warming up: {seen} of {needed} windows observed"
        ttft = self.sizer.ttft
        entry = role == self.sizer.entry_role and self.options.ttft_correction and self.options.warmup_until_corrected
        if entry and not ttft.trusted and seen < WARMUP_WAIT * needed:
            return f"warming up: TTFT correction not yet in force ({ttft.windows} steady windows)"
        return None

    def _remembered_miss(self, memory: PoolMemory, now_s: float, wanted: int, rate: float) -> str | None:
        """Why ``wanted`` replicas at ``rate`` would return to a load per replica that missed."""
        if self.options.miss_memory_s <= 0 or wanted <= 0:
            return None
        lowest = self._lowest(memory.misses, now_s)
        if lowest is None:
            return None
        if rate / wanted >= (1.0 - self.options.miss_margin) * lowest:
            return f"missed the SLA at {lowest:.2f} req/s per replica; {wanted} would carry {rate / wanted:.2f}"
        return None

    def stabilised(self, role: PoolRole, current: int, proposal: Proposal) -> tuple[Proposal, bool]:
        """Scale down only to the highest recommendation of the window (HPA stabilisation): a
        recommendation is the fewest replicas safe at that tick, so a load that stayed low for
        the whole window is followed down without waiting a window per replica. With
        ``scale_down_gap_fraction`` the scale-down moves that fraction of the way to that
        recommendation; the flag says the step cap must not split it (one change instead of
        several)."""
        history = self.pools[role].recommendations
        if self.options.stabilization_window_s <= 0 or proposal.wanted >= current or not history:
            return proposal, False
        highest = max(count for _, count in history)
        if highest > proposal.wanted:
            wanted = min(highest, current)
            return Proposal(wanted, R.STABILISING, f"highest recommendation of the window: {highest}"), False
        if proposal.reason == R.OPENING_CUT:
            return proposal, True  # one change, straight to the cut (not below the window's highest)
        fraction = self.options.scale_down_gap_fraction
        if fraction > 0:
            gap = current - highest
            alone = self.sizer.intake.endpoint_share is None
            if gap <= LAST_STEP and (alone or SHARED_POOL_PER_STEP * gap <= current):
                # Halving a gap of two is two changes and a dwell for one replica the window has
                # vouched for throughout. Where the endpoint is shared, only from a large pool: a
                # gateway balancing by load moves the step's traffic onto the siblings (on the
                # matrix a sibling missed its ITL and scaled up; docs/local-agent.md).
                wanted, how = highest, "the rest of the way"
            else:
                wanted, how = max(highest, current - math.ceil(fraction * gap)), f"{fraction:.0%} of the way"
            detail = f"{proposal.detail}; {how} to the window's highest recommendation {highest}"
            return Proposal(wanted, proposal.reason, detail), True
        return proposal, False


def _fewest(count: int, floor: int, safe: Callable[[int], bool]) -> int:
    """Down from ``count`` one replica at a time while the next count is safe, not below ``floor``."""
    while count - 1 >= floor and safe(count - 1):
        count -= 1
    return count
