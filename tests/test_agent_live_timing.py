"""A live agent decides as its replay does: the same core, the same answers, whatever the ticks'
millisecond jitter, and no forecast sizing (nor its schedule) set by a window of one request.

Both were found comparing the live demo with its simulation tick by tick: live ticks land a few
milliseconds off the tick grid, so 180 s between two sizings measured 179.999 s and the sizing
slipped a tick each time; and the simulated agent sized on a first window holding a single
request, which put its sizing schedule a tick ahead of the live one's (docs/results.md).
"""

from __future__ import annotations

import random

from test_agent_descent import agent, bursts
from test_agent_weaknesses import TICK, observe

from local_agent.decide import elapsed
from local_agent.decide.intake import MIN_LENGTH_REQUESTS
from local_agent.models import AgentInput


def decide(ticks: list[float], start: int = 8) -> list[tuple[str, int]]:
    """(loop, target) per tick of the descent-under-bursts workload at the given instants."""
    a = agent(start)
    out = []
    for i, t in enumerate(ticks):
        # The workload is a function of the tick's index, as the same windows arrive live and in replay.
        d = a.step(AgentInput(now_s=t, observations=bursts(i * TICK, a.targets()))).decision
        out.append((d.loop, d.pools[0].target))
    return out


def jittered(n: int, seed: int) -> list[float]:
    """Live instants: each tick 1.2 s after its grid point (settle and scrape), +-2 ms of jitter."""
    rng = random.Random(seed)
    return [i * TICK + 1.2 + rng.uniform(-0.002, 0.002) for i in range(n)]


def test_jittered_live_ticks_make_the_decisions_of_exact_ones() -> None:
    exact = decide([i * TICK for i in range(240)])  # two hours
    assert sum(loop == "throughput" for loop, _ in exact) >= 30
    assert len({target for _, target in exact}) >= 3  # the pool does move
    for seed in range(3):
        assert decide(jittered(240, seed)) == exact


def test_without_the_slack_jitter_changes_the_decisions(monkeypatch) -> None:
    """The test above could fail: compared exactly, the same jitter moves the sizings."""
    exact = decide([i * TICK for i in range(240)])
    monkeypatch.setattr(elapsed, "TICK_SLACK", 0.0)
    assert any(decide(jittered(240, seed)) != exact for seed in range(3))


def test_a_window_of_one_request_does_not_start_the_forecast_sizings() -> None:
    a = agent(4)
    one = a.step(AgentInput(now_s=0.0, observations=[observe("agg", 0.0, 1 / TICK, ready=4)])).decision
    assert one.loop == "load" and one.input_tokens_mean is None  # one request's lengths are not trusted
    rate = (MIN_LENGTH_REQUESTS + 5) / TICK
    busy = a.step(AgentInput(now_s=TICK, observations=[observe("agg", TICK, rate, ready=4)])).decision
    assert busy.loop == "throughput" and busy.input_tokens_mean is not None
