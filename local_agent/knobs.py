"""Engine knobs per pool: the settings that maximise SLA-compliant throughput per GPU, from the
(corrected) profile and the lengths the agent observes.

- **decode** pools: ``max_num_seqs`` = the largest batch whose ITL at the mean context meets the
  ITL target (:func:`fleet_planner.perf.operating.decode_point`). Above it every running sequence
  would miss ITL; with the cap, a burst waits for a slot instead (a TTFT cost, usually cheaper).
- **aggregated** pools: ``max_num_seqs`` = the batch with the most requests/s meeting both targets
  (:func:`~fleet_planner.perf.operating.agg_point`), and ``max_batch_tokens`` = the smallest chunk
  budget (a power of two) with which TTFT still holds at that batch: a smaller budget spreads a
  long prompt over more iterations, so no single iteration stalls the running sequences long.
- **prefill** pools keep the engine's budget (a larger one only batches more prompts together).

The agent recomputes knobs when the observed lengths move; a connector applies them (the
simulator at once, local processes by a drained restart, Kubernetes in the next rollout).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel
from fleet_planner.perf.operating import agg_point, decode_point
from fleet_planner.planning import SLA, PoolRole

CHUNK_BUDGETS = tuple(2**k for k in range(9, 15))  # 512 .. 16384 tokens
KV_BOUND = 1 << 20  # no cap of its own: the batch range is bounded by the KV cache


class KnobChoice(BaseModel):
    """The knobs chosen for a pool and why."""

    model_config = ConfigDict(frozen=True)

    knobs: EngineKnobs
    reason: str


def tune_knobs(
    model: PerfModel,
    role: PoolRole,
    sla: SLA,
    mean_input: float,
    mean_output: float,
    *,
    defaults: EngineKnobs = EngineKnobs(),
) -> KnobChoice:
    """The knobs for one pool; ``defaults`` when no setting meets the SLA (nothing to gain by
    capping an engine that misses anyway)."""
    if role == "decode":
        point = decode_point(model, mean_input, mean_output, sla.itl_ms, max_num_seqs=KV_BOUND)
        if not point.feasible or point.batch is None:
            return KnobChoice(knobs=defaults, reason=f"engine defaults ({point.reason})")
        return KnobChoice(
            knobs=defaults.model_copy(update={"max_num_seqs": point.batch}),
            reason=f"batch {point.batch} keeps ITL {point.itl_ms:.1f} ms <= {sla.itl_ms:g} ms",
        )
    if role == "agg":
        return _tune_agg(model, sla, mean_input, mean_output, defaults)
    return KnobChoice(knobs=defaults, reason="engine defaults (prefill)")


def _tune_agg(model: PerfModel, sla: SLA, isl: float, osl: float, defaults: EngineKnobs) -> KnobChoice:
    best = agg_point(
        model,
        isl,
        osl,
        sla.ttft_ms,
        sla.itl_ms,
        max_num_seqs=KV_BOUND,
        max_batch_tokens=defaults.max_batch_tokens,
    )
    if not best.feasible or best.batch is None:
        return KnobChoice(knobs=defaults, reason=f"engine defaults ({best.reason})")
    for budget in CHUNK_BUDGETS:
        if budget <= best.batch:
            continue
        point = agg_point(model, isl, osl, sla.ttft_ms, sla.itl_ms, max_num_seqs=best.batch, max_batch_tokens=budget)
        if point.feasible and point.batch == best.batch and point.ttft_ms is not None:
            return KnobChoice(
                knobs=EngineKnobs(max_num_seqs=best.batch, max_batch_tokens=budget),
                reason=f"batch {best.batch}, chunk {budget} tokens: ITL {point.itl_ms:.1f} ms, "
                f"TTFT {point.ttft_ms:.0f} ms",
            )
    return KnobChoice(
        knobs=defaults.model_copy(update={"max_num_seqs": best.batch}),
        reason=f"batch {best.batch}: ITL {best.itl_ms:.1f} ms",
    )
