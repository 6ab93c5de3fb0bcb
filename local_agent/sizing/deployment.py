"""Sizing a whole deployment: its pools' curves and the cheapest replica counts meeting a target.

In a disaggregated deployment a request meets the SLA only if both pools do their part, so the
combined attainment is taken as the product of the prefill and decode curves (independence).
The cheapest pair is found by scanning every (prefill, decode) pair at once: at most
65 x 65 products, microseconds. Targets are relative to a curve's ``ceiling`` (what unlimited
replicas reach), so requests no replica count can serve never push a pool to its maximum.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fleet_planner.planning import DeploymentSpec, PoolRole
from local_agent.sizing.curves import (
    CurveDetail,
    EngineModel,
    KvTransferFn,
    PoolCurve,
    agg_curve,
    decode_curve,
    prefill_curve,
)
from local_agent.sizing.load import Calibration, LoadEstimate

DEFAULT_TARGET = 0.99


def _roles(spec: DeploymentSpec) -> tuple[PoolRole, ...]:
    return ("agg",) if spec.mode == "agg" else ("prefill", "decode")


def deployment_curves(
    spec: DeploymentSpec,
    models: Mapping[PoolRole, EngineModel],
    load: LoadEstimate,
    *,
    max_replicas: int | None = None,
    max_batch_tokens: int | None = None,
    max_num_seqs: int | None = None,
    max_input_tokens: int | None = None,
    kv_transfer_ms_fn: KvTransferFn | None = None,
    prefill_load: LoadEstimate | None = None,
    calibration: Calibration = Calibration(),
    detail: CurveDetail = "full",
) -> dict[PoolRole, PoolCurve]:
    """One curve per pool of ``spec``, up to each pool's ``max_replicas`` and with each pool's
    engine knobs (``max_batch_tokens``, ``max_num_seqs``) unless overridden.

    ``max_input_tokens`` is the deployment's prompt limit (the engine's context limit applies
    anyway); longer prompts are rejected at the entry pool. ``prefill_load``: what a
    disaggregated prefill pool computes when it is less than ``load`` (prompts whose cached
    prefix it skips), while decode still holds every whole context. ``detail``: what the caller
    reads (``CurveDetail``); ``entry_ttft`` leaves the decode pool of a disaggregated deployment out.
    """
    roles = _roles(spec)
    for role in roles:
        if role not in spec.pools:
            raise ValueError(f"deployment {spec.name!r} ({spec.mode}) has no {role} pool")
        if role not in models:
            raise ValueError(f"no performance model for {spec.name!r} pool {role}")

    def limit(role: PoolRole) -> int:
        return spec.pools[role].max_replicas if max_replicas is None else max_replicas

    def tokens(role: PoolRole) -> int:
        return spec.pools[role].max_batch_tokens if max_batch_tokens is None else max_batch_tokens

    def seqs(role: PoolRole) -> int:
        return spec.pools[role].max_num_seqs if max_num_seqs is None else max_num_seqs

    if spec.mode == "agg":
        curve = agg_curve(
            models["agg"],
            load,
            spec.sla,
            max_replicas=limit("agg"),
            max_batch_tokens=tokens("agg"),
            max_num_seqs=seqs("agg"),
            max_input_tokens=max_input_tokens,
            calibration=calibration,
            detail=detail,
        )
        return {"agg": curve}
    curves: dict[PoolRole, PoolCurve] = {
        "prefill": prefill_curve(
            models["prefill"],
            load if prefill_load is None else prefill_load,
            spec.sla,
            max_replicas=limit("prefill"),
            max_batch_tokens=tokens("prefill"),
            max_input_tokens=max_input_tokens,
            kv_transfer_ms_fn=kv_transfer_ms_fn,
            calibration=calibration,
            detail=detail,
        )
    }
    if detail != "entry_ttft":
        curves["decode"] = decode_curve(
            models["decode"],
            load,
            spec.sla,
            max_replicas=limit("decode"),
            max_num_seqs=seqs("decode"),
            max_input_tokens=max_input_tokens,
            calibration=calibration,
        )
    return curves


def _check_target(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target attainment must be in (0, 1], got {target}")


def replicas_for(curve: PoolCurve, target: float = DEFAULT_TARGET) -> int:
    """Smallest replica count whose attainment reaches ``target`` of the curve's ceiling; the
    largest if none does.

    Relative to the ceiling because requests no replica count can serve (rejected for length,
    or too long for the TTFT SLA on an idle engine) must not make every pool size to its max.
    """
    _check_target(target)
    goal = target * curve.ceiling
    for replicas, attainment in zip(curve.replicas, curve.attainment, strict=True):
        if attainment >= goal:
            return replicas
    return curve.replicas[-1]


def cheapest_pair(
    prefill: PoolCurve,
    decode: PoolCurve,
    target: float = DEFAULT_TARGET,
    *,
    prefill_gpus: int = 1,
    decode_gpus: int = 1,
) -> tuple[int, int]:
    """(prefill, decode) replicas with the fewest GPUs whose combined attainment reaches
    ``target`` of the combined ceiling (ties: higher attainment); if none does, the best
    attainment, then the least overload (a pool past its capacity at every count it may run
    serves more the more replicas it has, though its attainment is 0 at all of them: as
    :func:`replicas_for`, it goes to its maximum instead of to none), then fewer GPUs."""
    _check_target(target)
    p = np.asarray(prefill.attainment)
    d = np.asarray(decode.attainment)
    combined = p[:, None] * d[None, :]
    gpus = np.asarray(prefill.replicas)[:, None] * prefill_gpus + np.asarray(decode.replicas)[None, :] * decode_gpus
    feasible = combined >= target * prefill.ceiling * decode.ceiling
    if feasible.any():
        cost = np.where(feasible, gpus, np.iinfo(np.int64).max)
        order = np.lexsort((-combined.ravel(), cost.ravel()))
    else:
        overload = _overload(prefill)[:, None] + _overload(decode)[None, :]
        order = np.lexsort((gpus.ravel(), overload.ravel(), -combined.ravel()))
    i, j = np.unravel_index(order[0], combined.shape)
    return prefill.replicas[int(i)], decode.replicas[int(j)]


def _overload(curve: PoolCurve) -> np.ndarray:
    """How far past its capacity the pool runs at each count (0 within it; inf with no replica)."""
    return np.maximum(np.asarray(curve.utilisation, dtype=float) - 1.0, 0.0)


def size_deployment(
    spec: DeploymentSpec,
    models: Mapping[PoolRole, EngineModel],
    load: LoadEstimate,
    target: float = DEFAULT_TARGET,
    *,
    max_replicas: int | None = None,
    max_batch_tokens: int | None = None,
    max_num_seqs: int | None = None,
    max_input_tokens: int | None = None,
    kv_transfer_ms_fn: KvTransferFn | None = None,
    calibration: Calibration = Calibration(),
) -> dict[PoolRole, int]:
    """Replicas per pool for ``target`` attainment at ``load`` (0 with no load: floors such as
    ``min_replicas`` are the caller's)."""
    _check_target(target)
    curves = deployment_curves(
        spec,
        models,
        load,
        max_replicas=max_replicas,
        max_batch_tokens=max_batch_tokens,
        max_num_seqs=max_num_seqs,
        max_input_tokens=max_input_tokens,
        kv_transfer_ms_fn=kv_transfer_ms_fn,
        calibration=calibration,
    )
    if spec.mode == "agg":
        return {"agg": replicas_for(curves["agg"], target)}
    prefill, decode = cheapest_pair(
        curves["prefill"],
        curves["decode"],
        target,
        prefill_gpus=spec.pools["prefill"].gpus_per_replica,
        decode_gpus=spec.pools["decode"].gpus_per_replica,
    )
    return {"prefill": prefill, "decode": decode}
