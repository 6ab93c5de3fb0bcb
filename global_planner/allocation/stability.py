"""Stable grants: a pool's grant moves towards its bid, and against it only when that pays.

These terms shape each pool's value before either solver sees it (all pure, per round):

* **Bid check** (:func:`checked_bid`): a bid whose rate (``demand_weight``, the agent's forecast)
  exceeds the rate the agent observed by more than ``bid_allowance`` (plus the Poisson noise of
  one 30 s window) is valued at the capped rate: its curve is stretched as if each replica carried
  ``demand_weight / cap`` times the load (capacity taken as linear in replicas), and
  ``wanted_replicas`` shrinks alike, but never below what the pool holds: the check stops a
  tenant winning GPUs by inflating a forecast, not a pool keeping them through one quiet window
  of a bursty load (that drained and refilled pools: 20.5 reversals per hour on a matrix cell).
  A genuine ramp within the allowance is untouched.
* **Valued at the proven load** (:func:`valued_at_evidence`), the check's mirror: a pool observed
  short whose proven load exceeds its bid's rate is valued at that load (its curve squeezed
  alike), since a bid's curve is the agent's last sizing and on a ramp prices a starved pool at a
  load it has left behind.
* **Towards the bid** (:func:`want_floor`, and the ``max`` cut in ``build_problem``): a pool is
  never granted more than its agent wants (a grant above it would be forced on the agent), and
  every replica up to ``wanted_replicas`` is worth at least one value quantum, so when nothing
  competes for the GPUs every agent gets exactly what it would take alone (``global`` = ``local``).
* **Stale bids hold** (:func:`held_if_stale`): a bid for less than the current grant, made before
  the agent ran that grant, does not lower it, and a bid for more than a grant the agent still runs
  more than (it has not applied the cut yet) does not raise it (grants lag bids by a round; see the
  function).
* **Contest only on observed shortage** (:func:`contested_endpoints`, :func:`headroom_only`,
  :func:`evidence_need`): a pool's curve above its current grant counts only while its endpoint is
  *observed* short — some pool of it serves more than ``SHORT_UTILISATION`` of what its running
  replicas carry (the agent's own per-replica capacity) — and then only up to the replicas its own
  observed load needs. Otherwise the replicas it asks for beyond its grant are headroom (forecast
  uncertainty, a ramp not yet seen) and worth one value quantum each: they get idle GPUs, never
  GPUs another pool holds and wants. The agents' curves average over their forecast's uncertainty
  and were measured to credit a pool's first replicas with far less than they served
  (soft-shortage); moving GPUs on such a curve against a running pool lost more than it gained.
  First come keeps what it holds until the load itself proves another pool short.
* **Never worse than first come** (:func:`protected_lows`, :func:`first_claims`): what a pool holds
  and wants is never taken by a pool of lower priority (only by one of at least its priority that
  is observed short, and then by value, paying the cut cost); idle GPUs go to asks at once, by
  priority, before any value is weighed.
* **Cost of change** (:func:`discounted` and :func:`cut_cost`): a replica added now serves
  nothing for ``startup_s``, so its value over the horizon ``horizon_s`` a grant is expected to
  stand is discounted by ``startup_s / horizon_s``; a replica taken from a pool below what it
  holds and wants costs that pool its marginal value times ``startup_s / horizon_s + hysteresis``
  (its drain, the cold start it pays when it gets the replica back, and a dead band). Together a
  move between two pools happens only when the gainer's value, net of its cold start, beats the
  loser's loss plus its cut cost; a steady bid therefore gives a steady grant, and two pools of
  almost equal marginal value no longer trade replicas every round.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import groupby

from global_planner.allocation.models import Driver, PoolDemand

_OBSERVATION_WINDOW_S = 30.0  # the report interval: the noise of one observed rate is sqrt(rate / window)
_NOISE_SIGMAS = 3.0
_MAX_DISCOUNT = 0.5  # a cold start longer than half the horizon still leaves a move worth something
# A pool is short once its load exceeds this share of what its running replicas carry at the SLA
# (the agent's own per-replica capacity). This is only the bar for taking GPUs others hold and
# want: idle GPUs go to asks at once without it (:func:`first_claims`). Measured on the shortage
# example with the descending agent (docs/results.md): at 1.0 acme's H200 decode pool waited
# ~15 minutes of rising latency for beta's GPU (acme 98.03%), at 0.95 99.20%, at 0.9 99.79%. With
# the earlier agent, 0.85 let one window at 87% take one of beta's two H200s on soft-shortage seeds
# 6 and 7 for 0.0-0.2 point of acme and 4 of beta; with the descending agent soft-shortage does not
# contend at all and is identical at 0.9, 0.95 and 1.0.
SHORT_UTILISATION = 0.9
# The gateway sheds an endpoint's excess only past real overload: some pool serving more than
# this share of what its running replicas carry. Shedding from 0.85 on turned away requests a
# pool at its nominal capacity still served (soft-shortage: 24.8k of beta's requests shed against
# 5.2k at 1.25, 92.46% -> 93.48% total), while shortage's beta, at twice its capacity, still sheds.
OVERLOAD_UTILISATION = 1.25
# A pool its agent reports late (``PoolDemand.late_rps_per_replica``) counts as carrying that load
# per replica, but never less than this share of its nominal capacity (:func:`_evidence`).
LATE_CAPACITY_FLOOR = 0.5


def checked_bid(pool: PoolDemand, allowance: float | None) -> tuple[PoolDemand, str | None]:
    """The bid valued at no more than the observed rate allows, and a note when it was capped."""
    observed, rate = pool.observed_rps, pool.demand_weight
    if allowance is None or observed is None or rate <= 0:
        return pool, None
    cap = observed * (1.0 + allowance) + _NOISE_SIGMAS * math.sqrt(observed / _OBSERVATION_WINDOW_S)
    if rate <= cap or cap <= 0:
        return pool, None
    stretch = rate / cap
    stretched = _at_load(pool.curve, stretch)
    wanted = pool.wanted_replicas
    if wanted is not None:
        held = min(wanted, pool.current_replicas)  # the check stops winning GPUs, not holding them
        wanted = max(pool.min_replicas, held, min(wanted, math.ceil(wanted / stretch - 1e-9)))
    note = f"bid capped: {rate:.2f} rps bid, {observed:.2f} rps observed, valued at {cap:.2f} rps"
    return pool.model_copy(update={"curve": stretched, "demand_weight": cap, "wanted_replicas": wanted}), note


def valued_at_evidence(pool: PoolDemand, need: int | None) -> tuple[PoolDemand, str | None]:
    """The mirror of :func:`checked_bid`: a pool whose proven load (:func:`evidence_rps`) needs
    more replicas than it holds (``need``, :func:`evidence_need`) and exceeds the rate its bid was
    made at is valued at that proven load, its curve squeezed as if each replica carried
    ``proven / demand_weight`` times the load. A bid's curve is its agent's last sizing: on a ramp
    it prices a starved pool at a load it has left behind (on ``day-clients d1+d4 supply=0.67`` the
    high-priority prefill pool, proven at 7.4 req/s, bid a curve made at 4.5 that was worth 99.8%
    at the two replicas it held, and lost every trade for a third). Contested pools only."""
    if need is None or need <= pool.current_replicas or pool.demand_weight <= 0:
        return pool, None
    proven = evidence_rps(pool)
    if proven is None or proven <= pool.demand_weight:
        return pool, None
    note = f"valued at its proven load: {proven:.2f} rps proven, bid at {pool.demand_weight:.2f} rps"
    curve = _at_load(pool.curve, pool.demand_weight / proven)
    return pool.model_copy(update={"curve": curve, "demand_weight": proven}), note


def _at_load(curve: list[float], stretch: float) -> list[float]:
    """The curve at another load, capacity taken as linear in replicas: count ``k`` is worth what
    ``k * stretch`` replicas were (interpolated; ``stretch`` = bid load / new load)."""
    last = len(curve) - 1
    out = []
    for k in range(len(curve)):
        x = min(k * stretch, float(last))
        low = int(x)
        high = min(low + 1, last)
        out.append(curve[low] + (curve[high] - curve[low]) * (x - low))
    return out


def evidence_rps(pool: PoolDemand) -> float | None:
    """The load the pool's observations prove: the rate both observed over the last window and
    forecast (``demand_weight``; a one-window spike the forecast does not share is noise: on
    soft-shortage, trading GPUs on such spikes cost 0.8 point), plus the backlog left waiting,
    cleared over one window (requests that arrived and were not carried are load too, and while a
    pool is starved its observed rate is all the forecast learns from, so the forecast lags).
    The backlog counts for at most the observed rate: clearing it then needs twice the load, and a
    tenant that inflates its queue report wins no more than a doubled rate, which the gateway can
    check. None when the report lacks the rate (no evidence either way)."""
    if pool.observed_rps is None:
        return None
    return min(pool.observed_rps, pool.demand_weight) + _counted_backlog(pool)


def _counted_backlog(pool: PoolDemand) -> float:
    """The backlog as :func:`evidence_rps` counts it: at most the observed rate."""
    return min(pool.backlog_rps or 0.0, pool.observed_rps or 0.0)


def _running(pool: PoolDemand) -> int:
    """Replicas the pool ran when its agent bid (ready or starting), else its grant."""
    return pool.running_replicas if pool.running_replicas is not None else pool.current_replicas


def _evidence(pool: PoolDemand, count_late: bool = True) -> tuple[float, float] | None:
    """The pool's proven load (:func:`evidence_rps`) and its per-replica capacity, or None when
    the report lacks either (no evidence either way). The capacity is the agent's nominal one, or
    (``count_late``) the load per replica at which the pool has been late for several windows in
    a row, when lower: the model is wrong there, and a pool late at its load is short whatever its
    nominal capacity says (``bursty-fit a1+da1 supply=0.67``: the top tenant's only pool missed its
    ITL target five windows in a row at 6.2 req/s a replica, nominally 8.4, its ask was counted as
    headroom, and an idle GPU went to the lower priority for ten minutes). Shedding does not count
    it (``routing``): a late pool still serves what it carries. Lateness is the agent's word, like
    its backlog, so it counts down to ``LATE_CAPACITY_FLOOR`` of the nominal capacity at most: a
    tenant that reports its pools late at any load wins no more than twice what its load needs."""
    load = evidence_rps(pool)
    capacity = pool.replica_capacity_rps
    if count_late and pool.late_rps_per_replica is not None and capacity is not None:
        capacity = max(min(capacity, pool.late_rps_per_replica), LATE_CAPACITY_FLOOR * capacity)
    if load is None or capacity is None:
        return None
    return load, capacity


def spare_rps(pool: PoolDemand, utilisation: float = SHORT_UTILISATION, count_late: bool = True) -> float | None:
    """``utilisation`` of what the pool's running replicas carry at the SLA (``running x
    replica_capacity_rps``, the agent's own per-replica capacity) less its proven load
    (:func:`evidence_rps`); negative when short, None when the report lacks the rate or the
    capacity (:func:`_evidence`)."""
    evidence = _evidence(pool, count_late)
    if evidence is None:
        return None
    load, capacity = evidence
    return utilisation * _running(pool) * capacity - load


def observed_short(pool: PoolDemand, utilisation: float = SHORT_UTILISATION, count_late: bool = True) -> bool | None:
    """Whether the pool's proven load exceeds ``utilisation`` of what its running replicas carry
    (:func:`spare_rps` below 0); None when the report lacks the rate or the capacity."""
    spare = spare_rps(pool, utilisation, count_late)
    return None if spare is None else spare < 0


def shortage_note(pool: PoolDemand, utilisation: float = SHORT_UTILISATION) -> str:
    """The pool's own evidence in words, for a reason that says it was not observed short."""
    evidence = _evidence(pool)
    if evidence is None:
        return ""
    load, capacity = evidence
    late = " (late at that load per replica)" if capacity != pool.replica_capacity_rps else ""
    return (
        f" (this pool: {load:.2f} rps proven, {_counted_backlog(pool):.2f} of it backlog, against"
        f" {utilisation:.0%} of {_running(pool)} x {capacity:.2f} rps{late})"
    )


