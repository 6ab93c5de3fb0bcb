"""The agent's capacity model: demand curves at a rate, the fewest replicas meeting the target,
and the predictive (throughput) loop's forecast sizing.

It wraps :mod:`local_agent.sizing` with what the agent learned online: the decode and prefill
profiles' corrections (``CorrectedPerfModel``), the arrivals' burstiness (``Calibration.arrival_scv``, a
G/G/c approximation instead of Poisson), the TTFT correction (``TtftCorrection``) and the
prefix-cache reuse of recent windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

from fleet_planner.perf import PerfModel
from fleet_planner.perf.capacity import REFERENCE_INPUT_TOKENS, REFERENCE_OUTPUT_TOKENS, replica_rps
from fleet_planner.planning import DeploymentSpec, PoolObservation, PoolRole
from local_agent.decide.intake import Intake, Lengths
from local_agent.decide.options import AgentOptions
from local_agent.forecast.base import Forecast, Predictor, normal_z
from local_agent.perf_correction import CorrectedPerfModel, TtftCorrection
from local_agent.sizing import (
    Calibration,
    CurveDetail,
    EngineModel,
    LoadEstimate,
    PoolCurve,
    cheapest_pair,
    deployment_curves,
    kv_transfer_ms,
    replicas_for,
)
from local_agent.sizing.load import LengthFit

Latency = Literal["ttft", "itl"]
EXPECTATION_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)  # equal-mass points of the forecast's distribution
MIN_TTFT_SAMPLES = 20  # requests a window needs before its p90 TTFT teaches the correction
# A prefill pool's profile is corrected from its first saturated, late window on: such windows come
# in shortages, which is when an optimistic profile costs most (the fit's prior toward the profile
# and its clamp bound what one window can move).
PREFILL_MIN_SAMPLES = 1


class Sizer:
    """Curves and replica counts for one deployment, from what the agent has learned so far."""

    def __init__(
        self,
        spec: DeploymentSpec,
        models: Mapping[PoolRole, EngineModel],
        options: AgentOptions,
        intake: Intake,
    ):
        self.spec = spec
        self.options = options
        self.intake = intake
        # Decode pools learn from what their engines do: a regression of measured iteration time
        # (per-token latency) on batch and KV tokens corrects the profile online. Disaggregated
        # prefill pools learn from the windows they were saturated through (``learn_prefill``).
        self.models: dict[PoolRole, EngineModel] = {
            role: _corrected(role, model) if options.online_correction and isinstance(model, PerfModel) else model
            for role, model in models.items()
        }
        self._saturated_ready: int | None = None  # ready replicas of a prefill pool saturated at the last window's end
        self.ttft = TtftCorrection()
        self.entry_role: PoolRole = "agg" if spec.mode == "agg" else "prefill"
        self.forecast: Forecast | None = None
        self.sizings = 0  # forecast sizings so far (a step taken before one waits for the next)
        self.trend_forecast: Forecast | None = None  # ``guard_predictor``'s, at the same sizing
        self.curves: dict[PoolRole, PoolCurve] = {}
        self.curves_low: dict[PoolRole, PoolCurve] = {}
        self.expected: dict[PoolRole, list[float]] = {}
        # The observed lengths are of admitted requests: none is longer than every pool's context.
        contexts = [model.max_context for model in models.values() if model.max_context]
        self.context_limit: int | None = min(contexts) if contexts else None

    # ---- the model ---------------------------------------------------------------------------
    def calibration(self) -> Calibration:
        return Calibration(load_factor=self.options.headroom, arrival_scv=self.intake.arrival_scv())

    def curves_at(
        self,
        rate: float,
        lengths: Lengths,
        *,
        corrected: bool = True,
        spec: DeploymentSpec | None = None,
        detail: CurveDetail = "full",
        fit: LengthFit = "lognormal",
    ) -> dict[PoolRole, PoolCurve]:
        """Every pool's curve at ``rate``; ``corrected`` judges TTFT against ``SLA / factor``;
        ``spec`` weighs other engine knobs than those in force (``local_agent.knobs``);
        ``detail``: what the caller reads of them (``CurveDetail``); ``fit``: how the length
        sample is drawn from the summaries (``LoadEstimate.from_distribution``)."""
        load = LoadEstimate.from_distribution(
            max(rate, 0.0), lengths[0], lengths[1], samples=400, admitted_below=self.context_limit, fit=fit
        )
        spec = self.spec if spec is None else spec
        factor = self.ttft.factor if corrected else 1.0
        if factor != 1.0:
            sla = spec.sla.model_copy(update={"ttft_ms": spec.sla.ttft_ms / factor})
            spec = spec.model_copy(update={"sla": sla})
        return _curves(spec, self.models, load, self.calibration(), self.intake.prefix_hit_rate(), detail)

    def sized(self, curves: dict[PoolRole, PoolCurve]) -> dict[PoolRole, int]:
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

    def meets(self, curves: dict[PoolRole, PoolCurve], replicas: Mapping[PoolRole, int]) -> bool:
        """Whether these counts reach the target share of what is reachable at all (prompts too
        long for the SLA even on an idle engine lower every curve's ceiling)."""
        return self._reaches({role: curve.attainment for role, curve in curves.items()}, curves, replicas)

    def meets_on_average(self, replicas: Mapping[PoolRole, int]) -> bool:
        """Whether these counts reach the target on average over the last sizing's forecast
        uncertainty (its expected attainment), as :meth:`meets` judges one load."""
        return bool(self.expected) and self._reaches(self.expected, self.curves, replicas)

    def _reaches(
        self,
        attainments: Mapping[PoolRole, Sequence[float]],
        curves: Mapping[PoolRole, PoolCurve],
        replicas: Mapping[PoolRole, int],
    ) -> bool:
        """The product of every pool's attainment at its count against the target share of the
        product of the curves' ceilings."""
        attainment = reachable = 1.0
        for role, values in attainments.items():
            attainment *= values[min(replicas[role], len(values) - 1)]
            reachable *= curves[role].ceiling
        return bool(attainment >= self.options.target_attainment * reachable)

    def backlog_ttft_ms(self, role: PoolRole, lengths: Lengths | None) -> Callable[[float], float] | None:
        """The (TTFT-corrected) model's TTFT of a mean prompt arriving behind a prefill backlog
        of so many tokens per replica: the backlog at the mean prompt's cost per token, then the
        prompt itself. None without lengths (the backlog threshold alone then decides)."""
        if lengths is None or role not in ("prefill", "agg"):
            return None
        model = self.models[role]
        mean_in = max(lengths[0].mean, 1.0)
        factor = self.ttft.factor

        def wait(backlog: float) -> float:  # priced when a backlog is over the threshold, not every tick
            own = float(model.ttft_ms(mean_in))
            per_token = max(own - model.prefill_overhead_ms, 0.0) / mean_in
            return factor * (backlog * per_token + own)

        return wait

    def backlog_drain_s(
        self, role: PoolRole, lengths: Lengths | None, rate: float | None, ready: int
    ) -> Callable[[float], float] | None:
        """Seconds ``ready`` replicas of a disaggregated prefill pool take to clear a backlog of so
        many tokens per replica while prompts keep arriving at ``rate``: each replica computes one
        mean prompt per (TTFT-corrected) model TTFT of it, serially (batching only shortens this).
        Infinite when the arrivals alone fill that. None where the model does not say (an
        aggregated pool's prefill shares its iterations with decode)."""
        if role != "prefill" or lengths is None or rate is None or ready < 1:
            return None
        mean_in = max(lengths[0].mean, 1.0)
        model, factor = self.models[role], self.ttft.factor

        def drain_s(backlog: float) -> float:  # priced when a backlog is over the threshold, not every tick
            per_prompt_s = factor * float(model.ttft_ms(mean_in)) / 1000.0
            if not 0.0 < per_prompt_s < math.inf:
                return math.inf  # a profile that prices no prompt says nothing of how fast a backlog clears
            spare = 1.0 / per_prompt_s - rate / ready  # prompts per second a replica has beyond the arrivals
            return backlog / mean_in / spare if spare > 0 else math.inf

        return drain_s

    def p90_relief(self, role: PoolRole, rate: float, lengths: Lengths, ready: int) -> dict[Latency, float]:
        """How much one replica more than ``ready`` shortens ``role``'s p90 TTFT and ITL at
        ``rate`` by the (corrected) model, as a fraction of the p90 at ``ready``; 1 (all of it)
        where the model has no finite p90 there (its queue is unstable: a replica is what it lacks)."""
        curve = self.curves_at(rate, lengths)[role]

        def relief(p90: Sequence[float | None]) -> float:
            if ready < 1 or ready + 1 >= len(p90):
                return 1.0
            now, more = p90[ready], p90[ready + 1]
            if now is None or more is None or not 0.0 < now < math.inf or not math.isfinite(more):
                return 1.0
            return 1.0 - more / now

        return {"ttft": relief(curve.ttft_p90_ms), "itl": relief(curve.itl_p90_ms)}

    def learn_ttft(self, entry: PoolObservation | None, rate: float | None, lengths: Lengths | None) -> None:
        """Compare a steady window's p90 TTFT with the model's prediction at that window's load:
        its rate, its own prompt and answer lengths where it reports them, sampled through their
        own quantiles. A p90 TTFT follows the window's longest prompts: the pooled lengths sizing
        reads lag a change in them by minutes, and a lognormal fitted to a p90 near the p99 (a
        cluster of long prompts) puts its p90 prompt far below it; either way the ratio blamed
        the engine for the prompts (docs/local-agent.md, *TTFT correction*)."""
        if not self.options.ttft_correction or entry is None or rate is None or lengths is None:
            return
        if entry.ttft_ms is None or entry.ttft_ms.count < MIN_TTFT_SAMPLES or entry.ready < 1:
            return
        if entry.starting or entry.draining or entry.pending:
            return
        if entry.input_tokens is not None and entry.output_tokens is not None:
            lengths = (entry.input_tokens, entry.output_tokens)
        curve = self.curves_at(rate, lengths, corrected=False, detail="entry_ttft", fit="quantiles")[self.entry_role]
        predicted = curve.ttft_p90_ms[min(entry.ready, len(curve.ttft_p90_ms) - 1)]
        if predicted is not None and predicted > 0 and entry.ttft_ms.p90 > 0:
            self.ttft.observe(entry.ttft_ms.p90, predicted)

    def learn_prefill(self, pool: PoolObservation | None) -> None:
        """What a disaggregated prefill replica really carries, from windows it was saturated
        through and still late: the pool started and ended the window with at least one
        iteration's token budget queued per replica (same ready count, nothing starting or
        draining) and its p90 TTFT missed the target. Its replicas then prefilled back to back,
        so the tokens they computed per second price the window's mean (uncached) prompt: one
        sample for the corrected profile, which the curves and the capacity reported to the
        planner then use. Found on the supply-limited matrix cell ``day-clients d1+d4``: the
        profile priced a starved pool's replica at 4.7 req/s over Mooncake's long prompts where it
        carried 3.3-3.5, so the planner judged it not short (docs/local-agent.md)."""
        model = self.models.get("prefill")
        if not isinstance(model, CorrectedPerfModel) or pool is None or pool.queued_prefill_tokens is None:
            self._saturated_ready = None
            return
        saturated = prefill_saturated(pool, self.spec.pools["prefill"].max_batch_tokens)
        before, self._saturated_ready = self._saturated_ready, pool.ready if saturated else None
        if not saturated or before != pool.ready or pool.starting or pool.draining:
            return
        late = pool.ttft_ms is not None and pool.ttft_ms.p90 > self.spec.sla.ttft_ms
        if not late or not pool.scheduled_tokens_per_s or pool.input_tokens is None:
            return
        computed = pool.input_tokens.mean * (1.0 - (pool.prefix_hit_rate or 0.0))  # validated within [0, 1]
        per_replica = pool.scheduled_tokens_per_s / pool.ready  # tokens computed per second
        if computed >= 1.0:
            model.observe_iteration("prefill", 1000.0 * computed / per_replica, 1.0, 0.0, computed)

    # ---- the predictive (throughput) loop ----------------------------------------------------
    def forecast_now(self, predictor: Predictor, tick_s: float) -> Forecast:
        """The forecast's maximum over the time a new replica needs to start plus one interval,
        for this deployment's share of its endpoint."""
        startup = max(pool.startup_s for pool in self.spec.pools.values())
        steps = max(1, math.ceil((startup + self.options.throughput_interval_s) / tick_s))
        forecast = predictor.predict_max(steps)
        share = self.intake.endpoint_share
        if share is not None:  # the predictor forecasts the endpoint's rate (see Intake.observe)
            forecast = forecast.model_copy(update={"mean": forecast.mean * share, "upper": forecast.upper * share})
        return forecast

    def forecast_sizing(self, forecast: Forecast, lengths: Lengths) -> dict[PoolRole, int]:
        """Size every pool at the forecast's upper quantile (``forecast`` from :meth:`forecast_now`);
        keeps the forecast and the curves for the decision record."""
        self.forecast = forecast
        self.sizings += 1
        self.curves = self.curves_at(forecast.mean, lengths)
        self.curves_low = self.curves_at(forecast.upper, lengths, detail="attainment")
        self.expected = self._expected_attainment(forecast, lengths)
        return self.sized(self.curves_low)

    def _expected_attainment(self, forecast: Forecast, lengths: Lengths) -> dict[PoolRole, list[float]]:
        """Per pool, attainment for each replica count averaged over the forecast's uncertainty
        (its Gaussian, read from mean and upper quantile, at ``EXPECTATION_QUANTILES``): what a
        count is worth on average, which is what an arbiter weighing pools against each other
        needs. (The mean's curve alone ignores the risk; the upper's alone counts a one-in-ten
        load as certain, and in a shortage would take GPUs that others need for sure.)"""
        z = normal_z(forecast.quantile)
        spread = (forecast.upper - forecast.mean) / z if z > 0 else 0.0  # the median says nothing of the spread
        if spread <= 0:
            return {role: list(curve.attainment) for role, curve in self.curves.items()}
        total: dict[PoolRole, np.ndarray] = {}
        for quantile in EXPECTATION_QUANTILES:
            rate = forecast.mean + normal_z(quantile) * spread
            curves = self.curves_at(rate, lengths, detail="attainment") if quantile != 0.5 else self.curves
            for role, curve in curves.items():
                total[role] = total.get(role, 0.0) + np.asarray(curve.attainment, dtype=float)
        return {role: list(values / len(EXPECTATION_QUANTILES)) for role, values in total.items()}

    def replica_rps(self, role: PoolRole, lengths: Lengths | None) -> float:
        """One replica's nominal request rate at the observed mean lengths: lets an arbiter weigh
        this deployment's capacity against others serving the same endpoint."""
        mean_in = lengths[0].mean if lengths else REFERENCE_INPUT_TOKENS
        mean_out = lengths[1].mean if lengths else REFERENCE_OUTPUT_TOKENS
        model = self.models[role]  # a PerfModel, or a CorrectedPerfModel with the same interface
        return replica_rps(model, role, max(mean_in, 1.0), max(mean_out, 1.0), self.spec.sla.itl_ms)  # type: ignore[arg-type]


def _curves(
    spec: DeploymentSpec,
    models: Mapping[PoolRole, EngineModel],
    load: LoadEstimate,
    calibration: Calibration,
    hit: float,
    detail: CurveDetail = "full",
) -> dict[PoolRole, PoolCurve]:
    """The deployment's curves, with prefill sized for the uncached part of prompts."""
    if hit <= 0.0:
        return deployment_curves(spec, models, load, calibration=calibration, detail=detail)
    # Prefix-cache reuse: only the uncached part of a prompt is computed, but decode (and the
    # KV transfer to it) still holds the whole context. Prefill is sized with cost-equivalent
    # shorter prompts, decode with the full ones.
    if spec.mode == "agg":
        # The agg curve has one sample for both sides, so reuse enters as a cheaper prefill
        # (``prefill_factor``) instead: approximate, since it also discounts the per-iteration
        # overhead and chunk counts stay those of full prompts.
        _, ratio = _prefix_effective_inputs(models["agg"], load.input_tokens, hit)
        calibration = calibration.model_copy(update={"prefill_factor": calibration.prefill_factor * ratio})
        return deployment_curves(spec, models, load, calibration=calibration, detail=detail)
    effective, _ = _prefix_effective_inputs(models["prefill"], load.input_tokens, hit)
    order = np.argsort(effective, kind="stable")
    eff_sorted, full_sorted = effective[order], load.input_tokens[order]

    def transfer_ms(inputs: np.ndarray) -> np.ndarray:  # the whole prompt's KV moves to decode
        return kv_transfer_ms(np.interp(inputs, eff_sorted, full_sorted))

    reduced = LoadEstimate(rate_rps=load.rate_rps, input_tokens=effective, output_tokens=load.output_tokens)
    return deployment_curves(
        spec, models, load, kv_transfer_ms_fn=transfer_ms, prefill_load=reduced, calibration=calibration, detail=detail
    )


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


def prefill_saturated(pool: PoolObservation, budget: int) -> bool:
    """Whether a prefill pool ended its window with at least one iteration's token budget queued
    per ready replica: its replicas had prompts to prefill back to back."""
    return pool.ready > 0 and (pool.queued_prefill_tokens or 0.0) >= pool.ready * budget


def _corrected(role: PoolRole, model: PerfModel) -> EngineModel:
    """The pool's profile with its online correction (decode and prefill pools)."""
    if role == "decode":
        return CorrectedPerfModel(model)
    if role == "prefill":
        return CorrectedPerfModel(model, min_samples=PREFILL_MIN_SAMPLES)
    return model
