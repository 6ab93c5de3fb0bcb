"""Live observations from Prometheus: instant queries over the HTTP API (``/api/v1/query``).

Every observation field has its own query (see :mod:`local_agent.config` for the templates and
their defaults). A field whose query fails, returns no series, or returns NaN/Inf is ``None`` —
never 0, since "no metric" must not read as "no traffic". Each problem is logged once (until that
query works again), so a missing metric does not flood the log every tick, and the agent keeps
running with whatever the other queries returned.

All queries of one tick are evaluated at the same instant (``time=now_s``), so the fields of one
observation describe the same window.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Mapping
from string import Template
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet_planner.planning import MAX_OBSERVED, DeploymentSpec, Distribution, PoolObservation, PoolRole
from local_agent.config import PrometheusConfig, PrometheusHistograms, PrometheusLabels, PrometheusQueries
from local_agent.connectors.base import ReplicaCounts

log = logging.getLogger(__name__)

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
ENGINE_FIELDS = (
    "queued_requests",
    "queued_prefill_tokens",
    "active_kv_tokens",
    "kv_capacity_tokens",
    "iteration_ms",
    "scheduled_tokens_per_s",
)
INTEGER_FIELDS = frozenset({"admitted", "endpoint_shed", "queued_requests"})
TRAFFIC_FIELDS = ("admitted", "endpoint_shed")  # request counts at the deployment's frontend or gateway
_HISTOGRAM_FIELDS = {
    "input_tokens": ("input_tokens", 1.0),
    "output_tokens": ("output_tokens", 1.0),
    "ttft_seconds": ("ttft_ms", 1000.0),
    "itl_seconds": ("itl_ms", 1000.0),
}


class PrometheusError(RuntimeError):
    """A query could not be answered: connection, HTTP status, Prometheus error or malformed reply."""


class _Sample(BaseModel):
    metric: dict[str, str]
    value: tuple[float, str]


class _Vector(BaseModel):
    resultType: Literal["vector"]
    result: list[_Sample]


class _Scalar(BaseModel):
    resultType: Literal["scalar"]
    result: tuple[float, str]


class _Reply(BaseModel):
    """The documented envelope of ``/api/v1/query``; unknown keys (warnings, infos) are ignored."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["success", "error"]
    data: Annotated[_Vector | _Scalar, Field(discriminator="resultType")] | None = None
    errorType: str | None = None
    error: str | None = None


class PrometheusClient:
    """Instant queries; returns the sample values or raises :class:`PrometheusError`."""

    def __init__(self, url: str, session: aiohttp.ClientSession, *, timeout_s: float = 5.0):
        self.endpoint = url.rstrip("/") + "/api/v1/query"
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def query(self, promql: str, at_s: float | None = None) -> list[float]:
        """Values of the instant vector (or scalar) ``promql`` evaluates to at ``at_s`` (default: now)."""
        params = {"query": promql} if at_s is None else {"query": promql, "time": f"{at_s:.3f}"}
        try:
            async with self.session.get(self.endpoint, params=params, timeout=self.timeout) as response:
                status = response.status
                body = await response.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PrometheusError(f"cannot reach {self.endpoint}: {exc!r}") from None
        try:
            reply = _Reply.model_validate_json(body)
        except ValidationError as exc:
            if status != 200:
                raise PrometheusError(f"HTTP {status}: {body[:200]!r}") from None
            problem = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in problem["loc"]) or "body"
            raise PrometheusError(f"malformed reply ({where}: {problem['msg']}): {body[:200]!r}") from None
        if reply.status == "error" or status != 200:
            raise PrometheusError(f"HTTP {status}, {reply.errorType or 'error'}: {reply.error or body[:200]!r}")
        if reply.data is None:
            raise PrometheusError(f"malformed reply (no data): {body[:200]!r}")
        raw = [reply.data.result[1]] if isinstance(reply.data, _Scalar) else [s.value[1] for s in reply.data.result]
        try:
            return [float(value) for value in raw]
        except ValueError:
            raise PrometheusError(f"malformed sample value in {raw!r}") from None


