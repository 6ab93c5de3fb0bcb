"""Observations for the demo's live agent without Prometheus: request-level fields from the
frontend's own records, engine fields scraped from each worker's ``/metrics`` (the names the
agent's Prometheus queries use), over the last ``window_s`` seconds."""

from __future__ import annotations

import re
from collections.abc import Mapping

import aiohttp
import numpy as np

from fleet_planner.planning import DeploymentSpec, Distribution, PoolObservation
from fleet_sim.demo.frontend import Frontend
from local_agent.connectors.base import ReplicaCounts
from local_agent.connectors.processes import ProcessConnector

KV_BLOCK_TOKENS = 16


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
        arrived = [r for r in self.frontend.records if r.arrival_s > since]
        finished = [r for r in self.frontend.records if r.t_last is not None and r.t_last > since]
        admitted_in = [r.input_tokens for r in arrived]
        traffic = {
            "input_tokens": _dist(admitted_in),
            "output_tokens": _dist([r.output_tokens for r in arrived]),
            "ttft_ms": _dist([(r.t_first - r.arrival_s) * 1000 for r in finished if r.t_first is not None]),
            "itl_ms": _dist([ms for r in finished if (ms := r.itl_ms) is not None]),
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


def _dist(values: list[float] | list[int]) -> Distribution | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return Distribution(count=len(array), mean=float(array.mean()), p50=float(p50), p90=float(p90), p99=float(p99))