def evidence_need(pool: PoolDemand, utilisation: float = SHORT_UTILISATION) -> int | None:
    """Replicas the pool's proven load (:func:`evidence_rps`) needs to run below ``utilisation``
    of their capacity; None without the data. A pool contests GPUs others hold only up to this
    count: past it, its ask is headroom."""
    evidence = _evidence(pool)
    if evidence is None:
        return None
    load, capacity = evidence
    return math.ceil(load / (utilisation * capacity) - 1e-9)


def contested_endpoints(
    pools: list[PoolDemand], utilisation: float = SHORT_UTILISATION, count_late: bool = True
) -> set[str]:
    """Endpoints whose pools may contest GPUs held by others: some pool observed short, or no
    pool with the data to say (then the curves alone decide, as without this check).

    A deployment that cannot serve (some pool of it runs no replica: a pair without its decode
    replicas serves nothing), on an endpoint where others serve, is short only if its planned load
    does not fit in their spare capacity (the router sends it to them): with a pool at zero, any
    load looks short by itself. Each serving deployment's spare is its tightest pool's
    (:func:`spare_rps`)."""
    idle = {(pool.endpoint, pool.deployment) for pool in pools if _running(pool) <= 0}
    serving: dict[str, set[str]] = defaultdict(set)
    spare: dict[str, dict[str, float]] = defaultdict(dict)  # endpoint -> serving deployment -> spare rps
    for pool in pools:
        if (pool.endpoint, pool.deployment) in idle:
            continue
        serving[pool.endpoint].add(pool.deployment)
        room = spare_rps(pool, utilisation, count_late)
        if room is not None:
            rooms = spare[pool.endpoint]
            rooms[pool.deployment] = min(rooms.get(pool.deployment, math.inf), room)
    verdicts: dict[str, list[bool | None]] = defaultdict(list)
    for pool in pools:
        verdict = observed_short(pool, utilisation, count_late)
        if verdict and pool.deployment not in serving[pool.endpoint] and serving[pool.endpoint]:
            load = evidence_rps(pool) or 0.0
            verdict = load > sum(max(room, 0.0) for room in spare[pool.endpoint].values())
        verdicts[pool.endpoint].append(verdict)
    return {endpoint for endpoint, said in verdicts.items() if any(said) or all(v is None for v in said)}


