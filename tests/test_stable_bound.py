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
