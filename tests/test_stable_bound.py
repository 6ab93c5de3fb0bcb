"""The stable clairvoyant bound: the cheapest envelope with a reversal budget, exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fleet_sim.stable_bound import cheapest_envelope


def _reversals(series: tuple[int, ...], initial: int) -> int:
    last, count, previous = 0, 0, initial
    for value in series:
        if value != previous:
            direction = 1 if value > previous else -1
            count += last == -direction
            last, previous = direction, value
    return count


@pytest.mark.parametrize("seed", range(6))
def test_envelope_is_the_cheapest_within_the_budget(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lower = rng.integers(1, 5, size=6)
    initial, top = int(rng.integers(1, 6)), 5
    found = cheapest_envelope(lower, initial, top, budget=2)
    for budget, (cost, series) in enumerate(found):
        best = min(
            sum(s)
            for s in itertools.product(range(top + 1), repeat=len(lower))
            if all(a >= b for a, b in zip(s, lower)) and _reversals(s, initial) <= budget
        )
        assert cost == best == series.sum()
        assert (series >= lower).all() and _reversals(tuple(series.tolist()), initial) <= budget


def test_no_reversal_from_the_maximum_is_the_suffix_maximum() -> None:
    """Starting at the pool's maximum, a schedule that never reverses can only go down: it must
    hold every later peak, which is why the bound costs more than the oracle when peaks come late."""
    lower = np.array([1, 3, 1, 2, 1])
    cost, series = cheapest_envelope(lower, initial=6, top=6, budget=0)[0]
    assert series.tolist() == [3, 3, 2, 2, 1] and cost == 11
    assert cheapest_envelope(lower, initial=6, top=6, budget=4)[4][1].tolist() == lower.tolist()  # 6>1<3>1<2>1


def test_a_deployments_reversal_budget_goes_to_the_pool_where_it_saves_most() -> None:
    """Disaggregated, budget 1: the one reversal is spent on the pool whose dip is worth more GPUs."""
    from test_agent_weaknesses import spec

    from fleet_sim.stable_bound import oracle_ticks, stable_schedule

    deployment = spec("disagg", initial=6, max_replicas=6)
    lower = {
        ("d", "prefill"): np.array([1, 1, 1, 1, 4]),  # a late peak: holding it costs 12 replica-ticks
        ("d", "decode"): np.array([2, 2, 2, 2, 3]),  # holding it costs 4
    }
    schedule = stable_schedule([deployment], lower, budget=1)
    assert schedule[("d", "prefill")].tolist() == [1, 1, 1, 1, 4]  # down, then up: the one reversal
    assert schedule[("d", "decode")].tolist() == [3, 3, 3, 3, 3]  # only down
    assert stable_schedule([deployment], lower, budget=0)[("d", "prefill")].tolist() == [4] * 5
    # The oracle's per-tick targets: the largest need until replicas asked for at the next tick are
    # ready (60 s start-up + a 30 s tick cover this 60 s window and the next).
    needs = {("d", "prefill"): np.array([1, 3, 2]), ("d", "decode"): np.array([1, 1, 1])}
    ticks = oracle_ticks([deployment], needs, 30.0, 180.0)
    assert ticks[("d", "prefill")].tolist() == [3, 3, 3, 3, 2, 2]  # t=90 s is still in window 1