def headroom_only(curve: list[float], current: int) -> list[float]:
    """The curve with every count above ``current`` worth no more than ``current``: what the pool
    asks for beyond its grant then weighs only through :func:`want_floor` (one quantum a replica)."""
    if current >= len(curve) - 1:
        return curve
    return curve[: current + 1] + [curve[current]] * (len(curve) - current - 1)


def held_if_stale(pool: PoolDemand) -> PoolDemand:
    """A bid made before the agent ran its current grant is read as "hold". An agent bids relative
    to what it runs, and its grant changes one round after its bid: following a bid for less than
    a grant the agent has not reached yet undoes that grant (a period-two oscillation between two
    interleaved chains of bids), and a bid for more than a grant cut below what the agent still
    runs predates the cut. Granted back in a later round before the agent has seen the cut, that
    raise reserves the GPUs the drain frees until the agent is told (a sweep fleet, seed 65 ``s12``:
    a prefill pool cut 8 -> 7 for its decode partner was raised back on its own stale bid of 8, and
    the decode waited two planner intervals for a GPU that had been free since the drain)."""
    wanted, running, current = pool.wanted_replicas, pool.running_replicas, pool.current_replicas
    if wanted is None or running is None:
        return pool
    if (wanted < current and running < current) or (wanted > current and running > current):
        return pool.model_copy(update={"wanted_replicas": current})
    return pool