class PrometheusSource:
    """Builds the agent's :class:`PoolObservation` from Prometheus; replica counts come from the
    connector and are passed in, so a pool the connector does not report is left out."""

    def __init__(
        self,
        url: str,
        queries: PrometheusQueries,
        session: aiohttp.ClientSession,
        *,
        labels: PrometheusLabels | None = None,
        histograms: PrometheusHistograms | None = None,
        window_s: float = 60.0,
        timeout_s: float = 5.0,
    ):
        if not window_s >= 1.0:
            raise ValueError(f"window_s must be >= 1 s, got {window_s}")
        self.client = PrometheusClient(url, session, timeout_s=timeout_s)
        self.queries = queries
        self.labels = labels if labels is not None else PrometheusLabels()
        self.histograms = histograms if histograms is not None else PrometheusHistograms()
        self.window_s = window_s
        self._window = f"{window_s:g}s" if float(window_s).is_integer() else f"{round(window_s * 1000)}ms"
        self._problems: dict[str, str] = {}

    @classmethod
    def from_config(cls, config: PrometheusConfig, session: aiohttp.ClientSession) -> PrometheusSource:
        return cls(
            config.url,
            config.queries,
            session,
            labels=config.labels,
            histograms=config.histograms,
            window_s=config.window,
            timeout_s=config.timeout_s,
        )

    def render(self, template: str, deployment: str, role: str = "") -> str:
        """Fill a query template's placeholders for one deployment (and pool)."""
        names = {"deployment": deployment, "role": role}
        frontend = Template(self.labels.frontend).substitute(names)
        worker = Template(self.labels.worker).substitute(names)
        return Template(template).substitute(names, window=self._window, frontend=frontend, worker=worker)

    async def value(self, key: str, promql: str, at_s: float | None = None) -> float | None:
        """One query's single finite, non-negative value, or None (the problem logged once per ``key``)."""
        try:
            values = await self.client.query(promql, at_s)
        except PrometheusError as exc:
            return self._missing(key, "error", logging.WARNING, f"{key}: query failed, treated as missing: {exc}")
        if not values:
            return self._missing(key, "empty", logging.INFO, f"{key}: no series for {promql!r}, treated as missing")
        if len(values) > 1:
            return self._missing(
                key,
                "many",
                logging.WARNING,
                f"{key}: {promql!r} returned {len(values)} series; aggregate it to one (e.g. sum(...))",
            )
        value = values[0]
        if not math.isfinite(value):
            return self._missing(key, "nan", logging.INFO, f"{key}: {promql!r} is {value} (no samples in the window?)")
        if value < 0:
            return self._missing(key, "negative", logging.WARNING, f"{key}: {promql!r} is negative ({value})")
        if value > MAX_OBSERVED:
            return self._missing(
                key, "implausible", logging.WARNING, f"{key}: {promql!r} is {value:g}, past any real fleet; ignored"
            )
        self._usable(key)
        return value

    def _usable(self, key: str) -> None:
        """The key's values are usable again: said once, where a problem was logged."""
        if self._problems.pop(key, None) is not None:
            log.info("%s: values are back", key)

    def _missing(self, key: str, kind: str, level: int, message: str) -> float | None:
        """The value is missing (None): log why, once per kind of problem."""
        if self._problems.get(key) != kind:
            self._problems[key] = kind
            log.log(level, message)
        return None

    async def observe(
        self, now_s: float, spec: DeploymentSpec, replicas: Mapping[str, ReplicaCounts]
    ) -> list[PoolObservation]:
        """One observation per pool of ``spec`` that ``replicas`` reports, over the window ending now."""
        roles: list[PoolRole] = [role for role in spec.pools if role in replicas]
        traffic, *engines = await asyncio.gather(
            self._traffic(now_s, spec.name), *(self._engine(now_s, spec.name, role) for role in roles)
        )
        observations = []
        for role, engine in zip(roles, engines, strict=True):
            counts = replicas[role]
            observations.append(
                PoolObservation(
                    deployment=spec.name,
                    role=role,
                    time_s=now_s,
                    window_s=self.window_s,
                    ready=counts.ready,
                    starting=counts.starting,
                    draining=counts.draining,
                    pending=counts.pending,
                    **traffic,
                    **engine,
                )
            )
        return observations

    async def _traffic(self, now_s: float, deployment: str) -> dict[str, Any]:
        """Request-level fields, measured at the deployment's frontend and shared by its pools."""
        fields: dict[str, Any] = {}
        tasks: dict[str, Awaitable[float | Distribution | None]] = {}
        for field in TRAFFIC_FIELDS:
            template = getattr(self.queries, field)
            if template is not None:
                tasks[field] = self.value(field, self.render(template, deployment), now_s)
        for name, (field, scale) in _HISTOGRAM_FIELDS.items():
            metric = getattr(self.histograms, name)
            if metric is not None:
                tasks[field] = self._distribution(field, metric, scale, now_s, deployment)
        results = await asyncio.gather(*tasks.values())
        for field, result in zip(tasks, results, strict=True):
            fields[field] = (
                _rounded(result) if field in INTEGER_FIELDS and not isinstance(result, Distribution) else result
            )
        return fields

    async def _engine(self, now_s: float, deployment: str, role: PoolRole) -> dict[str, float | int | None]:
        templates = {field: getattr(self.queries, field) for field in ENGINE_FIELDS}
        active = {field: t for field, t in templates.items() if t is not None}
        results = await asyncio.gather(
            *(self.value(f"{role}.{field}", self.render(t, deployment, role), now_s) for field, t in active.items())
        )
        return {field: _rounded(v) if field in INTEGER_FIELDS else v for field, v in zip(active, results, strict=True)}

    async def _distribution(
        self, field: str, metric: str, scale: float, now_s: float, deployment: str
    ) -> Distribution | None:
        """count, mean and quantiles of a histogram over the window; None unless all are known."""
        frontend = Template(self.labels.frontend).substitute(deployment=deployment, role="")
        window = self._window
        count_q = f"sum(increase({metric}_count{{{frontend}}}[{window}]))"
        mean_q = f"sum(increase({metric}_sum{{{frontend}}}[{window}])) / {count_q}"
        queries = {"count": count_q, "mean": mean_q} | {
            name: f"histogram_quantile({q}, sum by (le) (increase({metric}_bucket{{{frontend}}}[{window}])))"
            for name, q in QUANTILES.items()
        }
        values = await asyncio.gather(*(self.value(f"{field}.{name}", q, now_s) for name, q in queries.items()))
        got = {name: value for name, value in zip(queries, values, strict=True) if value is not None}
        if len(got) < len(queries) or round(got["count"]) == 0:
            return None
        summary = {k: got[k] * scale for k in ("mean", *QUANTILES)}
        if max(summary.values()) > MAX_OBSERVED:  # a count past it was already missing
            detail = f"{field}: {metric} summary {summary} is past any real fleet; ignored"
            self._missing(field, "implausible", logging.WARNING, detail)
            return None
        self._usable(field)
        return Distribution(count=round(got["count"]), **summary)


def _rounded(value: float | None) -> int | None:
    """Counts from ``increase()`` are extrapolated floats; the observation wants whole requests."""
    return None if value is None else int(round(value))
