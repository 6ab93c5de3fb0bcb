"""Engine knobs per pool: the settings with which the fewest GPUs meet the SLA, judged by the
agent's own capacity model on the (corrected) profile, at the load and lengths it observes.

Candidates, per pool (the other pools keep the knobs in force):

- **decode**: ``max_num_seqs`` = the cap in force, the configured one, or, where higher than that,
  the engine default or the largest batch whose ITL at the mean context meets 90% of the target
  (:func:`fleet_planner.perf.operating.decode_point`). Caps never go below the configured one
  (see :func:`_caps`).
- **aggregated**: ``max_batch_tokens`` (the chunk budget) from 512 to 16384 tokens, with the cap in
  force, the configured one, or the batch of :func:`~fleet_planner.perf.operating.agg_point` where
  that is higher. A small budget spreads a long prompt over many iterations, so a short answer
  running beside it is stalled less; it also makes the prompt itself take more iterations (TTFT)
  and leaves less prefill throughput.
- **prefill** pools keep their budget (without decodes beside them a larger budget only batches
  more prompts together).

Each candidate's curve comes from the same model the agent sizes with
(:meth:`local_agent.decide.sizer.Sizer.curves_at`), so a knob is chosen only when the sizing that
follows needs fewer GPUs (or as many, with a clearly higher attainment, or, for a decode cap, as
many with a replica serving ``THROUGHPUT_MARGIN`` more requests within the ITL target: at one rate
the sizing is whole replicas, and the cap that would save one at the next peak is better in force
before it). :class:`KnobTuner` runs this every ``knob_interval_s`` and changes knobs only on such
a gain (hysteresis: knobs do not flap with noise; a corrected profile or lengths moving by more
than 10% bring the next choice forward, to a quarter of the interval at the earliest); the
connector applies them (the simulator at once, local processes by a drained restart one replica at
a time, Kubernetes in the DGD spec for the next rollout).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from fleet_planner.knobs import DEFAULT_MAX_NUM_SEQS, EngineKnobs
from fleet_planner.perf.operating import agg_point, decode_point
from fleet_planner.planning import SLA, DeploymentSpec, PoolRole
from local_agent.decide.elapsed import Elapsed
from local_agent.decide.intake import Lengths
from local_agent.decide.sizer import Sizer
from local_agent.sizing import EngineModel

CHUNK_BUDGETS = tuple(2**k for k in range(9, 15))  # 512 .. 16384 tokens
KV_BOUND = 1 << 20  # no cap of its own: the batch range is bounded by the KV cache
ATTAINMENT_MARGIN = 0.002  # at equal GPUs, a change must gain this much attainment
# At equal GPUs and attainment, a decode cap that lets a replica serve this much more within the ITL
# target is taken: the sizing at one rate is whole replicas (a cap that lets a replica carry more
# may need as many at this rate and fewer at the next peak), and a slot that is not there turns
# into a wait for it, which the model underestimates (the short-chat example: 9% more per replica
# at 418 sequences than at 256, and 2% of requests waiting for a slot at the busy start).
THROUGHPUT_MARGIN = 0.05
MATERIAL_SHIFT = 0.1  # a profile or length change this large re-chooses knobs early
# Caps are sized for this share of the ITL target: a batch exactly at the limit for the mean context
# misses it whenever the running contexts are longer than average (measured: a cap at the limit let
# the agent shrink to one decode replica that then missed TTFT and ITL on the next ramp).
ITL_MARGIN = 0.9


class KnobChoice(BaseModel):
    """The knobs chosen for a pool and why."""

    model_config = ConfigDict(frozen=True)

    knobs: EngineKnobs
    reason: str


def candidates(
    model: EngineModel,
    role: PoolRole,
    sla: SLA,
    mean_input: float,
    mean_output: float,
    current: EngineKnobs,
    configured: EngineKnobs | None = None,
) -> list[EngineKnobs]:
    """The knob settings worth comparing for one pool (``current`` first); caps never go below the
    ``configured`` one (default: ``current``)."""
    floor = (configured or current).max_num_seqs
    if role == "decode":
        itl = sla.itl_ms * ITL_MARGIN
        point = decode_point(model, mean_input, mean_output, itl, max_num_seqs=KV_BOUND)  # type: ignore[arg-type]
        caps = _caps(current.max_num_seqs, floor, DEFAULT_MAX_NUM_SEQS, point.batch)
        return _unique(current.model_copy(update={"max_num_seqs": cap}) for cap in caps)
    if role == "agg":
        itl = sla.itl_ms * ITL_MARGIN
        point = agg_point(model, mean_input, mean_output, sla.ttft_ms, itl, max_num_seqs=KV_BOUND)  # type: ignore[arg-type]
        caps = _caps(current.max_num_seqs, floor, point.batch)
        budgets = [current.max_batch_tokens, *CHUNK_BUDGETS]
        return _unique(EngineKnobs(max_num_seqs=cap, max_batch_tokens=budget) for cap in caps for budget in budgets)
    return [current]


def _caps(current: int, floor: int, *caps: int | None) -> list[int]:
    """``current``, the configured ``floor`` and the other caps above it. A cap never goes below
    the configured one: a lower cap turns ITL misses into waits for a slot (TTFT), which the sizing
    model underestimates (measured on the diurnal example: a chat decode cap of 112 instead of 256
    gave 98.90% with 154.1 GPU-hours, against 99.65% with 150.2). A cap the tuner raised may come
    back down to it."""
    return [current, floor, *(cap for cap in caps if cap is not None and cap > floor)]


def _unique(items: Iterable[EngineKnobs]) -> list[EngineKnobs]:
    return list(dict.fromkeys(items))


class KnobTuner:
    """The knobs in force for one deployment's pools, re-chosen every ``interval_s``, or after a
    quarter of it when the (corrected) profile or the lengths moved by more than
    :data:`MATERIAL_SHIFT` at the knobs in force."""

    def __init__(self, spec: DeploymentSpec, interval_s: float, elapsed: Elapsed):
        self.knobs: dict[PoolRole, EngineKnobs] = {role: EngineKnobs.of(pool) for role, pool in spec.pools.items()}
        self.configured = dict(self.knobs)
        self.reasons: dict[PoolRole, str] = dict.fromkeys(spec.pools, "as configured")
        self.interval_s = interval_s
        self.elapsed = elapsed
        self._last_s = -math.inf
        self._seen: dict[PoolRole, tuple[float, float]] = {}

    def _fingerprint(self, sizer: Sizer, lengths: Lengths) -> dict[PoolRole, tuple[float, float]]:
        """Per pool, what the model predicts where the knobs act: ITL at a mid-size batch (the cap
        or 32, whichever is smaller) and the mean context, and TTFT of the mean prompt."""
        isl, osl = lengths[0].mean, lengths[1].mean
        return {
            role: (
                float(sizer.models[role].itl_ms(float(min(32, self.knobs[role].max_num_seqs)), isl + osl / 2)),
                float(sizer.models[role].ttft_ms(isl)),
            )
            for role in sizer.spec.pools
        }

    def _due(self, now_s: float, seen: dict[PoolRole, tuple[float, float]]) -> bool:
        if self.elapsed.reached(now_s, self._last_s, self.interval_s):
            return True
        shifted = any(
            abs(new - old) > MATERIAL_SHIFT * old
            for role, values in seen.items()
            for new, old in zip(values, self._seen.get(role, values), strict=True)
        )
        return shifted and self.elapsed.reached(now_s, self._last_s, self.interval_s / 4)

    def spec_with(self, spec: DeploymentSpec, role: PoolRole, knobs: EngineKnobs) -> DeploymentSpec:
        """``spec`` with one pool's knobs replaced: what sizing must use once they are in force."""
        pool = spec.pools[role].model_copy(update=knobs.model_dump())
        return spec.model_copy(update={"pools": {**spec.pools, role: pool}})

    def retune(self, now_s: float, sizer: Sizer, rate: float, lengths: Lengths) -> dict[PoolRole, KnobChoice]:
        """Re-choose every pool's knobs at ``rate`` (due every ``interval_s``); the pools whose
        knobs changed, with why. The sizer's spec is updated to the new knobs."""
        seen = self._fingerprint(sizer, lengths)
        if rate <= 0 or not self._due(now_s, seen):
            return {}
        self._last_s = now_s
        self._seen = seen
        changed: dict[PoolRole, KnobChoice] = {}
        for role in sizer.spec.pools:
            current = self.knobs[role]
            model = sizer.models[role]
            sla = sizer.spec.sla
            options = candidates(model, role, sla, lengths[0].mean, lengths[1].mean, current, self.configured[role])
            if len(options) < 2:
                continue
            scored = [(self._cost(sizer, role, knobs, rate, lengths), knobs) for knobs in options]
            (gpus, attainment), best = min(scored, key=lambda item: (item[0][0], -item[0][1]))
            base_gpus, base_attainment = scored[0][0]
            gain = ""
            if not (gpus < base_gpus or (gpus == base_gpus and attainment >= base_attainment + ATTAINMENT_MARGIN)):
                wider = self._more_throughput(sizer, role, lengths, scored)
                if wider is None:
                    continue
                (gpus, attainment), best = wider
                gain = "; as many GPUs, more requests per replica within the ITL target"
            if best == current:
                continue
            reason = (
                f"{best}: {gpus} GPUs reach {attainment:.1%} at {rate:.2f} req/s "
                f"(with {current}: {base_gpus} GPUs, {base_attainment:.1%}){gain}"
            )
            self.knobs[role] = best
            self.reasons[role] = reason
            sizer.spec = self.spec_with(sizer.spec, role, best)
            changed[role] = KnobChoice(knobs=best, reason=reason)
        return changed

    @staticmethod
    def _more_throughput(
        sizer: Sizer, role: PoolRole, lengths: Lengths, scored: list[tuple[tuple[int, float], EngineKnobs]]
    ) -> tuple[tuple[int, float], EngineKnobs] | None:
        """Among decode candidates as good as the knobs in force (``scored[0]``: as few GPUs, at
        least the attainment), the one whose replica serves the most requests within the ITL
        target (with its margin), if that is ``THROUGHPUT_MARGIN`` more than now."""
        if role != "decode":
            return None
        (base_gpus, base_attainment), current = scored[0]
        isl, osl, itl = lengths[0].mean, lengths[1].mean, sizer.spec.sla.itl_ms * ITL_MARGIN

        def per_replica(knobs: EngineKnobs) -> float:
            point = decode_point(sizer.models[role], isl, osl, itl, max_num_seqs=knobs.max_num_seqs)  # type: ignore[arg-type]
            return point.requests_per_s if point.feasible and point.requests_per_s is not None else 0.0

        equal = [item for item in scored[1:] if item[0][0] == base_gpus and item[0][1] >= base_attainment - 1e-9]
        if not equal:
            return None
        best, best_rps = max(((item, per_replica(item[1])) for item in equal), key=lambda pair: pair[1])
        return best if best_rps >= (1.0 + THROUGHPUT_MARGIN) * per_replica(current) else None

    def _cost(
        self, sizer: Sizer, role: PoolRole, knobs: EngineKnobs, rate: float, lengths: Lengths
    ) -> tuple[int, float]:
        """GPUs the sizing needs with ``knobs`` on ``role``, and the attainment it then expects."""
        spec = self.spec_with(sizer.spec, role, knobs)
        curves = sizer.curves_at(rate, lengths, spec=spec)
        counts = sizer.sized(curves)
        gpus = sum(counts[r] * spec.pools[r].gpus_per_replica for r in counts)
        attainment = 1.0
        for r, curve in curves.items():
            attainment *= curve.attainment[min(counts[r], len(curve.attainment) - 1)]
        return gpus, attainment
