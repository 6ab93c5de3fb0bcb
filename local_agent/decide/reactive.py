"""The load (reactive) loop: ±1 replica from what the engines show now."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from fleet_planner.planning import SLA, PoolObservation, PoolRole
from local_agent.decide.intake import Lengths
from local_agent.decide.options import AgentOptions
from local_agent.decide.sizer import Latency, Sizer
from local_agent.models import DecisionReason

R = DecisionReason


class Proposal(NamedTuple):
    """What one concern wants for a pool, and why."""

    wanted: int
    reason: DecisionReason
    detail: str


class Pressure(NamedTuple):
    """What in a window asks for one replica more (``reason``, None when nothing does) and why; with
    no reason, ``detail`` names a signal seen and not counted (an operator reading the decision
    should see why a miss or a backlog added nothing), else it is empty."""

    reason: DecisionReason | None
    detail: str


NO_PRESSURE = Pressure(None, "")


def breaches(role: PoolRole, obs: PoolObservation, sla: SLA) -> list[tuple[Latency, str]]:
    """The latencies this window missed at p90, each with why (TTFT on the entry side, ITL on the
    exit side)."""
    found: list[tuple[Latency, str]] = []
    if role in ("prefill", "agg") and obs.ttft_ms is not None and obs.ttft_ms.p90 > sla.ttft_ms:
        found.append(("ttft", f"p90 TTFT {obs.ttft_ms.p90:.0f} ms > {sla.ttft_ms:.0f} ms"))
    if role in ("decode", "agg") and obs.itl_ms is not None and obs.itl_ms.p90 > sla.itl_ms:
        found.append(("itl", f"p90 ITL {obs.itl_ms.p90:.1f} ms > {sla.itl_ms:.1f} ms"))
    return found


def sla_breach(role: PoolRole, obs: PoolObservation, sla: SLA) -> str | None:
    """Why this window missed the SLA at p90 (the ITL's reason where both missed)."""
    found = breaches(role, obs, sla)
    return found[-1][1] if found else None


def near_miss(role: PoolRole, obs: PoolObservation, sla: SLA) -> str | None:
    """Why one replica fewer would, to first order, miss: the observed p90 TTFT or ITL scaled by
    the load each survivor would carry (``ready / (ready - 1)``) is over the target."""
    if obs.ready < 2:
        return None
    scale = obs.ready / (obs.ready - 1)
    found = None
    if role in ("prefill", "agg") and obs.ttft_ms is not None and obs.ttft_ms.p90 * scale > sla.ttft_ms:
        found = f"p90 TTFT {obs.ttft_ms.p90:.0f} ms x {scale:.2f} > {sla.ttft_ms:.0f} ms"
    if role in ("decode", "agg") and obs.itl_ms is not None and obs.itl_ms.p90 * scale > sla.itl_ms:
        found = f"p90 ITL {obs.itl_ms.p90:.1f} ms x {scale:.2f} > {sla.itl_ms:.1f} ms"
    return found


def pressure(
    role: PoolRole,
    obs: PoolObservation,
    options: AgentOptions,
    sla: SLA,
    backlog_ttft_ms: Callable[[float], float] | None = None,
    relief: Callable[[], Mapping[Latency, float]] | None = None,
    transient: Callable[[float], bool] | None = None,
) -> Pressure:
    """What in this window asks for one replica more: the SLA missed at p90 (``target: sla``),
    or (``sla`` and ``latency``) a prefill backlog or KV use over its threshold. With
    ``target: sla`` a backlog counts only when a prompt arriving behind it would miss the TTFT
    target (``backlog_ttft_ms``: the model's TTFT behind that many tokens per replica): long
    prompts make a large backlog that clears well within the target, and adding a replica for
    it was a scale-up the SLA never needed. Likewise a missed latency counts only where one
    replica more shortens its p90 by at least ``breach_relief`` (``relief``: the model's
    shortening of each, at the observed rate): long prompts at a low load miss a TTFT target by
    their own prefill time, which no replica shortens, and a replica added for it is one the SLA
    cannot use and the descent takes back later (a reversal); a backlog behind them still counts.
    Nor does a backlog (of so many tokens per replica) that ``transient`` says the ready replicas
    clear before a new replica could start: that replica would arrive after the burst it was
    added for."""
    if obs.ready == 0 and obs.starting == 0 and obs.pending == 0 and (obs.queued_requests or 0) > 0:
        # Nothing to measure a latency or a backlog on, and nothing on its way: whatever the
        # forecast says, requests are waiting for a pool that has no replica.
        return Pressure(R.REACTIVE_QUEUE, f"{obs.queued_requests} requests wait with no replica")
    waived = NO_PRESSURE
    if options.target == "sla":
        missed = breaches(role, obs, sla)
        shortened = relief() if missed and relief is not None else None
        if missed and (shortened is None or any(shortened[latency] >= options.breach_relief for latency, _ in missed)):
            return Pressure(R.REACTIVE_SLA, missed[-1][1])
        if missed and shortened is not None:
            latency, why = missed[-1]
            waived = Pressure(None, f"{why}, but one replica more shortens it by {shortened[latency]:.1%}")
    if options.target not in ("sla", "latency"):
        return waived
    found = waived
    if role in ("prefill", "agg") and obs.queued_prefill_tokens is not None:
        backlog = obs.queued_prefill_tokens / max(obs.ready, 1)
        if backlog > options.queue_tokens_per_replica:
            wait = backlog_ttft_ms(backlog) if options.target == "sla" and backlog_ttft_ms else None
            if wait is not None and wait <= sla.ttft_ms:
                pass  # a prompt arriving behind it still meets the target
            elif transient is not None and transient(backlog):
                detail = f"prefill backlog {backlog:.0f} tokens per replica clears before a replica could start"
                found = Pressure(None, detail)
            else:
                found = Pressure(R.REACTIVE_QUEUE, f"prefill backlog {backlog:.0f} tokens per replica")
    if role in ("decode", "agg") and obs.active_kv_tokens is not None and obs.kv_capacity_tokens:
        usage = obs.active_kv_tokens / obs.kv_capacity_tokens
        if usage > options.kv_high:
            found = Pressure(R.REACTIVE_KV, f"KV use {usage:.0%}")
    return found


def reactive(
    role: PoolRole,
    obs: PoolObservation,
    pressed: Pressure,
    current: int,
    observed_rate: float | None,
    lengths: Lengths | None,
    options: AgentOptions,
    sizer: Sizer,
) -> Proposal | None:
    """One replica more under ``pressed`` (this window's :func:`pressure`, which the caller also
    feeds to the miss memory) or, ``target: throughput``, when the observed load needs more; one
    fewer otherwise (the scale-down guard decides whether that is safe). Nothing while added
    replicas still start (they will absorb the load) — but never a skipped tick."""
    up = pressed
    if options.target == "throughput" and observed_rate is not None and lengths is not None:
        sized = sizer.sized(sizer.curves_at(observed_rate, lengths))[role]
        if sized > current:
            up = Pressure(R.REACTIVE_SLA, f"observed load needs {sized} replicas")
    if up.reason is not None:
        if obs.starting > 0:
            return None
        return Proposal(current + (options.max_step_up or 1), up.reason, up.detail)
    if observed_rate is not None and lengths is not None and current > 0:
        return Proposal(current - 1, R.REACTIVE_DOWN, "load allows one replica fewer")
    return None
