"""Drains: when the GPUs a pool no longer may run are confirmed free.

A pool with ``pending_release = D`` holds ``usage > grant`` until its agent shows it has seen
decision ``D`` (or a later one) and fits the grant:

* a report with ``applied_decision_id >= D``: ``usage`` becomes what it reports in use
  (ready + starting + draining), never below the grant;
* an ``AckDrained`` for decision ``>= D``: the drain is done, ``usage`` drops to the grant.

An older report (sent before the agent saw ``D``) can only raise ``usage``. A lapsed lease sets
``D`` to a decision not yet issued (:mod:`.leases`), so only an agent that has heard from the
planner again can free what its pods may still hold.
"""

from __future__ import annotations

from global_planner.service.ledger import PoolState


def confirm(pool: PoolState, in_use: int) -> None:
    """The agent holds ``in_use`` replicas, having seen the latest reduction."""
    pool.usage = max(pool.grant, in_use)
    if pool.usage == pool.grant:
        pool.pending_release = None


def apply_report(pool: PoolState, in_use: int, applied_decision_id: int) -> None:
    """A report's replica count (already capped by :func:`.ledger.countable`)."""
    if pool.pending_release is None or applied_decision_id >= pool.pending_release:
        confirm(pool, in_use)
    else:
        pool.usage = max(pool.usage, in_use)


def apply_drained(pool: PoolState, decision_id: int) -> None:
    """An AckDrained: the drain down to ``decision_id``'s targets is complete."""
    if pool.pending_release is not None and decision_id >= pool.pending_release:
        confirm(pool, pool.grant)


def cut(pool: PoolState, target: int, decision_id: int) -> int | None:
    """The pending release after a round grants ``target <= usage``: a further cut needs its own
    confirmation; otherwise the pool keeps waiting for the one it has."""
    if target >= pool.usage:
        return None
    further = target < pool.grant or pool.pending_release is None
    return decision_id if further else pool.pending_release
