"""A replica's nominal request rate: the one-number capacity used to weigh deployments against
each other (router split, planning shares), not to size pools (that is ``local_agent.sizing``)."""

from __future__ import annotations

import math

from fleet_planner.knobs import DEFAULT_MAX_NUM_SEQS
from fleet_planner.perf.model import PerfModel

REFERENCE_INPUT_TOKENS = 1024.0  # lengths assumed before any request was seen
REFERENCE_OUTPUT_TOKENS = 256.0


def replica_rps(
    model: PerfModel,
    role: str,
    mean_input: float,
    mean_output: float,
    itl_target_ms: float,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
) -> float:
    """Requests/s one replica sustains at these mean lengths: prefill back to back, decode at the
    largest power-of-two batch within the ITL target and the KV cache; aggregated combines both."""
    prefill_rps = 1000.0 / max(1e-6, model.ttft_ms(mean_input)) if mean_input > 0 else math.inf
    context = mean_input + mean_output / 2
    batch = 1
    cap = min(max_num_seqs, max(1, int(model.max_kv_tokens / max(1.0, mean_input + mean_output))))
    while batch < cap and model.itl_ms(batch * 2, context) <= itl_target_ms:
        batch *= 2
    decode_rps = batch * 1000.0 / (model.itl_ms(batch, context) * max(1.0, mean_output))
    if role == "prefill":
        return prefill_rps
    if role == "decode":
        return decode_rps
    return 1.0 / (1.0 / prefill_rps + 1.0 / decode_rps)
