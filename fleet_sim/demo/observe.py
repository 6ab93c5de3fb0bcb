"""Observations for the demo's live agent.

:class:`ScenarioTimeSource` is what the agent reads: an inner source's observations (Prometheus, or
:class:`DirectSource` without it), measured on the wall clock, converted to scenario time (under
``--speed N`` a wall second is N scenario seconds and every measured latency 1/N of the emulated
engine's), over the window that closed ``observation_delay_s`` before the tick, as the simulator
delivers them (and as a live agent reads a scrape that lags by that much).

:class:`DirectSource` stands in for Prometheus: request-level fields from the frontend's own
records, engine fields scraped from each worker's ``/metrics`` (the names the agent's Prometheus
queries use), over the ``window_s`` seconds up to the time asked."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import aiohttp
import numpy as np

from fleet_planner.planning import DeploymentSpec, Distribution, PoolObservation
from fleet_sim.demo.frontend import Frontend
from fleet_sim.runner import distribution
from local_agent.connectors.base import ReplicaCounts
from local_agent.connectors.processes import ProcessConnector
from local_agent.runtime import ObservationSource

KV_BLOCK_TOKENS = 16


class ScenarioTimeSource:
    """``inner`` observed ``delay_s`` (scenario seconds) before ``inner_now()`` (its own clock),
    returned in scenario time; nothing before the run has lasted that long."""

    def __init__(self, inner: ObservationSource, inner_now: Callable[[], float], speed: float, delay_s: float):
        self.inner = inner
        self.inner_now = inner_now
        self.speed = speed
        self.delay_s = delay_s

    async def observe(
        self, now_s: float, spec: DeploymentSpec, replicas: Mapping[str, ReplicaCounts]
    ) -> list[PoolObservation]:
        closed_s = now_s - self.delay_s
        if closed_s < -1e-9:
            return []
        measured = await self.inner.observe(self.inner_now() - self.delay_s / self.speed, spec, replicas)
        return [self._scenario_time(o, closed_s) for o in measured]

    def _scenario_time(self, obs: PoolObservation, now_s: float) -> PoolObservation:
        k = self.speed

        def slower(d: Distribution | None) -> Distribution | None:
            return (
                None
                if d is None
                else d.model_copy(update={q: getattr(d, q) * k for q in ("mean", "p50", "p90", "p99")})
            )

        return obs.model_copy(
            update={
                "time_s": now_s,
                "window_s": obs.window_s * k,
                "ttft_ms": slower(obs.ttft_ms),
                "itl_ms": slower(obs.itl_ms),
                "iteration_ms": None if obs.iteration_ms is None else obs.iteration_ms * k,
                "scheduled_tokens_per_s": None
                if obs.scheduled_tokens_per_s is None
                else obs.scheduled_tokens_per_s / k,
            }
        )


class DirectSource:
    """``observe(now, spec, replicas)`` like :class:`local_agent.observe.prometheus.PrometheusSource`."""

    def __init__(
        self, frontend: Frontend, connector: ProcessConnector, session: aiohttp.ClientSession, window_s: float
    ):
        self.frontend = frontend
        self.connector = connector
        self.session = session
        self.window_s = window_s
        self._itl_totals: dict[str, tuple[float, float]] = {}  # worker url -> (sum s, count) at the last scrape

    async def observe(
        self, now_s: float, spec: DeploymentSpec, replicas: Mapping[str, ReplicaCounts]
    ) -> list[PoolObservation]:
        since = now_s - self.window_s
        arrived = [r for r in self.frontend.records if since < r.arrival_s <= now_s]
        finished = [r for r in self.frontend.records if r.t_last is not None and since < r.t_last <= now_s]
        admitted_in = [r.input_tokens for r in arrived]
        traffic = {
            "input_tokens": distribution(admitted_in),
            "output_tokens": distribution([r.output_tokens for r in arrived]),
            "ttft_ms": distribution([(r.t_first - r.arrival_s) * 1000 for r in finished if r.t_first is not None]),
            "itl_ms": distribution([ms for r in finished if (ms := r.itl_ms) is not None]),
        }
        mean_input = float(np.mean(admitted_in)) if admitted_in else 0.0
        observations = []
        for role, counts in replicas.items():
            if role not in spec.pools:
                continue
            engine = await self._engine(role, mean_input)
            fields = {
                "deployment": spec.name,
                "role": role,
                "time_s": now_s,
                "window_s": self.window_s,
                "ready": counts.ready,
                "starting": counts.starting,
                "draining": counts.draining,
                "pending": 0,
                "admitted": len(arrived),
            }
            observations.append(PoolObservation.model_validate(fields | traffic | engine))
        return observations

    async def _engine(self, role: str, mean_input: float) -> dict[str, float | int | None]:
        urls = [f"http://127.0.0.1:{w.port}" for w in self.connector.workers() if w.role == role and w.state == "ready"]
        waiting = active = capacity = 0.0
        itl_sum = itl_count = 0.0
        seen = 0
        for url in urls:
            try:
                async with self.session.get(url + "/metrics") as response:
                    text = await response.text()
            except aiohttp.ClientError:
                continue  # a worker draining away: its numbers are gone with it
            seen += 1
            waiting += _value(text, "vllm:num_requests_waiting")
            active += _value(text, "dynamo_component_kvstats_active_blocks") * KV_BLOCK_TOKENS
            capacity += _value(text, "dynamo_component_kvstats_total_blocks") * KV_BLOCK_TOKENS
            total = (
                _value(text, "vllm:inter_token_latency_seconds_sum"),
                _value(text, "vllm:inter_token_latency_seconds_count"),
            )
            before = self._itl_totals.get(url, (0.0, 0.0))
            self._itl_totals[url] = total
            itl_sum += total[0] - before[0]
            itl_count += total[1] - before[1]
        if not seen:
            return {}
        return {
            "queued_requests": int(waiting),
            "queued_prefill_tokens": waiting * mean_input,
            "active_kv_tokens": active,
            "kv_capacity_tokens": capacity,
            "iteration_ms": 1000 * itl_sum / itl_count if itl_count else None,
        }


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
