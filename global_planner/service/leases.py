"""Leases: only allocation rounds issue or extend them; what happens when one lapses.

A lapsed pool's grant drops to ``min(fallback_replicas, usage)`` — exactly what the agent contract
lets it fall back to (see ``local_agent.planner_link.client.effective_targets``) — but its
``usage`` stays counted: the agent may be dead while its pods live on, and the planner cannot tell
a partition from a crash. The GPUs return only when something confirms they are free (a report
from the agent after it heard from the planner again, or an AckDrained; :mod:`.drains`).

A deployment silent past its lease that holds nothing is forgotten, so junk or retired
registrations do not pile up in memory and in every audit record.
"""

from __future__ import annotations

from global_planner.service.ledger import DeploymentState


def lapse(dep: DeploymentState, next_decision_id: int) -> None:
    """Fall back to the floor; hold the rest until a decision issued after now is acknowledged."""
    dep.expired = True
    dep.routing, dep.admission_rps = {}, None
    for pool in dep.pools.values():
        kept = min(pool.spec.fallback_replicas, pool.usage)
        pool.grant = kept
        pool.pending_release = next_decision_id if pool.usage > kept else None
        pool.allocated = None
        held = f"; {pool.usage - kept} more held until the agent confirms them free" if pool.usage > kept else ""
        pool.reason = f"lease expired at {dep.lease_expires_s:.1f}: fallback {kept}{held}"


def expire(deployments: dict[str, DeploymentState], now: float, next_decision_id: int, lease_s: float) -> bool:
    """Lapse due leases and forget silent empty deployments; True when anything changed."""
    changed = False
    for name, dep in list(deployments.items()):
        if now < dep.lease_expires_s:
            continue
        if not dep.expired:
            lapse(dep, next_decision_id)
            changed = True
        silent = dep.last_contact_s is None or now - dep.last_contact_s >= lease_s
        if silent and not dep.holds():
            del deployments[name]
            changed = True
    return changed


def bidding(dep: DeploymentState, now: float, liveness_s: float) -> bool:
    """Live agents with a report bid in a round; everyone else's usage is held off the budget."""
    return (
        dep.session_id is not None
        and dep.report is not None
        and dep.last_contact_s is not None
        and now - dep.last_contact_s <= liveness_s
    )