def want_floor(scaled: list[int], wanted: int | None) -> list[int]:
    """The scaled curve with every count up to ``wanted`` worth at least one quantum more than the
    count below it: the agent's own sizing (headroom past the curve's knee) is trusted when the
    GPUs are free, and weighs nothing against another pool's real attainment."""
    if wanted is None or wanted <= 0:
        return scaled
    out = list(scaled)
    if len(out) <= wanted:
        out.extend([out[-1]] * (wanted + 1 - len(out)))
    for k in range(1, wanted + 1):
        out[k] = max(out[k], out[k - 1] + 1)
    return out


def startup_discount(startup_s: float, horizon_s: float) -> float:
    """Share of a new replica's value lost to its cold start over the horizon."""
    return min(_MAX_DISCOUNT, startup_s / horizon_s)


def discounted(
    counts: tuple[int, ...],
    values: tuple[int, ...],
    current: int,
    current_value: int,
    wanted: int | None,
    discount: float,
) -> tuple[int, ...]:
    """Hull values with every gain above ``current`` (worth ``current_value``) discounted by its
    cold start, kept concave and (up to ``wanted``) strictly rising, so the window stays a valid
    hull for both solvers."""
    if discount <= 0:
        return values
    if counts[0] <= current <= counts[-1]:
        current_value = values[current - counts[0]]
    keep = 1.0 - discount
    out = [
        v if count <= current else current_value + math.ceil(max(v - current_value, 0) * keep)
        for count, v in zip(counts, values, strict=True)
    ]
    top = min(wanted, counts[-1]) if wanted is not None else counts[0]
    previous_rise: int | None = None
    for j in range(1, len(out)):
        rise = out[j] - out[j - 1]
        if previous_rise is not None:
            rise = min(rise, previous_rise)
        if counts[j] <= top:
            rise = max(rise, 1)
        out[j] = out[j - 1] + rise
        previous_rise = rise
    return tuple(out)


