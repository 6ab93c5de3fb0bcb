"""``recommend``: which profiled layout to deploy per role, in what prefill:decode ratio, with which
reactive thresholds — from the operating points of :mod:`fleet_planner.perf.operating`.

Layouts (one profile each: model, GPU, engine, tensor-parallel size) are compared per model by
SLA-compliant requests/s per GPU. The disaggregated pair is the best prefill layout with the best
decode layout; its throughput per GPU combines the two (``1 / (1/p + 1/d)``, both per GPU), and its
ratio is how many prefill replicas one decode replica needs (decode requests/s over prefill
requests/s). Aggregated is recommended when its throughput per GPU beats the pair's.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from fleet_planner.knobs import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_NUM_SEQS
from fleet_planner.perf.model import PerfModel
from fleet_planner.perf.operating import (
    OperatingPoint,
    agg_point,
    decode_point,
    prefill_point,
)


class Layout(BaseModel):
    """One profiled engine configuration at its best SLA-compliant load for one role."""

    model_config = ConfigDict(frozen=True)

    profile: str
    system: str
    backend: str
    gpus_per_engine: int
    point: OperatingPoint


class ModelRecommendation(BaseModel):
    """The recommendation for one model."""

    model_config = ConfigDict(frozen=True)

    model: str
    prefill: Layout | None
    decode: Layout | None
    agg: Layout | None
    prefill_per_decode: float | None  # prefill replicas per decode replica in the disaggregated pair
    disagg_requests_per_s_per_gpu: float | None
    mode: str  # "disagg", "agg" or "none" (no layout meets the SLA)
    layouts: list[Layout]  # every layout and role, for the table


def recommend(
    models: Sequence[PerfModel],
    *,
    isl: float,
    osl: float,
    ttft_ms: float,
    itl_ms: float,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
) -> list[ModelRecommendation]:
    """One recommendation per model among ``models`` (in order of first appearance)."""
    groups: dict[str, list[PerfModel]] = {}
    for model in models:
        groups.setdefault(model.profile.model, []).append(model)
    out = []
    for name, group in groups.items():
        layouts = []
        for model in group:
            points = (
                prefill_point(model, isl, ttft_ms, max_batch_tokens=max_batch_tokens),
                decode_point(model, isl, osl, itl_ms, max_num_seqs=max_num_seqs),
                agg_point(
                    model, isl, osl, ttft_ms, itl_ms, max_num_seqs=max_num_seqs, max_batch_tokens=max_batch_tokens
                ),
            )
            p = model.profile
            layouts += [
                Layout(profile=p.name, system=p.system, backend=p.backend, gpus_per_engine=p.gpus_per_engine, point=pt)
                for pt in points
            ]
        out.append(_choose(name, layouts))
    return out


def _best(layouts: list[Layout], role: str) -> Layout | None:
    candidates = [x for x in layouts if x.point.role == role and x.point.feasible]
    return max(candidates, key=lambda x: x.point.requests_per_s_per_gpu, default=None)


def _choose(model: str, layouts: list[Layout]) -> ModelRecommendation:
    prefill, decode, agg = _best(layouts, "prefill"), _best(layouts, "decode"), _best(layouts, "agg")
    ratio = pair = None
    if prefill is not None and decode is not None:
        ratio = decode.point.requests_per_s / prefill.point.requests_per_s
        pair = 1.0 / (1.0 / prefill.point.requests_per_s_per_gpu + 1.0 / decode.point.requests_per_s_per_gpu)
    agg_rate = agg.point.requests_per_s_per_gpu if agg is not None else None
    if pair is None and agg_rate is None:
        mode = "none"
    elif agg_rate is not None and (pair is None or agg_rate > pair):
        mode = "agg"
    else:
        mode = "disagg"
    return ModelRecommendation(
        model=model,
        prefill=prefill,
        decode=decode,
        agg=agg,
        prefill_per_decode=ratio,
        disagg_requests_per_s_per_gpu=pair,
        mode=mode,
        layouts=layouts,
    )


def render(recommendations: Sequence[ModelRecommendation], *, isl: float, osl: float, ttft: float, itl: float) -> str:
    """The human-readable report."""
    lines = [f"ISL {isl:g}, OSL {osl:g}, TTFT <= {ttft:g} ms, ITL <= {itl:g} ms"]
    for rec in recommendations:
        lines += ["", f"model {rec.model}", _table(rec.layouts), ""]
        for role in ("prefill", "decode", "agg"):
            best = getattr(rec, role)
            lines.append(f"  best {role:8s}: {_describe(best)}")
        if rec.prefill_per_decode is not None and rec.disagg_requests_per_s_per_gpu is not None:
            lines.append(
                f"  disaggregated pair: {rec.prefill_per_decode:.2f} prefill replicas per decode replica, "
                f"{rec.disagg_requests_per_s_per_gpu:.3f} req/s per GPU"
            )
        lines.append(f"  recommended mode: {rec.mode}")
        lines += _thresholds(rec)
    return "\n".join(lines)


def _describe(layout: Layout | None) -> str:
    if layout is None:
        return "none meets the SLA"
    p = layout.point
    text = f"{layout.profile} ({layout.gpus_per_engine} GPU/engine): {p.requests_per_s_per_gpu:.3f} req/s per GPU"
    if p.batch is not None:
        text += f" at batch {p.batch}"
    return text


def _thresholds(rec: ModelRecommendation) -> list[str]:
    """The agent options (``planner:`` block) for the reactive loop of the recommended mode."""
    lines = []
    if rec.mode == "disagg" and rec.prefill is not None and rec.decode is not None:
        queue = rec.prefill.point.queue_tokens_per_replica
        lines.append(
            f"  reactive thresholds: prefill queue_tokens_per_replica {queue:.0f}, "
            f"decode kv_high {rec.decode.point.kv_high:.2f}"
        )
    elif rec.mode == "agg" and rec.agg is not None:
        lines.append(
            f"  reactive thresholds: queue_tokens_per_replica {rec.agg.point.queue_tokens_per_replica:.0f}, "
            f"kv_high {rec.agg.point.kv_high:.2f}"
        )
    return lines


def _table(layouts: list[Layout]) -> str:
    header = (
        f"  {'profile':32s} {'role':8s} {'req/s/GPU':>10s} {'batch':>6s} {'TTFT ms':>8s} {'ITL ms':>7s} {'KV use':>7s}"
    )
    rows = [header]
    for x in layouts:
        p = x.point
        if not p.feasible:
            rows.append(f"  {x.profile:32s} {p.role:8s} {'-':>10s}   ({p.reason})")
            continue
        rows.append(
            f"  {x.profile:32s} {p.role:8s} {p.requests_per_s_per_gpu:10.3f} {_num(p.batch, 'd'):>6s} "
            f"{_num(p.ttft_ms, '.0f'):>8s} {_num(p.itl_ms, '.1f'):>7s} {_num(p.kv_high, '.2f'):>7s}"
        )
    return "\n".join(rows)


def _num(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
