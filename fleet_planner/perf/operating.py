"""SLA-compliant operating points of one engine: how much traffic a replica of each role carries at
given request lengths while TTFT and ITL hold, and the engine settings that get it there.

The model is the simulator's engine model (``docs/simulator.md``) in steady state:

- **prefill**: prompts back to back; TTFT alone is ``chunks x overhead + V(isl)`` where ``V`` is the
  profile's TTFT minus the fixed overhead and ``chunks = ceil(isl / max_batch_tokens)``. The
  backlog bound is the prompt tokens that may wait ahead of a new prompt with TTFT still within
  target: ``(target / TTFT alone - 1) x isl``.
- **decode**: the largest batch ``b`` (within the KV cache and ``max_num_seqs``) whose
  ``ITL(b, isl + osl/2)`` meets the ITL target; a request needs ``osl - 1`` decode iterations.
- **aggregated**: per second, decode iterations at ``ITL(b)`` plus the prompts' prefill work ``λ V``
  fill the second: ``λ = 1000 / ((osl - 1) ITL(b) / b + V)`` requests/s; every running sequence sees
  the prefill work as interference, so its time per token is ``ITL(b) + b V / (osl - 1)``; a new
  prompt waits half an iteration on average, then for the prompts ahead of it (M/D/1 wait at
  prefill utilisation ``λ V``), and is prefilled in ``ceil(isl / (budget - b))`` iterations.
  The batch is the one with the most requests/s among those meeting both targets.

Every role reports the KV use at its batch (the reactive ``kv_high`` bound) and, where prompts
queue, the backlog bound (``queue_tokens_per_replica``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from fleet_planner.knobs import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_NUM_SEQS
from fleet_planner.perf.model import PerfModel

Role = Literal["prefill", "decode", "agg"]


class OperatingPoint(BaseModel):
    """One replica of one role at its best SLA-compliant load (``feasible`` False: no load meets it)."""

    model_config = ConfigDict(frozen=True)

    role: Role
    feasible: bool
    reason: str = ""
    requests_per_s: float = 0.0  # per replica
    requests_per_s_per_gpu: float = 0.0
    batch: int | None = None  # running sequences (decode, agg)
    ttft_ms: float | None = None
    itl_ms: float | None = None
    kv_high: float | None = None  # KV use at that batch
    queue_tokens_per_replica: float | None = None  # prompt backlog within the TTFT target


def _chunks(isl: float, budget: float) -> float:
    return float(math.ceil(isl / max(1.0, budget)))


def prefill_point(
    model: PerfModel, isl: float, ttft_ms: float, *, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
) -> OperatingPoint:
    """A prefill replica serving prompts back to back."""
    variable = model.ttft_ms(isl) - model.prefill_overhead_ms
    alone = _chunks(isl, max_batch_tokens) * model.prefill_overhead_ms + variable
    if alone > ttft_ms:
        return OperatingPoint(
            role="prefill", feasible=False, reason=f"one {isl:g}-token prompt alone takes {alone:.0f} ms"
        )
    rps = 1000.0 / alone
    return OperatingPoint(
        role="prefill",
        feasible=True,
        requests_per_s=rps,
        requests_per_s_per_gpu=rps / model.gpus_per_engine,
        ttft_ms=alone,
        queue_tokens_per_replica=(ttft_ms / alone - 1.0) * isl,
    )


def _batch_range(model: PerfModel, isl: float, osl: float, max_num_seqs: int) -> np.ndarray:
    cap = min(max_num_seqs, int(model.max_kv_tokens // max(1.0, isl + osl)))
    return np.arange(1, max(cap, 0) + 1, dtype=np.float64)


def decode_point(
    model: PerfModel, isl: float, osl: float, itl_ms: float, *, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
) -> OperatingPoint:
    """A decode replica at the largest batch whose ITL meets the target."""
    batches = _batch_range(model, isl, osl, max_num_seqs)
    if batches.size == 0:
        return OperatingPoint(role="decode", feasible=False, reason="one request does not fit the KV cache")
    itl = model.itl_ms(batches, isl + osl / 2)
    rps = batches * 1000.0 / (itl * max(1.0, osl - 1))
    ok = itl <= itl_ms
    if not ok.any():
        return OperatingPoint(role="decode", feasible=False, reason=f"ITL alone is {itl[0]:.1f} ms")
    best = int(np.argmax(np.where(ok, rps, -1.0)))
    return OperatingPoint(
        role="decode",
        feasible=True,
        requests_per_s=float(rps[best]),
        requests_per_s_per_gpu=float(rps[best]) / model.gpus_per_engine,
        batch=int(batches[best]),
        itl_ms=float(itl[best]),
        kv_high=float(batches[best] * (isl + osl) / model.max_kv_tokens),
    )


def agg_point(
    model: PerfModel,
    isl: float,
    osl: float,
    ttft_ms: float,
    itl_ms: float,
    *,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
) -> OperatingPoint:
    """An aggregated replica: decode batch and prefill interference balanced against both targets."""
    batches = _batch_range(model, isl, osl, max_num_seqs)
    if batches.size == 0:
        return OperatingPoint(role="agg", feasible=False, reason="one request does not fit the KV cache")
    base = model.itl_ms(batches, isl + osl / 2)
    variable = model.ttft_ms(isl) - model.prefill_overhead_ms
    steps = max(1.0, osl - 1)
    rps = 1000.0 / (steps * base / batches + variable)
    itl = base + batches * variable / steps
    chunks = np.ceil(isl / np.maximum(1.0, max_batch_tokens - batches))
    busy = np.minimum(rps * variable / 1000.0, 0.999)  # share of time spent prefilling
    ttft = itl / 2 + chunks * base + variable + busy / (2 * (1 - busy)) * variable
    ok = (itl <= itl_ms) & (ttft <= ttft_ms)
    if not ok.any():
        return OperatingPoint(
            role="agg", feasible=False, reason=f"at batch 1: ITL {itl[0]:.1f} ms, TTFT {ttft[0]:.0f} ms"
        )
    best = int(np.argmax(np.where(ok, rps, -1.0)))
    b = float(batches[best])
    alone_ttft = float(ttft[best])
    return OperatingPoint(
        role="agg",
        feasible=True,
        requests_per_s=float(rps[best]),
        requests_per_s_per_gpu=float(rps[best]) / model.gpus_per_engine,
        batch=int(b),
        ttft_ms=alone_ttft,
        itl_ms=float(itl[best]),
        kv_high=b * (isl + osl) / model.max_kv_tokens,
        queue_tokens_per_replica=max(0.0, (ttft_ms / alone_ttft - 1.0)) * isl,
    )