def cut_cost(
    counts: tuple[int, ...], values: tuple[int, ...], anchor: int, weight: int, discount: float, hysteresis: float
) -> int:
    """Scaled value a pool loses per replica cut below ``anchor`` (what it holds and wants), on top
    of the attainment it loses: its marginal value there times ``discount + hysteresis``."""
    if anchor <= counts[0] or weight <= 0:
        return 0
    j = min(anchor - counts[0], len(counts) - 1)
    slope = max(values[j] - values[j - 1], 1)
    return math.ceil(weight * slope * (discount + hysteresis))


def driver(count: int, current: int, wanted: int | None, lo: int, hi: int) -> Driver:
    """Which term moved a pool: its own bid, its bounds (the window ``[lo, hi]`` excludes where it
    is: a lowered maximum, minima the inventory cannot hold), or other pools' value."""
    if count == current:
        return "unchanged"
    if wanted is None:
        toward = count > current
    else:
        toward = current < count <= wanted or wanted <= count < current
    if toward:
        return "bid"
    if not lo <= current <= hi:
        return "bounds"
    return "others"


@dataclass(frozen=True)
class Seat:
    """What :func:`protected_lows` and :func:`first_claims` need of one pool: its GPU group,
    priority, evidence and window.

    ``hold`` is what it holds and wants (``min(current, wanted)``, within its window); ``ask`` the
    replicas its agent asks for (its raw ``wanted_replicas``, step-limited and within its bounds:
    free GPUs are nobody's, so the bid check, which stops a bid winning GPUs from others, does not
    apply to them)."""

    gpu_type: str
    gpus_per_replica: int
    tenant: str
    priority: float
    contested: bool
    claim: int  # what it may take from others: its ask up to what its observed load needs
    current: int
    lo: int
    hi: int
    hold: int
    ask: int
    promised: int = 0  # replicas the previous round allocated it (some may wait for another pool's drain)


