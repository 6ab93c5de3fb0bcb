"""The local agent's planning core: observations in, replica targets (and demand curves) out.

``LocalAgent.step(AgentInput) -> AgentEffects`` composes the concerns in
:mod:`local_agent.decide`:

- **intake** (``Intake``): the admitted rate feeds the forecast; lengths, prefix-cache reuse and
  the arrivals' burstiness are kept; the decode model learns from observed iterations;
- **predictive** (``Sizer.forecast_sizing``), every ``throughput_interval_s``: size every pool with
  the capacity model at the forecast's *upper* quantile over start-up plus one interval. Its
  result is the floor;
- **reactive** (``reactive``), every tick: ±1 replica from what the engines show now;
- **scale-down guard** (``ScaleDownGuard``): grace after a scale-up, consolidation (survivors carry
  ``N/(N-1)``), remembered SLA misses and near misses, a dwell between steps, a stabilisation
  window: the descent from above;
- **limits and budget** (``limits``): step caps, min/max, the local GPU budget.

Time is an input; nothing here does I/O, so the same agent runs live, in the simulator and in
tests. The weaknesses of the public anchor that this code answers are named where handled.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping

from fleet_planner.knobs import EngineKnobs
from fleet_planner.planning import DeploymentSpec, PoolObservation, PoolRole
from local_agent.decide.elapsed import Elapsed
from local_agent.decide.guard import MISSED_ATTAINMENT, ScaleDownGuard
from local_agent.decide.intake import Intake, Lengths
from local_agent.decide.limits import apply_budget, bounds, capped
from local_agent.decide.options import AgentOptions
from local_agent.decide.reactive import Proposal, near_miss, pressure, reactive, sla_breach
from local_agent.decide.sizer import Sizer
from local_agent.forecast import Forecast, make_predictor
from local_agent.knobs import KnobTuner
from local_agent.models import AgentDecision, AgentEffects, AgentInput, DecisionReason, PoolDecision, RuntimeLimits
from local_agent.sizing import EngineModel

__all__ = ["AgentOptions", "LocalAgent"]

R = DecisionReason
log = logging.getLogger(__name__)
RECENT_DECISIONS = 1024


class _PoolState:
    __slots__ = ("asked_from", "predictive", "refusals", "refused", "refused_ask", "room_answered", "target")

    def __init__(self, target: int):
        self.target = target
        self.predictive = 0
        self.refused = False  # the arbiter granted fewer replicas than the agent last asked for
        self.asked_from = target  # the count the last ask was made from
        self.refused_ask: int | None = None  # an ask the arbiter refused outright (granted none of it)
        self.refusals = 0  # how many rounds refused this pool part of its ask
        # The partner's refusals up to this count were answered before the room this pool freed
        # for it was free (see ``LocalAgent._room_for_a_starved_partner``).
        self.room_answered: int | None = None


class LocalAgent:
    """Plans one deployment. ``step(AgentInput)`` is called every tick (e.g. 5-30 s)."""

    def __init__(
        self,
        spec: DeploymentSpec,
        models: Mapping[PoolRole, EngineModel],
        options: AgentOptions,
        tick_s: float,
        endpoint_share: float | None = None,
        starting: Mapping[PoolRole, int] | None = None,
    ):
        """``endpoint_share``: for a deployment sharing its endpoint, the share of the endpoint's
        rate it plans for (see ``local_agent.sizing.shares.endpoint_shares``); ``starting``: each
        pool's count it plans from (what already runs when it adopts a pool; default ``initial``)."""
        self.spec = spec
        self.options = options
        self.tick_s = tick_s
        self.limits = RuntimeLimits(gpu_budget=options.gpu_budget, advisory=options.advisory)
        self.entry_role: PoolRole = "agg" if spec.mode == "agg" else "prefill"
        self.predictor = make_predictor(
            options.predictor, interval_s=tick_s, quantile=options.forecast_quantile, **options.predictor_options
        )
        self.elapsed = Elapsed(tick_s)
        trend = None
        if options.guard_predictor is not None:
            trend = make_predictor(options.guard_predictor, interval_s=tick_s, quantile=options.forecast_quantile)
        self.intake = Intake(options, self.predictor, self.entry_role, endpoint_share, self.elapsed, trend)
        self.sizer = Sizer(spec, models, options, self.intake)
        self.guard = ScaleDownGuard(options, self.sizer, list(spec.pools), self.elapsed)
        self.knob_tuner = KnobTuner(spec, options.knob_interval_s, self.elapsed)
        starting = starting or {}
        self.pools = {role: _PoolState(starting.get(role, pool.initial_replicas)) for role, pool in spec.pools.items()}
        self._last_throughput_s = -float("inf")
        # Recent decisions only (bounded: a live agent runs for months; telemetry keeps history).
        self.decisions: deque[AgentDecision] = deque(maxlen=RECENT_DECISIONS)

    @property
    def models(self) -> dict[PoolRole, EngineModel]:
        return self.sizer.models

    # ---- limits and arbitration --------------------------------------------------------------
    def set_limits(self, limits: RuntimeLimits) -> None:
        """Operator change (control endpoint): budget, per-pool min/max, advisory mode."""
        for role in list(limits.min_replicas) + list(limits.max_replicas):
            if role not in self.spec.pools:
                raise ValueError(f"deployment {self.spec.name} has no {role} pool")
        self.limits = limits

    @property
    def endpoint_share(self) -> float | None:
        """The share of its endpoint's rate it plans for (None: alone); the planner tells it, live
        and in replay alike."""
        return self.intake.endpoint_share

    @endpoint_share.setter
    def endpoint_share(self, share: float | None) -> None:
        """A new share is planned for at the next step (its sizing runs then, not an interval later)."""
        if share != self.intake.endpoint_share and self.intake.endpoint_share is not None:
            self._last_throughput_s = -float("inf")
        self.intake.endpoint_share = share

    def targets(self) -> dict[PoolRole, int]:
        return {role: state.target for role, state in self.pools.items()}

    def granted(self, role: PoolRole, replicas: int) -> None:
        """An arbiter (global planner, gatekeeper) decided this pool's count: plan from there."""
        state = self.pools[role]
        state.refused = replicas < state.target
        state.refusals += int(state.refused)
        state.refused_ask = state.target if state.refused and replicas <= state.asked_from else None
        state.target = replicas

    # ---- the step ---------------------------------------------------------------------------
    def step(self, tick: AgentInput) -> AgentEffects:
        now_s = tick.now_s
        pools = {obs.role: obs for obs in tick.observations or [] if obs.deployment == self.spec.name}
        if pools:
            observed_rate = self.intake.observe(now_s, pools, self.sizer.models.get("decode"))
        else:
            observed_rate = None
            self.intake.unknown(now_s)
        lengths = self.intake.lengths()
        self.sizer.learn_prefill(pools.get("prefill"))
        self.sizer.learn_ttft(pools.get(self.entry_role), observed_rate, lengths)
        # The forecast as of now, once per step: the sizing, a scale-up under pressure and the
        # report to the planner all read it.
        forecast = self.sizer.forecast_now(self.predictor, self.tick_s) if self.options.mode != "load" else None
        run_throughput = forecast is not None and self.elapsed.reached(
            now_s, self._last_throughput_s, self.options.throughput_interval_s
        )
        if forecast is not None and run_throughput and lengths is not None:
            # The interval counts from the first sizing, which runs as soon as a window has
            # lengths: before it there is no floor and the reactive loop alone would shrink.
            self._last_throughput_s = now_s
            for role, count in self.sizer.forecast_sizing(forecast, lengths).items():
                self.pools[role].predictive = count
            if self.intake.trend is not None:
                self.sizer.trend_forecast = self.sizer.forecast_now(self.intake.trend, self.tick_s)
            if self._retune(now_s, lengths):  # size again with the knobs now in force
                for role, count in self.sizer.forecast_sizing(forecast, lengths).items():
                    self.pools[role].predictive = count
        run_throughput = run_throughput and lengths is not None
        decisions = [
            self._decide_pool(role, now_s, pools, run_throughput, lengths, observed_rate, forecast)
            for role in self.spec.pools
        ]
        decisions = apply_budget(self.spec, self.limits.gpu_budget, decisions)
        decisions = [
            d.model_copy(
                update={
                    "replica_capacity_rps": self.sizer.replica_rps(d.role, lengths),
                    "queued_requests": pools[d.role].queued_requests if d.role in pools else None,
                    "late_rps_per_replica": self.guard.late_per_replica(d.role, now_s),
                    **self._curves_after_misses(d, now_s, forecast),
                }
            )
            for d in decisions
        ]
        for decision in decisions:
            change = decision.target - self.pools[decision.role].target
            if change:
                self.guard.scaled(decision.role, now_s, 1 if change > 0 else -1)
            if not self.limits.advisory:
                self.pools[decision.role].asked_from = self.pools[decision.role].target
                self.pools[decision.role].target = decision.target
        # Nothing before the first sizing: there is no bid yet.
        current = forecast if self.sizer.forecast is not None else None
        record = self._record(now_s, run_throughput, observed_rate, current, lengths, decisions, pools)
        self.decisions.append(record)
        return AgentEffects(
            targets={} if record.advisory else {d.role: d.target for d in decisions},
            decision=record,
            curves={d.role: d.curve for d in decisions},
            knobs=self.knobs if self.options.tune_knobs and not record.advisory else {},
        )

    @property
    def knobs(self) -> dict[PoolRole, EngineKnobs]:
        """The engine knobs the agent sizes with (and, with ``tune_knobs``, asks the connector for)."""
        return dict(self.knob_tuner.knobs)

    def _retune(self, now_s: float, lengths: Lengths) -> bool:
        """Re-choose engine knobs at the forecast's upper rate; True when any changed."""
        forecast = self.sizer.forecast
        if not self.options.tune_knobs or forecast is None:
            return False
        changed = self.knob_tuner.retune(now_s, self.sizer, forecast.upper, lengths)
        self.spec = self.sizer.spec
        for role, choice in changed.items():
            log.info("%s/%s engine knobs -> %s", self.spec.name, role, choice.reason)
        return bool(changed)

    def _record(
        self,
        now_s: float,
        run_throughput: bool,
        observed_rate: float | None,
        forecast: Forecast | None,
        lengths: Lengths | None,
        decisions: list[PoolDecision],
        pools: dict[PoolRole, PoolObservation],
    ) -> AgentDecision:
        """``forecast`` is the one as of now, not the last sizing's (up to a throughput interval
        old): the planner checks bids and proves shortages against it (docs/global-planner.md,
        *Why a current forecast*)."""
        return AgentDecision(
            time_s=now_s,
            deployment=self.spec.name,
            tenant=self.spec.tenant,
            loop="throughput" if run_throughput else "load",
            observed_rps=observed_rate,
            forecast_rps=forecast.mean if forecast else None,
            forecast_upper_rps=forecast.upper if forecast else None,
            input_tokens_mean=lengths[0].mean if lengths else None,
            output_tokens_mean=lengths[1].mean if lengths else None,
            pools=decisions,
            advisory=bool(self.limits.advisory),
            arrival_scv=self.intake.arrival_scv(),
            ttft_factor=self.sizer.ttft.factor,
        )

    def _decide_pool(
        self,
        role: PoolRole,
        now_s: float,
        pools: dict[PoolRole, PoolObservation],
        run_throughput: bool,
        lengths: Lengths | None,
        observed_rate: float | None,
        forecast: Forecast | None,
    ) -> PoolDecision:
        current = self.pools[role].target
        obs = pools.get(role)
        if obs is None:
            return self._finish(role, current, Proposal(current, R.NO_DATA, "no observation for this pool"))
        if self.intake.idle(now_s, pools, self._idle_after_s):
            proposal = Proposal(
                bounds(self.spec, self.limits, role)[0], R.IDLE_TO_MIN, "no traffic: scale to the minimum"
            )
            return self._finish(role, current, proposal, enforce_steps=False)
        room = self._room_for_a_starved_partner(role, current, obs, pools)
        if room is not None:
            return self._finish(role, current, room, enforce_steps=False)
        relief = None
        if self.options.breach_relief > 0 and observed_rate is not None and lengths is not None:
            relief = functools.partial(self.sizer.p90_relief, role, observed_rate, lengths, obs.ready)
        transient = None
        if self.options.transient_backlog and not self.guard.recently_short(role, now_s):
            drain_s = self.sizer.backlog_drain_s(role, lengths, observed_rate, obs.ready)
            if drain_s is not None:
                transient = functools.partial(_cleared_within, drain_s, self.spec.pools[role].startup_s)
        pressed = pressure(
            role, obs, self.options, self.spec.sla, self.sizer.backlog_ttft_ms(role, lengths), relief, transient
        )
        self.guard.sla_window(
            role, now_s, obs.ready, self.intake.smoothed_rate(), missed=pressed.reason == R.REACTIVE_SLA
        )
        # A miss is remembered even where no replica is added for it (``breach_relief``).
        if (
            pressed.reason is not None
            or (self.options.target == "sla" and sla_breach(role, obs, self.spec.sla) is not None)
            or (self.options.near_miss and near_miss(role, obs, self.spec.sla) is not None)
        ):
            self.guard.missed(role, now_s, obs.ready, self.intake.smoothed_rate())

        proposal = Proposal(current, R.HOLD, "")
        floor = self.pools[role].predictive if self.options.mode != "load" else 0
        # The forecast's need is asked for until granted: an arbiter that could not grant it at
        # once (GPUs still draining) must not see the ask vanish at the next tick.
        if self.options.mode != "load" and (floor > current or (floor != current and run_throughput)):
            reason = R.PREDICTIVE_UP if floor > current else R.PREDICTIVE_DOWN
            proposal = Proposal(floor, reason, f"forecast needs {floor} replicas")
            if floor > current and self._reversal_not_needed(role):
                detail = f"forecast's upper needs {floor} replicas; {current} meet the target on average"
                proposal = Proposal(current, R.HOLD, detail)
        if self.options.mode != "throughput":
            react = reactive(role, obs, pressed, current, observed_rate, lengths, self.options, self.sizer)
            if react is not None and react.wanted > current:
                react = self._at_least_the_forecast(role, react, lengths, forecast)
            if react is not None and (
                react.wanted > proposal.wanted
                or (react.wanted < proposal.wanted and react.wanted >= floor and proposal.wanted == current)
            ):
                proposal = react
        recommendation = proposal.wanted
        if proposal.wanted < current:
            proposal, recommendation = self.guard.check(
                role,
                now_s,
                obs,
                current,
                proposal,
                floor,
                self.targets(),
                observed_rate,
                self.intake.smoothed_rate(),
                lengths,
            )
        if observed_rate is not None and lengths is not None:
            self.guard.recommend(role, now_s, recommendation)
        proposal, one_step = self.guard.stabilised(role, current, proposal)
        if proposal.wanted > current and obs.pending > 0:
            # Replicas already asked for cannot be placed: asking for more changes nothing (the
            # anchor got stuck here); hold at what is placed + asked and keep planning the rest.
            proposal = Proposal(current, R.UNSCHEDULABLE, f"{obs.pending} replicas pending (no free GPUs)")
        if pressed.detail and pressed.reason is None and proposal.wanted <= current:
            # A miss or a backlog that added nothing says so in the record.
            noted = f"not counted: {pressed.detail}"
            proposal = proposal._replace(detail=f"{proposal.detail}; {noted}" if proposal.detail else noted)
        return self._finish(role, current, proposal, enforce_steps=not one_step)

    def _reversal_not_needed(self, role: PoolRole) -> bool:
        """With ``reversing_up_at: expected``, whether a predictive scale-up of a pool whose last
        change was a scale-down is not needed: the counts meet the target on average over the
        forecast's uncertainty, so only a one-in-ten load would want it (an observed miss still
        scales up, through the reactive loop: without one, ``mode: throughput``, the upper rules)."""
        if self.options.reversing_up_at != "expected" or self.options.mode != "both":
            return False
        if self.guard.pools[role].last_direction >= 0:
            return False
        return self.sizer.meets_on_average(self.targets())

    @property
    def _idle_after_s(self) -> float:
        """How long no traffic must last before the pools go to their minimum: ``idle_after_s``,
        but never less than the slowest pool's start-up, which a return of the traffic would wait
        (the ski-rental rule: hold what is idle as long as bringing it back would cost). With 120 s,
        a fleet whose traffic began 165 s into the run released four replicas that take 398 s to
        start, just as it arrived: 23% served (a random scenario nobody tuned on)."""
        return max(self.options.idle_after_s, max(pool.startup_s for pool in self.spec.pools.values()))

    def _room_for_a_starved_partner(
        self, role: PoolRole, current: int, own: PoolObservation, pools: dict[PoolRole, PoolObservation]
    ) -> Proposal | None:
        """One replica fewer (not below the pool's minimum nor its last replica, and not while a
        release is still in flight) when a partner pool on the same GPU type has none ready or
        starting and is waiting for GPUs: replicas pending, or its last ask refused by an arbiter
        that refuses instead of queueing (the anchor's gatekeeper, ``fcfs``). A pair with one side
        empty serves nothing, and this pool may be what holds the GPUs. Without it a prefill pool
        that started on 16 of 17 GPUs left its decode pool (4 GPUs a replica) pending for the whole
        run under ``local``, and under ``fcfs`` two prefill pools that started on every GPU of
        their types had their decode partners refused for 15 minutes: no request completed (random
        scenarios nobody tuned on). Where it gives nothing back (at its last replica, or while a
        release drains) it holds: growing would take back GPUs the partner waits for. A refusal
        is a reason for one more replica back only if the partner asked after the last one was
        free: the round that grants this pool's cut answers the partner's ask before the replica
        has drained, so that refusal says nothing of the room (a random fleet at a 10 s interval,
        sweep seed 103 `s22`: prefill 4 -> 3 -> 2 in two rounds, where one replica made the room
        its decode partner was granted in the second)."""
        if current < own.ready + own.starting:
            return None
        mine = self.spec.pools[role]
        low = bounds(self.spec, self.limits, role)[0]
        for other, obs in pools.items():
            partner = self.spec.pools.get(other)
            if other == role or partner is None or partner.gpu_type != mine.gpu_type:
                continue
            refused = self.pools[other].refused
            if (obs.pending == 0 and not refused) or obs.ready + obs.starting > 0:
                continue
            freed = math.ceil(partner.gpus_per_replica / mine.gpus_per_replica)  # of ours, for one of its replicas
            # From the replicas that hold GPUs (the guard above keeps ``current`` at or above them):
            # dropping our own pending ones frees none (a prefill pool asking 6 with 2 running went
            # 6 -> 5 -> ... -> 1 a tick at a time, its decode partner pending all the while). Never
            # the last replica: a pair emptied on this side serves nothing either.
            wanted = max(low, 1, own.ready + own.starting - freed)
            wait = "its ask refused" if refused else f"{obs.pending} replica(s) pending"
            waiting = f"{other}: {wait} for {partner.gpu_type}, none ready"
            state, refusals = self.pools[role], self.pools[other].refusals
            answered_before = obs.pending == 0 and state.room_answered is not None and refusals <= state.room_answered
            if wanted < current and own.draining == 0 and not answered_before:
                state.room_answered = refusals + 1  # this round answers the partner before the replica drains
                return Proposal(wanted, R.UNSCHEDULABLE, f"makes room for {waiting}")
            if own.draining > 0 and state.room_answered is not None:
                state.room_answered = refusals + 1  # answered while the room still drains: stale too
            return Proposal(current, R.HOLD, f"waits for {waiting}")
        return None

    def _at_least_the_forecast(
        self, role: PoolRole, up: Proposal, lengths: Lengths | None, forecast: Forecast | None
    ) -> Proposal:
        """A scale-up under pressure goes at once to what the forecast as of now needs (at its
        upper quantile, by the corrected model), when that is more than the one replica the
        pressure adds: the pool is short now, and the throughput loop may not size again for
        minutes. On the supply-limited matrix cell ``day-clients d1+d4`` the starved prefill pool
        asked for one replica at 150 s while its forecast already read 11.4 req/s, and for the
        rest only at the next sizing, 240 s, a minute before the load doubled."""
        if forecast is None or self.sizer.forecast is None or lengths is None:
            return up
        need = self.sizer.sized(self.sizer.curves_at(forecast.upper, lengths))[role]
        if need <= up.wanted:
            return up
        return Proposal(need, up.reason, f"{up.detail}; the forecast as of now needs {need} replicas")

    def _curves_after_misses(
        self, decision: PoolDecision, now_s: float, forecast: Forecast | None
    ) -> dict[str, list[float]]:
        """The pool's curves with every count that would run at a load per replica it recently
        missed its SLA at (:meth:`ScaleDownGuard.bid_ceiling`, at the forecast as of now, the rate
        its bid is valued at) worth at most ``MISSED_ATTAINMENT``; empty when none is."""
        top = self.guard.bid_ceiling(decision.role, now_s, forecast.mean if forecast else None)
        if top <= 0 or not decision.curve:
            return {}
        return {
            name: [min(value, MISSED_ATTAINMENT) if 0 < k <= top else value for k, value in enumerate(curve)]
            for name, curve in (("curve", decision.curve), ("curve_low", decision.curve_low))
        }

    def _finish(self, role: PoolRole, current: int, proposal: Proposal, enforce_steps: bool = True) -> PoolDecision:
        low, high = bounds(self.spec, self.limits, role)
        target, reason = capped(proposal, current, low, high, self.options, enforce_steps)
        refused = self.pools[role].refused_ask
        if refused is not None and target > current and target >= refused:
            # An all-or-nothing gatekeeper (the anchor's) refused that ask outright: it may never fit,
            # so ask for half the step until one does (the bid's ``wanted`` still says the whole need).
            # Asking for all of it every tick left a pool at zero for a whole run behind the anchor's
            # gatekeeper while one replica fit (random fleets, seed 89 ``s20``).
            target = current + max(1, (refused - current) // 2)
            note = f"{refused} refused outright: asks {target}"
            proposal = proposal._replace(detail=f"{proposal.detail}; {note}" if proposal.detail else note)
        curve = self.sizer.curves.get(role)
        curve_low = self.sizer.curves_low.get(role)
        index = min(current, len(curve.replicas) - 1) if curve is not None and curve.replicas else None
        return PoolDecision(
            role=role,
            current=current,
            wanted=max(0, proposal.wanted),
            target=target,
            reason=reason,
            detail=proposal.detail,
            estimated_ttft_ms=curve.ttft_p90_ms[index] if curve is not None and index is not None else None,
            estimated_itl_ms=curve.itl_p90_ms[index] if curve is not None and index is not None else None,
            curve=self.sizer.expected.get(role, list(curve.attainment)) if curve else [],
            curve_low=list(curve_low.attainment) if curve_low else [],
        )


def _cleared_within(drain_s: Callable[[float], float], within_s: float, backlog: float) -> bool:
    """Whether the ready replicas clear ``backlog`` tokens per replica within ``within_s``."""
    return drain_s(backlog) <= within_s
