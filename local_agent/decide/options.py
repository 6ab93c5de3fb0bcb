"""The agent's tunables: the ``planner:`` options of a scenario or the agent's config file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from local_agent.forecast import make_predictor


class AgentOptions(BaseModel):
    """Tunables of one agent (the ``planner:`` options of a scenario or the agent's config file)."""

    # Strict: a scenario's or config file's ``headroom: true`` or ``down_margin: "0.5"`` is a slip to
    # refuse, not a value to convert (an integer is still a valid float).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mode: Literal["throughput", "load", "both"] = "both"
    throughput_interval_s: float = Field(default=180.0, gt=0, allow_inf_nan=False)
    target: Literal["throughput", "latency", "sla"] = "sla"  # what the reactive loop watches
    predictor: str = Field(
        default="moving_average",
        description="what the forecast floor comes from (docs/local-agent.md: on the scenario matrix the Kalman "
        "filter's trend overshoots the Azure hour's steps and asks for replicas the SLA never needed; the damped "
        "trend of `holt` passed C in more single-deployment cells but cost issue 11's top tenant its 99%)",
    )
    predictor_options: dict = Field(default_factory=dict)
    guard_predictor: str | None = Field(
        default="holt",
        description="a second forecast the scale-down guard also checks at (its upper quantile, sized at the same "
        "sizings): a damped trend keeps a pool from descending while the load rises and the moving average still "
        "trails it (docs/local-agent.md, *a damped trend in the scale-down check*); None = the forecast alone",
    )
    forecast_quantile: float = Field(default=0.9, ge=0.5, lt=1.0)
    target_attainment: float = Field(default=0.99, gt=0, le=1.0)
    headroom: float = Field(default=1.0, ge=1.0, le=3.0, allow_inf_nan=False, description="plan for rate x headroom")
    scale_down_grace_s: float = Field(
        default=300.0, ge=0, allow_inf_nan=False, description="no scale-down this long after a scale-up"
    )
    max_step_up: int | None = Field(default=None, ge=1)
    max_step_down: int = Field(default=1, ge=1)
    idle_after_s: float = Field(
        default=120.0,
        gt=0,
        allow_inf_nan=False,
        description="no admissions this long (and at least the slowest pool's startup_s) = idle",
    )
    queue_tokens_per_replica: float = Field(
        default=16384, gt=0, description="latency target: prefill backlog that adds a replica"
    )
    kv_high: float = Field(default=0.85, gt=0, le=1.0, description="latency target: KV use that adds a decode replica")
    kv_low: float = Field(default=0.5, gt=0, le=1.0)
    length_windows: int = Field(default=20, ge=1, description="observation windows pooled for the length distribution")
    gpu_budget: int | None = Field(default=None, ge=0, description="local GPU budget for the whole deployment")
    online_correction: bool = Field(
        default=True,
        description="correct decode pools' profiles from observed iterations, and disaggregated prefill pools' "
        "from windows they were saturated through and late (Sizer.learn_prefill)",
    )
    burst_windows: int = Field(
        default=0,
        ge=0,
        description="windows of admitted-request counts whose dispersion sizes queues as G/G/c (0 = assume Poisson)",
    )
    ttft_correction: bool = Field(
        default=True, description="scale the TTFT model by observed / predicted p90 TTFT (prefill and agg pools)"
    )
    down_margin: float = Field(
        default=0.5,
        ge=0,
        le=1.0,
        allow_inf_nan=False,
        description="a scale-down's survivors must carry this much more than the load (a dead band against flapping)",
    )
    dead_band_over: Literal["level", "upper"] = Field(
        default="level",
        description="what the dead band widens: the load's level (the larger of the observed rate and the forecast "
        "mean; the forecast's upper quantile and the recent peak are checked beside it, unwidened) or, as before "
        "2026-12-05, the largest of them, so the band stacked on the forecast's own uncertainty (docs/local-agent.md)",
    )
    decode_down_margin: float = Field(
        default=0.2,
        ge=0,
        le=1.0,
        allow_inf_nan=False,
        description="the dead band of a disaggregated decode pool's scale-downs: its ITL grows with the batch, "
        "without a queue, so a narrower band holds where a prefill queue needs down_margin (docs/local-agent.md)",
    )
    miss_memory_s: float = Field(
        default=1800.0,
        ge=0,
        allow_inf_nan=False,
        description="remember SLA misses this long: no scale-down to their load per replica (0 = off)",
    )
    breach_relief: float = Field(
        default=0.02,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="a p90 latency miss adds a replica only if one replica more shortens that p90 by at least this "
        "fraction by the model at the observed rate (0 = always): a miss the prompts' own time sets is not a "
        "capacity problem",
    )
    transient_backlog: bool = Field(
        default=True,
        description="a prefill backlog the ready replicas clear, at the window's arrival rate, within the pool's "
        "start-up time adds no replica: one started now would arrive after it (not within miss_memory_s of an SLA miss "
        "that added one: the model that judges the backlog was just shown short)",
    )
    near_miss: bool = Field(
        default=True,
        description="remember a near miss too (observed p90 latency x ready/(ready-1) over the target): "
        "no scale-down below a count whose survivors would, to first order, miss",
    )
    scale_down_dwell_s: float = Field(
        default=210.0,
        ge=0,
        allow_inf_nan=False,
        description="no scale-down this long after a scale-down: each step is observed before the next",
    )
    decode_dwell_s: float | None = Field(
        default=120.0,
        ge=0,
        allow_inf_nan=False,
        description="the dwell of a disaggregated decode pool's scale-downs (None: scale_down_dwell_s): its ITL "
        "answers a smaller batch within a window, with no queue to drain first (docs/local-agent.md)",
    )
    warmup_windows: int = Field(
        default=5,
        ge=0,
        description="no scale-down before this many windows of traffic were observed: until then the "
        "forecast has no error estimate and the model's corrections nothing to learn from",
    )
    warmup_until_sized: bool = Field(
        default=True,
        description="a pool's first scale-down after the warm-up waits for a forecast sized after the tick it was "
        "first found safe: the sizing in force may be the first one, made from a window or two (docs/local-agent.md)",
    )
    warmup_until_corrected: bool = Field(
        default=True,
        description="the entry pool's warm-up also waits for the TTFT correction to be in force",
    )
    opening_margin: float | None = Field(
        default=2.0,
        ge=0,
        le=10.0,
        allow_inf_nan=False,
        description="while warming up, a pool that has not changed yet (not the entry pool, whose TTFT model is "
        "not yet corrected) may go down once, straight to the fewest replicas safe at (1 + this) times the load a "
        "scale-down is checked at; its next scale-down waits for a forecast sized after that cut (None = off; "
        "docs/local-agent.md, *the opening cut*)",
    )
    check_recent_peak: bool = Field(
        default=True,
        description="a scale-down must also hold at the highest admitted rate of the last few windows, not only "
        "at this window's and the forecast's (which may be minutes old)",
    )
    miss_margin: float = Field(
        default=0.15, ge=0, lt=1.0, description="load per replica must fall this share below a miss to scale down"
    )
    stabilization_window_s: float = Field(
        default=1800.0,
        ge=0,
        allow_inf_nan=False,
        description="scale down only to the highest recommendation of this window (Kubernetes HPA: 300 s)",
    )
    reversing_up_at: Literal["upper", "expected"] = Field(
        default="expected",
        description="a predictive scale-up that would reverse the pool's last change (a scale-down) is made when "
        "the forecast's upper quantile needs it (`upper`) or only when the count falls short of the target on "
        "average over the forecast's uncertainty (`expected`, the default: docs/local-agent.md, *the way back up*); an "
        "observed miss scales up either way (with `mode: throughput`, which has no reactive loop, the upper rules)",
    )
    reversal_interval_s: float = Field(
        default=3600.0,
        ge=0,
        allow_inf_nan=False,
        description="a scale-down that reverses a scale-up waits this long after the pool's last direction "
        "reversal (0 = off): at most one down-reversal per interval; scale-ups are never held. The default "
        "holds the matrix's reversals near one per deployment-hour (docs/local-agent.md)",
    )
    scale_down_gap_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="with a stabilisation window: a scale-down moves this fraction of the way to the window's "
        "highest recommendation in one change (0 = max_step_down replicas per change, 0.5 = halve the gap, "
        "1 = straight there); above 0, a gap of two replicas goes in one change (on a shared endpoint only from a "
        "pool of six or more)",
    )
    advisory: bool = False
    tune_knobs: bool = Field(
        default=False, description="choose engine knobs per pool (local_agent.knobs) and apply them via the connector"
    )
    knob_interval_s: float = Field(
        default=1800.0, gt=0, allow_inf_nan=False, description="how often knobs are re-chosen (at most one change each)"
    )

    @model_validator(mode="after")
    def _predictors_exist(self) -> AgentOptions:
        """Unknown predictor names or options fail here, where a config is read, not when the
        first agent is built (a scenario's planner options then name the field). Checked at a
        1 s interval, the most permissive for options bounded by the interval."""
        for field, name, options in (
            ("predictor", self.predictor, self.predictor_options),
            ("guard_predictor", self.guard_predictor, {}),
        ):
            if name is None:
                continue
            try:
                make_predictor(name, interval_s=1.0, quantile=self.forecast_quantile, **options)
            except (ValueError, TypeError, ImportError) as error:
                raise ValueError(f"{field}: {error}") from None
        return self