def protected_lows(seats: list[Seat]) -> list[int]:
    """Each pool's lower bound, raised to what it holds and wants unless another pool of its GPU
    type, of at least its priority, is observed short and asks for more: a lower priority never
    takes a GPU a pool holds and wants (between equals, and from a higher priority with evidence,
    the value model decides and the cut still has to pay its cost).

    Never worse than first come by design: under ``fcfs`` nobody loses a GPU it holds and wants. On
    soft-shortage the value model cut acme's A100 pool four times for beta's observed-short batch
    pool (acme's curve was flat there), and acme fell below its ``fcfs`` attainment."""
    best: dict[str, tuple[float, int, float]] = {}  # GPU type -> (top priority, its pool, second)
    for i, seat in enumerate(seats):
        if seat.contested and seat.claim > seat.current:
            top, who, second = best.get(seat.gpu_type, (-math.inf, -1, -math.inf))
            if seat.priority > top:
                best[seat.gpu_type] = (seat.priority, i, top)
            else:
                best[seat.gpu_type] = (top, who, max(second, seat.priority))
    lows = []
    for i, seat in enumerate(seats):
        top, who, second = best.get(seat.gpu_type, (-math.inf, -1, -math.inf))
        threat = second if who == i else top
        lows.append(seat.lo if threat >= seat.priority else max(seat.lo, seat.hold))
    return lows


def first_claims(
    seats: list[Seat], lows: list[int], budget: dict[str, int], caps: dict[tuple[str, str], int]
) -> list[int]:
    """Replicas each pool gets at once out of GPUs nobody holds: asks served by priority, highest
    first (within one priority, what the previous round allocated a pool first, then pools
    observed short first, then one replica each in turn).

    A higher-priority ask never waits for evidence, nor for a pair's partner, while GPUs are idle:
    on the matrix's day cells a disaggregated pool's ask past its partner's was worth nothing to
    the ``min`` of the pair and stayed ungranted on idle GPUs (``global`` below ``local``)."""
    free = dict(budget)
    room = dict(caps)
    held = [max(low, min(seat.current, seat.hi)) for seat, low in zip(seats, lows, strict=True)]
    for seat, count in zip(seats, held, strict=True):
        free[seat.gpu_type] = free.get(seat.gpu_type, 0) - count * seat.gpus_per_replica
        key = (seat.tenant, seat.gpu_type)
        if key in room:
            room[key] -= count * seat.gpus_per_replica
    order = sorted(range(len(seats)), key=lambda i: (-seats[i].priority, not seats[i].contested))
    tiers = [list(tier) for _, tier in groupby(order, key=lambda i: (seats[i].priority, seats[i].contested))]
    groups = [(seat.tenant, seat.gpu_type, seat.gpus_per_replica) for seat in seats]
    promised = [max(count, min(seat.promised, seat.ask)) for seat, count in zip(seats, held, strict=True)]
    asks = [seat.ask for seat in seats]
    dealt = list(held)
    for tier in tiers:
        # What the previous round allocated first: it cut another pool to free those GPUs, and
        # once that drain is confirmed the freed GPUs are idle here; dealt by turn, the pool that
        # was cut asked them back (a pair's decode cut for its prefill took its GPU back).
        dealt = deal([tier], dealt, promised, groups, free, room)
        dealt = deal([tier], dealt, asks, groups, free, room)
    return [max(low, got) if got > count else low for low, count, got in zip(lows, held, dealt, strict=True)]


def deal(
    tiers: list[list[int]],
    counts: list[int],
    tops: list[int],
    groups: list[tuple[str, str, int]],
    free: dict[str, int],
    room: dict[tuple[str, str], int],
) -> list[int]:
    """``counts`` raised towards ``tops`` out of ``free`` GPUs (per type) within ``room`` (per
    tenant and type, where capped): tier by tier, one replica per pool in turn. ``groups[i]`` is
    pool ``i``'s (tenant, GPU type, GPUs per replica); ``free`` and ``room`` are spent in place."""
    for tier in tiers:
        waiting = [i for i in tier if counts[i] < tops[i]]
        while waiting:
            still = []
            for i in waiting:
                tenant, gpu, per = groups[i]
                if free.get(gpu, 0) < per or room.get((tenant, gpu), per) < per:
                    continue
                free[gpu] -= per
                if (tenant, gpu) in room:
                    room[(tenant, gpu)] -= per
                counts[i] += 1
                if counts[i] < tops[i]:
                    still.append(i)
            waiting = still
    return counts
