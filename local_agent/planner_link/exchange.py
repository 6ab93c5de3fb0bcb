"""One tick of the agent-planner exchange — report, grant, apply, acknowledge — written once and
driven by the live runtime (``local_agent.runtime``) and by the simulator's ``global`` policy
(``fleet_sim.adapters.planner``) alike. What each step decides is :class:`AgentSession`'s (pure);
this function only moves the messages and calls ``apply``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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
    if effects.apply is not None:
        await apply(effects.apply)
        if effects.ack is not None:
            await client.ack_applied(effects.ack, effects.apply)
    return effects
