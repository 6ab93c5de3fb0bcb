"""One tick of the agent-planner exchange — report, grant, apply, acknowledge — and what an agent
sends between its decisions, written once and driven by the live runtime (``local_agent.runtime``)
and by the simulator's ``global`` policy (``fleet_sim.adapters.planner``) alike. What each step
decides is :class:`AgentSession`'s (pure); these functions only move the messages and call
``apply``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from fleet_planner.planning import PoolRole
from local_agent.planner_link.client import PlannerClient
from local_agent.session import Outgoing, TickEffects, TickInput

# Hands a report to the transport, or holds it back (the simulator's delayed delivery): returns
# the report to send now (perhaps an older one), or None to send nothing this tick.
Transit = Callable[[Outgoing], Outgoing | None]


async def exchange(
    client: PlannerClient,
    tick: TickInput,
    apply: Callable[[dict[str, int]], Awaitable[None]],
    transit: Transit | None = None,
) -> TickEffects:
    """Report ``tick``'s decision, take the planner's grant (or the lease/floor fallback), apply
    it unless advisory, then acknowledge the fresh grant that was applied."""
    session = client.session
    report = session.report(tick)
    outgoing = transit(report) if transit is not None else report
    answered = outgoing is not None and await client.send(outgoing.pools, outgoing.forecast, outgoing.observed)
    effects = session.effects(tick, answered=answered)
    await _apply(client, effects, apply)
    return effects


async def _apply(
    client: PlannerClient, effects: TickEffects, apply: Callable[[dict[str, int]], Awaitable[None]]
) -> None:
    """Apply the grant unless advisory, then acknowledge a fresh one."""
    if effects.apply is not None:
        await apply(effects.apply)
        if effects.ack is not None:
            await client.ack_applied(effects.ack, effects.apply)


async def confirm_drains(client: PlannerClient, tick: TickInput) -> None:
    """Between decisions: tell the planner (``AckDrained``) of each pool that has drained to the
    grant in force while the planner still counts its old replicas, so the GPUs it freed can go to
    an agent waiting for them before this agent's next report."""
    session = client.session
    running = {role: counts.in_use for role, counts in tick.running.items()}
    freed = session.confirm_drains(tick.now_s, running)
    for role, gpus in sorted(freed.items()):
        assert session.lease is not None  # confirm_drains finds none without one
        await client.ack_drained(session.lease.decision_id, cast(PoolRole, role), gpus)


async def report_while_waiting(
    client: PlannerClient, tick: TickInput, apply: Callable[[dict[str, int]], Awaitable[None]]
) -> TickEffects | None:
    """Between decisions: while the planner's last answer says GPUs it allocated us wait for
    other pools' drains, send ``tick``'s (the last) decision again with the counts of now, so the
    planner grants them as soon as they are free (None: not waiting, nothing sent). The planner
    says so only where that report asked for no more than its round allocated, so sending it again
    asks for nothing the round refused."""
    if not client.session.waiting(tick.now_s):
        return None
    return await exchange(client, tick, apply)


async def refresh_grant(
    client: PlannerClient, tick: TickInput, apply: Callable[[dict[str, int]], Awaitable[None]]
) -> TickEffects | None:
    """Between decisions, where the grant in force is not what ``tick``'s (the last) decision
    asked: fetch the targets without bidding, and apply and acknowledge a newer decision (a round
    another agent's report or the planner's timer ran), so it runs seconds after it was made
    rather than at the next decision. None: nothing newer, nothing done."""
    session = client.session
    lease = session.lease_in_force(tick.now_s)
    if lease is None:
        return None
    if all(lease.replicas.get(pool.role) == pool.target for pool in tick.decision.pools):
        return None
    known = lease.decision_id
    if not await client.refresh() or session.lease is None or session.lease.decision_id <= known:
        return None
    effects = session.effects(tick, answered=True)
    await _apply(client, effects, apply)
    return effects


async def catch_up(
    client: PlannerClient, tick: TickInput, apply: Callable[[dict[str, int]], Awaitable[None]]
) -> TickEffects | None:
    """Between decisions, after :func:`confirm_drains`: the last decision again while the planner
    says we wait for GPUs it allocated (:func:`report_while_waiting`), else the targets without a
    bid where the grant is not the ask (:func:`refresh_grant`). None: nothing new applied."""
    effects = await report_while_waiting(client, tick, apply)
    return effects if effects is not None else await refresh_grant(client, tick, apply)
