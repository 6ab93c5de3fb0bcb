"""The local agent's planning core: observations in, replica targets (and demand curves) out.

Two loops share one state:

- **throughput (predictive)**, every ``throughput_interval_s``: forecast the request rate over the
  time a new replica needs to start plus one interval, size every pool with the capacity model at
  the forecast's *upper* quantile and the observed length distribution. Its result is the floor.
- **load (reactive)**, every tick: react to what the engines show now (queues, KV use, observed or
  estimated TTFT/ITL), one replica at a time, and scale down only when the survivors can absorb
  ``N/(N-1)`` of the load within the SLA (consolidation-aware).

Time is an input (``now_s``); nothing here does I/O, so the same agent runs live, in the simulator
and in tests. The weaknesses of the public anchor that this code answers are named where handled.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleet_planner.perf import PerfModel
from fleet_planner.perf.capacity import REFERENCE_INPUT_TOKENS, REFERENCE_OUTPUT_TOKENS, replica_rps
from fleet_planner.planning import DeploymentSpec, Distribution, PoolObservation, PoolRole
from local_agent.forecast import make_predictor
from local_agent.forecast.base import Forecast, normal_z
from local_agent.models import AgentDecision, DecisionReason, PoolDecision, RuntimeLimits
from local_agent.perf_correction import CorrectedPerfModel
from local_agent.sizing import (
    Calibration,
    EngineModel,
    LoadEstimate,
    PoolCurve,
    cheapest_pair,
    decode_curve,
    deployment_curves,
    kv_transfer_ms,
    prefill_curve,
    replicas_for,
)

R = DecisionReason
RECENT_DECISIONS = 1024
MAX_PREFIX_HIT = 0.9  # sizing never counts on more prefix-cache reuse than this
EXPECTATION_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)  # equal-mass points of the forecast's distribution


class AgentOptions(BaseModel):
    """Tunables of one agent (the ``planner:`` options of a scenario or the agent's config file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["throughput", "load", "both"] = "both"
    throughput_interval_s: float = Field(default=180.0, gt=0, allow_inf_nan=False)
    target: Literal["throughput", "latency", "sla"] = "sla"  # what the reactive loop watches
    predictor: str = "kalman"
    predictor_options: dict = Field(default_factory=dict)
    forecast_quantile: float = Field(default=0.9, ge=0.5, lt=1.0)
    target_attainment: float = Field(default=0.99, gt=0, le=1.0)
    headroom: float = Field(default=1.0, ge=1.0, le=3.0, allow_inf_nan=False, description="plan for rate x headroom")
    scale_down_grace_s: float = Field(
        default=300.0, ge=0, allow_inf_nan=False, description="no scale-down this long after a scale-up"
    )
    max_step_up: int | None = Field(default=None, ge=1)
    max_step_down: int = Field(default=1, ge=1)
    idle_after_s: float = Field(default=120.0, gt=0, allow_inf_nan=False, description="no admissions this long = idle")
    queue_tokens_per_replica: float = Field(
        default=16384, gt=0, description="latency target: prefill backlog that adds a replica"
    )
    kv_high: float = Field(default=0.85, gt=0, le=1.0, description="latency target: KV use that adds a decode replica")
    kv_low: float = Field(default=0.5, gt=0, le=1.0)
    length_windows: int = Field(default=20, ge=1, description="observation windows pooled for the length distribution")
    gpu_budget: int | None = Field(default=None, ge=0, description="local GPU budget for the whole deployment")
    online_correction: bool = Field(default=True, description="correct decode pools' profiles from observed iterations")
    advisory: bool = False


class _PoolState:
    __slots__ = ("last_scale_up_s", "predictive", "target")

    def __init__(self, target: int):
        self.last_scale_up_s = -math.inf
        self.target = target
        self.predictive = 0


class LocalAgent:
    """Plans one deployment. ``step(now, observations)`` is called every tick (e.g. 5-30 s)."""

    def __init__(
        self,
        spec: DeploymentSpec,
        models: Mapping[PoolRole, EngineModel],
        options: AgentOptions,
        tick_s: float,
        endpoint_share: float | None = None,
    ):
        """``endpoint_share``: for a deployment sharing its endpoint, the share of the endpoint's
        rate it plans for (see ``local_agent.sizing.shares.endpoint_shares``)."""
        self.spec = spec
        self.endpoint_share = endpoint_share
        # Decode pools learn from what their engines do: a regression of measured iteration time
        # (per-token latency) on batch and KV tokens corrects the profile online.
        self.models = {
            role: CorrectedPerfModel(model)
            if options.online_correction and role == "decode" and isinstance(model, PerfModel)
            else model
            for role, model in models.items()
        }
        self.options = options
        self.tick_s = tick_s
        self.limits = RuntimeLimits(gpu_budget=options.gpu_budget, advisory=options.advisory)
        self.entry_role: PoolRole = "agg" if spec.mode == "agg" else "prefill"
        self.exit_role: PoolRole = "agg" if spec.mode == "agg" else "decode"
        self.predictor = make_predictor(
            options.predictor, interval_s=tick_s, quantile=options.forecast_quantile, **options.predictor_options
        )
        self.pools = {role: _PoolState(pool.initial_replicas) for role, pool in spec.pools.items()}
        self._lengths: deque[tuple[int, Distribution, Distribution]] = deque(maxlen=options.length_windows)
        # (weight, prefix-cache hit rate) of recent entry-pool windows: prefill sizing discounts reuse.
        self._prefix_hits: deque[tuple[int, float]] = deque(maxlen=options.length_windows)
        self._last_throughput_s = -math.inf
        self._last_admission_s: float | None = None
        self._started_s: float | None = None
        self.curves: dict[PoolRole, PoolCurve] = {}
        self.curves_low: dict[PoolRole, PoolCurve] = {}
        self.expected: dict[PoolRole, list[float]] = {}
        self._forecast = None
        # Recent decisions only (bounded: a live agent runs for months; telemetry keeps history).
        self.decisions: deque[AgentDecision] = deque(maxlen=RECENT_DECISIONS)

    # ---- limits ----------------------------------------------------------------------------
    def set_limits(self, limits: RuntimeLimits) -> None:
        """Operator change (control endpoint): budget, per-pool min/max, advisory mode."""
        for role in list(limits.min_replicas) + list(limits.max_replicas):
            if role not in self.spec.pools:
                raise ValueError(f"deployment {self.spec.name} has no {role} pool")
        self.limits = limits

    def _bounds(self, role: PoolRole) -> tuple[int, int]:
        pool = self.spec.pools[role]
        low = self.limits.min_replicas.get(role, pool.min_replicas)
        high = min(self.limits.max_replicas.get(role, pool.max_replicas), pool.max_replicas)
        return min(low, high), high

    # ---- observation intake ------------------------------------------------------------------
    def _intake(self, now_s: float, pools: dict[PoolRole, PoolObservation]) -> float | None:
        """Feed the predictor with the *admitted* rate (not completions: under backpressure
        completions under-count demand). Missing metrics are None, never 0."""
        entry = pools.get(self.entry_role)
        if entry is None or entry.admitted is None:
            self.predictor.observe(None)
            self._last_admission_s = now_s  # unknown traffic is not zero traffic: never counts as idle
            return None
        shared = self.endpoint_share is not None and entry.endpoint_admitted is not None
        if shared:
            rate = entry.endpoint_admitted * self.endpoint_share / entry.window_s
        else:
            rate = entry.admitted / entry.window_s
        self.predictor.observe(rate)
        if self._started_s is None:
            self._started_s = now_s
        if entry.admitted > 0 or (shared and entry.endpoint_admitted > 0):
            # A deployment sharing its endpoint is busy while the endpoint is (scaled to zero, it
            # gets no traffic of its own), and sizes on the endpoint's lengths until it has its own.
            self._last_admission_s = now_s
            if entry.admitted > 0 and entry.input_tokens is not None and entry.output_tokens is not None:
                self._lengths.append((entry.admitted, entry.input_tokens, entry.output_tokens))
            elif shared and entry.endpoint_input_tokens is not None and entry.endpoint_output_tokens is not None:
                self._lengths.append(
                    (entry.endpoint_admitted, entry.endpoint_input_tokens, entry.endpoint_output_tokens)
                )
        self._learn(pools)
        if entry.prefix_hit_rate is not None:
            self._prefix_hits.append((max(entry.admitted, 1), entry.prefix_hit_rate))
        return rate

    def _learn(self, pools: dict[PoolRole, PoolObservation]) -> None:
        """Feed the decode model one window-averaged iteration: the per-token latency requests saw
        (``itl_ms.mean``) at the window's mean running batch per replica and mean context."""
        model = self.models.get("decode")
        obs = pools.get("decode")
        if not isinstance(model, CorrectedPerfModel) or obs is None or obs.itl_ms is None or not obs.ready:
            return
        if obs.scheduled_tokens_per_s is None or not self._lengths:
            return
        batch = obs.scheduled_tokens_per_s * obs.itl_ms.mean / 1000.0 / obs.ready
        _, inputs, outputs = self._lengths[-1]
        if batch >= 1.0 and obs.itl_ms.count >= 10:
            model.observe_iteration("decode", obs.itl_ms.mean, batch, inputs.mean + outputs.mean / 2)

    def _prefix_hit_rate(self) -> float:
        """Admission-weighted prefix-cache hit rate of recent windows (0 when never reported),
        capped at ``MAX_PREFIX_HIT``. (The anchor ignored prefix-cache reuse and oversized prefill.)"""
        if not self._prefix_hits:
            return 0.0
        total = sum(weight for weight, _ in self._prefix_hits)
        pooled = sum(weight * hit for weight, hit in self._prefix_hits) / total
        return min(max(pooled, 0.0), MAX_PREFIX_HIT)

    def _length_summary(self) -> tuple[Distribution, Distribution] | None:
        """Count-weighted pool of recent windows' length summaries (tail-aware: keeps p90/p99)."""
        if not self._lengths:
            return None
        weights = np.array([count for count, _, _ in self._lengths], dtype=float)
        weights /= weights.sum()

        def pooled(index: int) -> Distribution:
            rows = [entry[index] for entry in self._lengths]
            return Distribution(
                count=int(sum(r.count for r in rows)),
                mean=float(np.dot(weights, [r.mean for r in rows])),
                p50=float(np.dot(weights, [r.p50 for r in rows])),
                p90=float(np.dot(weights, [r.p90 for r in rows])),
                p99=float(max(r.p99 for r in rows)),
            )

        return pooled(1), pooled(2)

    # ---- sizing ----------------------------------------------------------------------------
    def _curves_at(self, rate: float, lengths: tuple[Distribution, Distribution]) -> dict[PoolRole, PoolCurve]:
        load = LoadEstimate.from_distribution(max(rate, 0.0), lengths[0], lengths[1], samples=400)
        calibration = Calibration(load_factor=self.options.headroom)
        hit = self._prefix_hit_rate()
        if hit <= 0.0:
            return deployment_curves(self.spec, self.models, load, calibration=calibration)
        # Prefix-cache reuse: only the uncached part of a prompt is computed, but decode (and the
        # KV transfer to it) still holds the whole context. Prefill is sized with cost-equivalent
        # shorter prompts, decode with the full ones.
        if self.spec.mode == "agg":
            # The agg curve has one sample for both sides, so reuse enters as a cheaper prefill
            # (``prefill_factor``) instead: approximate, since it also discounts the per-iteration
            # overhead and chunk counts stay those of full prompts.
            model = self.models["agg"]
            _, ratio = _prefix_effective_inputs(model, load.input_tokens, hit)
            calibration = calibration.model_copy(update={"prefill_factor": calibration.prefill_factor * ratio})
            return deployment_curves(self.spec, self.models, load, calibration=calibration)
        model = self.models["prefill"]
        effective, _ = _prefix_effective_inputs(model, load.input_tokens, hit)
        order = np.argsort(effective, kind="stable")
        eff_sorted, full_sorted = effective[order], load.input_tokens[order]

        def transfer_ms(inputs: np.ndarray) -> np.ndarray:  # the whole prompt's KV moves to decode
            return kv_transfer_ms(np.interp(inputs, eff_sorted, full_sorted))

        reduced = LoadEstimate(rate_rps=load.rate_rps, input_tokens=effective, output_tokens=load.output_tokens)
        return {
            "prefill": prefill_curve(
                model,
                reduced,
                self.spec.sla,
                max_replicas=self.spec.pools["prefill"].max_replicas,
                max_batch_tokens=self.spec.pools["prefill"].max_batch_tokens,
                kv_transfer_ms_fn=transfer_ms,
                calibration=calibration,
            ),
            "decode": decode_curve(
                self.models["decode"],
                load,
                self.spec.sla,
                max_replicas=self.spec.pools["decode"].max_replicas,
                max_num_seqs=self.spec.pools["decode"].max_num_seqs,
                calibration=calibration,
            ),
        }

    def _sized(self, curves: dict[PoolRole, PoolCurve]) -> dict[PoolRole, int]:
        """Fewest replicas (GPUs) reaching the attainment target; in a disaggregated deployment
        both pools must do their part, so the product of their attainments counts."""
        target = self.options.target_attainment
        if self.spec.mode == "agg":
            return {"agg": replicas_for(curves["agg"], target)}
        prefill, decode = cheapest_pair(
            curves["prefill"],
            curves["decode"],
            target,
            prefill_gpus=self.spec.pools["prefill"].gpus_per_replica,
            decode_gpus=self.spec.pools["decode"].gpus_per_replica,
        )
        return {"prefill": prefill, "decode": decode}

    def _throughput_loop(
        self, now_s: float, lengths: tuple[Distribution, Distribution] | None
    ) -> dict[PoolRole, int] | None:
        if lengths is None:
            return None
        startup = max(pool.startup_s for pool in self.spec.pools.values())
        steps = max(1, math.ceil((startup + self.options.throughput_interval_s) / self.tick_s))
        forecast = self.predictor.predict_max(steps)
        self._forecast = forecast
        self.curves = self._curves_at(forecast.mean, lengths)
        self.curves_low = self._curves_at(forecast.upper, lengths)
        self.expected = self._expected_attainment(forecast, lengths)
        return self._sized(self.curves_low)

    def _expected_attainment(
        self, forecast: Forecast, lengths: tuple[Distribution, Distribution]
    ) -> dict[PoolRole, list[float]]:
        """Per pool, attainment for each replica count averaged over the forecast's uncertainty
        (its Gaussian, read from mean and upper quantile, at ``EXPECTATION_QUANTILES``): what a
        count is worth on average, which is what an arbiter weighing pools against each other
        needs. (The mean's curve alone ignores the risk; the upper's alone counts a one-in-ten
        load as certain, and in a shortage would take GPUs that others need for sure.)"""
        spread = (forecast.upper - forecast.mean) / normal_z(forecast.quantile)
        if spread <= 0:
            return {role: list(curve.attainment) for role, curve in self.curves.items()}
        total: dict[PoolRole, np.ndarray] = {}
        for quantile in EXPECTATION_QUANTILES:
            rate = forecast.mean + normal_z(quantile) * spread
            curves = self._curves_at(rate, lengths) if quantile != 0.5 else self.curves
            for role, curve in curves.items():
                total[role] = total.get(role, 0.0) + np.asarray(curve.attainment, dtype=float)
        return {role: list(values / len(EXPECTATION_QUANTILES)) for role, values in total.items()}

    # ---- the step ---------------------------------------------------------------------------
    def step(self, now_s: float, observations: list[PoolObservation] | None) -> AgentDecision:
        pools = {obs.role: obs for obs in observations or [] if obs.deployment == self.spec.name}
        observed_rate = self._intake(now_s, pools) if pools else None
        if not pools:
            self.predictor.observe(None)
            self._last_admission_s = now_s  # unknown traffic is not zero traffic: never counts as idle
        lengths = self._length_summary()
        run_throughput = (
            self.options.mode != "load" and now_s - self._last_throughput_s >= self.options.throughput_interval_s - 1e-9
        )
        if run_throughput:
            sized = self._throughput_loop(now_s, lengths)
            self._last_throughput_s = now_s
            if sized is not None:
                for role, count in sized.items():
                    self.pools[role].predictive = count
        decisions = [
            self._decide_pool(role, now_s, pools, run_throughput, lengths, observed_rate) for role in self.spec.pools
        ]
        decisions = self._apply_budget(decisions)
        decisions = [
            d.model_copy(update={"replica_capacity_rps": self._replica_rps(d.role, lengths)}) for d in decisions
        ]
        for decision in decisions:
            state = self.pools[decision.role]
            if decision.target > state.target:
                state.last_scale_up_s = now_s
            if not self.limits.advisory:
                state.target = decision.target
        forecast = self._forecast
        record = AgentDecision(
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
        )
        self.decisions.append(record)
        return record

    def _replica_rps(self, role: PoolRole, lengths: tuple[Distribution, Distribution] | None) -> float:
        """One replica's nominal request rate at the observed mean lengths: lets an arbiter weigh
        this deployment's capacity against others serving the same endpoint."""
        mean_in = lengths[0].mean if lengths else REFERENCE_INPUT_TOKENS
        mean_out = lengths[1].mean if lengths else REFERENCE_OUTPUT_TOKENS
        return replica_rps(self.models[role], role, max(mean_in, 1.0), max(mean_out, 1.0), self.spec.sla.itl_ms)

    def targets(self) -> dict[PoolRole, int]:
        return {role: state.target for role, state in self.pools.items()}

    def granted(self, role: PoolRole, replicas: int) -> None:
        """An arbiter (global planner, gatekeeper) decided this pool's count: plan from there."""
        self.pools[role].target = replicas

    def _idle(self, now_s: float, pools: dict[PoolRole, PoolObservation]) -> bool:
        """Traffic stopped: nothing admitted for ``idle_after_s`` and nothing queued. (The anchor
        skipped its tick on zero traffic and never scaled down.)"""
        if self._started_s is None or now_s - self._started_s < self.options.idle_after_s:
            return False
        last = self._last_admission_s
        if last is not None and now_s - last < self.options.idle_after_s:
            return False
        queued = sum((obs.queued_requests or 0) for obs in pools.values())
        return queued == 0

    def _decide_pool(
        self,
        role: PoolRole,
        now_s: float,
        pools: dict[PoolRole, PoolObservation],
        run_throughput: bool,
        lengths: tuple[Distribution, Distribution] | None,
        observed_rate: float | None,
    ) -> PoolDecision:
        state = self.pools[role]
        low, high = self._bounds(role)
        current = state.target
        obs = pools.get(role)
        estimate = _estimates(self.curves.get(role), current)
        if obs is None:
            return self._finish(
                role, current, current, current, R.NO_DATA, "no observation for this pool", estimate, low, high
            )
        if self._idle(now_s, pools):
            return self._finish(
                role,
                current,
                low,
                low,
                R.IDLE_TO_MIN,
                "no traffic: scale to the minimum",
                estimate,
                low,
                high,
                enforce_steps=False,
            )

        wanted, reason, detail = current, R.HOLD, ""
        floor = state.predictive if self.options.mode != "load" else 0
        # The forecast's need is asked for until granted: an arbiter that could not grant it at
        # once (GPUs still draining) must not see the ask vanish at the next tick.
        if self.options.mode != "load" and (floor > current or (floor != current and run_throughput)):
            wanted = floor
            reason = R.PREDICTIVE_UP if floor > current else R.PREDICTIVE_DOWN
            detail = f"forecast needs {floor} replicas"

        if self.options.mode != "throughput":
            reactive = self._reactive(role, obs, current, obs.starting, observed_rate, lengths)
            if reactive is not None:
                r_wanted, r_reason, r_detail = reactive
                if r_wanted > wanted or (r_wanted < wanted and r_wanted >= floor and wanted == current):
                    wanted, reason, detail = r_wanted, r_reason, r_detail

        if wanted < current:
            wanted, reason, detail = self._guard_scale_down(
                role, now_s, obs, current, wanted, reason, detail, observed_rate, lengths, floor
            )
        if wanted > current and obs.pending > 0:
            # Replicas already asked for cannot be placed: asking for more changes nothing (the
            # anchor got stuck here); hold at what is placed + asked and keep planning the rest.
            wanted, reason, detail = current, R.UNSCHEDULABLE, f"{obs.pending} replicas pending (no free GPUs)"
        return self._finish(role, current, wanted, wanted, reason, detail, estimate, low, high)

    def _reactive(
        self,
        role: PoolRole,
        obs: PoolObservation,
        current: int,
        starting: int,
        observed_rate: float | None,
        lengths: tuple[Distribution, Distribution] | None,
    ) -> tuple[int, DecisionReason, str] | None:
        """±1 replica from what the engines show now; nothing while added replicas still start
        (they will absorb the load) — but never a skipped tick."""
        ready = max(obs.ready, 1)
        sla = self.spec.sla
        up: tuple[DecisionReason, str] | None = None
        target = self.options.target
        if target == "sla":
            if role in ("prefill", "agg") and obs.ttft_ms is not None and obs.ttft_ms.p90 > sla.ttft_ms:
                up = (R.REACTIVE_SLA, f"p90 TTFT {obs.ttft_ms.p90:.0f} ms > {sla.ttft_ms:.0f} ms")
            if role in ("decode", "agg") and obs.itl_ms is not None and obs.itl_ms.p90 > sla.itl_ms:
                up = (R.REACTIVE_SLA, f"p90 ITL {obs.itl_ms.p90:.1f} ms > {sla.itl_ms:.1f} ms")
        if target in ("sla", "latency") and up is None:
            if role in ("prefill", "agg") and obs.queued_prefill_tokens is not None:
                backlog = obs.queued_prefill_tokens / ready
                if backlog > self.options.queue_tokens_per_replica:
                    up = (R.REACTIVE_QUEUE, f"prefill backlog {backlog:.0f} tokens per replica")
            if role in ("decode", "agg") and obs.active_kv_tokens is not None and obs.kv_capacity_tokens:
                usage = obs.active_kv_tokens / obs.kv_capacity_tokens
                if usage > self.options.kv_high:
                    up = (R.REACTIVE_KV, f"KV use {usage:.0%}")
        if target == "throughput" and observed_rate is not None and lengths is not None and up is None:
            sized = self._sized(self._curves_at(observed_rate, lengths))[role]
            if sized > current:
                up = (R.REACTIVE_SLA, f"observed load needs {sized} replicas")
        if up is not None:
            if starting > 0:
                return None
            step = self.options.max_step_up or 1
            return current + step, up[0], up[1]
        if observed_rate is not None and lengths is not None and current > 0:
            return current - 1, R.REACTIVE_DOWN, "load allows one replica fewer"
        return None

    def _guard_scale_down(
        self,
        role: PoolRole,
        now_s: float,
        obs: PoolObservation,
        current: int,
        wanted: int,
        reason: DecisionReason,
        detail: str,
        observed_rate: float | None,
        lengths: tuple[Distribution, Distribution] | None,
        floor: int,
    ) -> tuple[int, DecisionReason, str]:
        state = self.pools[role]
        if now_s - state.last_scale_up_s < self.options.scale_down_grace_s:
            return current, R.GRACE_PERIOD, "replicas were just added"
        if obs.starting > 0:
            return current, R.HOLD, "replicas still starting"
        # Consolidation: after removing replicas the survivors carry current/wanted times the
        # load each. Check at the larger of observed and forecast upper load (the 2<->1
        # oscillation came from ignoring this).
        forecast = self._forecast
        rate = max(observed_rate or 0.0, forecast.upper if forecast else 0.0)
        if lengths is not None and wanted > 0:
            curves = self._curves_at(rate, lengths)
            survivors = dict(self.targets())
            survivors[role] = wanted
            if not self._meets(curves, survivors):
                return current, R.CONSOLIDATION_REFUSED, f"{wanted} replicas could not absorb {rate:.2f} req/s"
        if role in ("decode", "agg") and obs.active_kv_tokens is not None and obs.kv_capacity_tokens and wanted > 0:
            per_replica_capacity = obs.kv_capacity_tokens / max(1, obs.ready + obs.draining)
            if obs.active_kv_tokens > self.options.kv_low * per_replica_capacity * wanted:
                return current, R.CONSOLIDATION_REFUSED, "survivors' KV cache would be too full"
        if wanted == 0 and rate > 0:
            return current, R.CONSOLIDATION_REFUSED, "traffic is not zero"
        return wanted, reason, detail

    def _meets(self, curves: dict[PoolRole, PoolCurve], replicas: dict[PoolRole, int]) -> bool:
        """Whether these counts reach the target share of what is reachable at all (prompts too
        long for the SLA even on an idle engine lower every curve's ceiling)."""
        attainment = reachable = 1.0
        for role, curve in curves.items():
            values = curve.attainment
            attainment *= values[min(replicas[role], len(values) - 1)]
            reachable *= curve.ceiling
        return attainment >= self.options.target_attainment * reachable

    def _finish(
        self,
        role: PoolRole,
        current: int,
        wanted: int,
        target: int,
        reason: DecisionReason,
        detail: str,
        estimate: tuple[float | None, float | None],
        low: int,
        high: int,
        enforce_steps: bool = True,
    ) -> PoolDecision:
        if enforce_steps:
            if self.options.max_step_up is not None and target > current + self.options.max_step_up:
                target, reason = current + self.options.max_step_up, R.STEP_CAPPED
            if target < current - self.options.max_step_down:
                target, reason = current - self.options.max_step_down, R.STEP_CAPPED
        if target > high:
            target, reason = high, R.MAX_CAPPED
        if target < low:
            target, reason = low, R.MIN_FLOOR
        curve = self.curves.get(role)
        curve_low = self.curves_low.get(role)
        return PoolDecision(
            role=role,
            current=current,
            wanted=max(0, wanted),
            target=max(0, target),
            reason=reason,
            detail=detail,
            estimated_ttft_ms=estimate[0],
            estimated_itl_ms=estimate[1],
            curve=self.expected.get(role, list(curve.attainment)) if curve else [],
            curve_low=list(curve_low.attainment) if curve_low else [],
        )

    def _apply_budget(self, decisions: list[PoolDecision]) -> list[PoolDecision]:
        """Local GPU budget: shrink the *increases* proportionally so the total fits; never turn a
        requested increase into a decrease, never exceed a pool's maximum."""
        budget = self.limits.gpu_budget
        if budget is None:
            return decisions
        gpus = {d.role: self.spec.pools[d.role].gpus_per_replica for d in decisions}
        total = sum(d.target * gpus[d.role] for d in decisions)
        if total <= budget:
            return decisions
        base = {d.role: min(d.target, d.current) for d in decisions}
        base_gpus = sum(base[r] * gpus[r] for r in base)
        while base_gpus > budget:
            # The budget is below what is already held (lowered at run time): a cap holds anyway,
            # so the largest holder gives back one replica at a time (scale-downs drain).
            role = max(base, key=lambda r: base[r] * gpus[r])
            base[role] -= 1
            base_gpus -= gpus[role]
        extra = {d.role: d.target - base[d.role] for d in decisions}
        room = max(0, budget - base_gpus)
        want = sum(extra[r] * gpus[r] for r in extra)
        scale = room / want if want else 0.0
        adjusted = []
        for d in decisions:
            granted = base[d.role] + int(math.floor(extra[d.role] * scale))
            if granted != d.target:
                d = d.model_copy(
                    update={"target": granted, "reason": R.BUDGET_CAPPED, "detail": f"local budget {budget} GPUs"}
                )
            adjusted.append(d)
        return adjusted


def _prefix_effective_inputs(model: EngineModel, inputs: np.ndarray, hit: float) -> tuple[np.ndarray, float]:
    """Prompt lengths whose prefill costs what the uncached part of each prompt costs when the
    first ``hit`` share is cached (``V(L) - V(hit L)``, ``V`` = TTFT minus overhead: later tokens
    attend to the cached ones, so this is more than ``V((1 - hit) L)``), and the ratio of total
    prefill cost with reuse to without. Prompts beyond the engine's context keep their length
    (they are still rejected)."""
    overhead = model.prefill_overhead_ms
    top = float(inputs.max())
    grid = np.unique(np.concatenate(([1.0], np.geomspace(1.0, max(top, 2.0), 256))))
    costs = np.maximum.accumulate(np.maximum(np.asarray(model.ttft_ms(grid), dtype=float) - overhead, 0.0))
    full = np.interp(inputs, grid, costs)
    uncached = np.maximum(full - np.interp(hit * inputs, grid, costs), 0.0)
    effective = np.clip(np.interp(uncached, costs, grid), 1.0, inputs)
    if model.max_context:
        effective = np.where(inputs > model.max_context, inputs, effective)
    ratio = float(uncached.sum() / full.sum()) if full.sum() > 0 else 1.0
    return effective, max(ratio, 1e-3)


def _estimates(curve: PoolCurve | None, replicas: int) -> tuple[float | None, float | None]:
    if curve is None or not curve.replicas:
        return None, None
    index = min(replicas, len(curve.replicas) - 1)
    return curve.ttft_p90_ms[index], curve.itl_p90_ms[index]
