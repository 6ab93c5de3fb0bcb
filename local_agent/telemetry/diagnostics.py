"""Diagnostics of one deployment's agent: a rolling history of observations and decisions, rendered
as Plotly charts for self-contained HTML reports and for the live dashboard.

Everything is driven by the times passed in (observation and decision times, ``now_s``), never by
the wall clock, so a report written from a simulation is the same as one written live.

Observation series (replicas, observed latency) have one point per observation, and a missing value
is a gap in the line. Decision series (targets, estimates, forecasts) join the decisions that carry
the value: the throughput and load loops interleave, and one loop may not estimate what the other
does. Non-finite values (an overloaded pool's infinite TTFT estimate) are not drawn.
"""

from __future__ import annotations

import html
import json
import math
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from fleet_planner.files import write_atomically
from fleet_planner.planning import SLA, PoolObservation, PoolRole
from local_agent.models import AgentDecision
from local_agent.session import TickEffects

ROLE_ORDER: tuple[PoolRole, ...] = ("prefill", "decode", "agg")
STATE_DASH = {"ready": "solid", "starting": "dot", "draining": "dash", "pending": "dashdot"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #212121; }
.meta { color: #555; margin-top: 0; }
"""


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class DiagnosticsRecorder:
    """Keeps the latest ``max_points`` observations per pool and decisions of ``deployment``, and
    draws them.

    ``wall_clock`` only changes presentation: times are shown as UTC dates and report files are
    named by date instead of by simulated second. Safe to record from one thread while another
    renders.
    """

    def __init__(self, sla: SLA, deployment: str, max_points: int = 5000, wall_clock: bool = False):
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.sla = sla
        self.deployment = deployment
        self.wall_clock = wall_clock
        self.max_points = max_points
        self._observations: dict[PoolRole, deque[PoolObservation]] = {}
        self._decisions: deque[AgentDecision] = deque(maxlen=max_points)
        self._last_obs_time: dict[PoolRole, float] = {}
        self._now_s: float | None = None
        self._last_period: int | None = None
        self._lock = threading.Lock()
        self._planner: TickEffects | None = None

    def record(self, now_s: float, observations: list[PoolObservation], decision: AgentDecision | None = None) -> None:
        """Add what the agent saw and decided at ``now_s``.

        An observation delivered again on a later tick (scrapes are slower than ticks) is kept once.
        """
        if decision is not None and decision.deployment != self.deployment:
            raise ValueError(f"decision for {decision.deployment!r} given to the recorder of {self.deployment!r}")
        with self._lock:
            self._now_s = now_s if self._now_s is None else max(self._now_s, now_s)
            for obs in observations:
                if obs.deployment != self.deployment or self._last_obs_time.get(obs.role) == obs.time_s:
                    continue
                self._last_obs_time[obs.role] = obs.time_s
                self._observations.setdefault(obs.role, deque(maxlen=self.max_points)).append(obs)
            if decision is not None:
                self._decisions.append(decision)

    def record_planner(self, effects: TickEffects) -> None:
        """The planner's answer in force (grant, routing weights, admission limit), for ``state``."""
        with self._lock:
            self._planner = effects

    def _snapshot(self) -> tuple[dict[PoolRole, list[PoolObservation]], list[AgentDecision], float | None]:
        with self._lock:
            observations = {role: list(points) for role, points in self._observations.items()}
            return observations, list(self._decisions), self._now_s

    def state(self, last: int = 20) -> dict[str, Any]:
        """JSON-ready summary: the latest decision of each loop and the last ``last`` decisions."""
        _, decisions, now_s = self._snapshot()
        latest = {d.loop: d for d in decisions}

        def dump(d: AgentDecision) -> Any:
            return json.loads(d.model_dump_json())  # pydantic writes non-finite floats as null

        return {
            "deployment": self.deployment,
            "now_s": now_s,
            "sla": self.sla.model_dump(),
            "latest": {loop: dump(d) for loop, d in latest.items()},
            "decisions": [dump(d) for d in decisions[-last:]],
            "planner": self._planner.model_dump(mode="json") if self._planner is not None else None,
        }

    def _x(self, time_s: float) -> float | datetime:
        return datetime.fromtimestamp(time_s, tz=UTC) if self.wall_clock else time_s

    def figures(self) -> list[go.Figure]:
        """Replicas, latency vs SLA, load vs forecast, and the decision timeline, in that order."""
        observations, decisions, _ = self._snapshot()
        roles = [r for r in ROLE_ORDER if r in observations or any(p.role == r for d in decisions for p in d.pools)]
        obs_by_role = {r: observations.get(r, []) for r in roles}
        return [
            self._replicas_figure(roles, obs_by_role, decisions),
            self._latency_figure(roles, obs_by_role, decisions),
            self._load_figure(decisions),
            self._timeline_figure(decisions),
        ]

    def figures_json(self) -> str:
        """The figures as a JSON array of Plotly figure objects, for ``Plotly.react`` in the dashboard."""
        return "[" + ",".join(pio.to_json(fig, validate=False) for fig in self.figures()) + "]"

    def _layout(self, fig: go.Figure, title: str, height: int = 380) -> go.Figure:
        fig.update_layout(
            title=title,
            height=height,
            template="plotly_white",
            hovermode="x unified",
            margin={"l": 60, "r": 20, "t": 60, "b": 40},
            uirevision=title,
        )
        fig.update_xaxes(title_text="time (UTC)" if self.wall_clock else "time (s)")
        return fig

    def _pool_decision_series(
        self, decisions: list[AgentDecision], role: PoolRole, field: str
    ) -> tuple[list[Any], list[float]]:
        xs: list[Any] = []
        ys: list[float] = []
        for d in decisions:
            for p in d.pools:
                value = _finite(getattr(p, field)) if p.role == role else None
                if value is not None:
                    xs.append(self._x(d.time_s))
                    ys.append(value)
        return xs, ys

    def _replicas_figure(
        self, roles: list[PoolRole], obs_by_role: dict[PoolRole, list[PoolObservation]], decisions: list[AgentDecision]
    ) -> go.Figure:
        fig = go.Figure()
        for role in roles:
            xs, ys = self._pool_decision_series(decisions, role, "target")
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=f"{role} target",
                    legendgroup=role,
                    mode="lines+markers",
                    line={"shape": "hv", "width": 3},
                )
            )
            obs = obs_by_role[role]
            for state, dash in STATE_DASH.items():
                fig.add_trace(
                    go.Scatter(
                        x=[self._x(o.time_s) for o in obs],
                        y=[getattr(o, state) for o in obs],
                        name=f"{role} {state}",
                        legendgroup=role,
                        mode="lines",
                        line={"shape": "hv", "dash": dash},
                    )
                )
        fig.update_yaxes(title_text="replicas", rangemode="tozero")
        return self._layout(fig, f"{self.deployment}: replicas per pool")

    def _latency_figure(
        self, roles: list[PoolRole], obs_by_role: dict[PoolRole, list[PoolObservation]], decisions: list[AgentDecision]
    ) -> go.Figure:
        fig = make_subplots(
            rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=("TTFT (ms)", "ITL (ms)")
        )
        times = [o.time_s for r in roles for o in obs_by_role[r]] + [d.time_s for d in decisions]
        span = [self._x(min(times)), self._x(max(times))] if times else []
        for row, (metric, sla_ms) in enumerate((("ttft", self.sla.ttft_ms), ("itl", self.sla.itl_ms)), start=1):
            name = metric.upper()
            fig.add_trace(
                go.Scatter(
                    x=span,
                    y=[sla_ms] * len(span),
                    name=f"SLA {name}",
                    mode="lines",
                    line={"color": "#c62828", "dash": "dash"},
                ),
                row=row,
                col=1,
            )
            for role in roles:
                obs = obs_by_role[role]
                observed = [None if getattr(o, f"{metric}_ms") is None else getattr(o, f"{metric}_ms").p90 for o in obs]
                fig.add_trace(
                    go.Scatter(
                        x=[self._x(o.time_s) for o in obs],
                        y=observed,
                        mode="lines",
                        name=f"{role} observed {name} p90",
                        legendgroup=role,
                    ),
                    row=row,
                    col=1,
                )
                xs, ys = self._pool_decision_series(decisions, role, f"estimated_{metric}_ms")
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines+markers",
                        line={"dash": "dot"},
                        name=f"{role} estimated {name}",
                        legendgroup=role,
                    ),
                    row=row,
                    col=1,
                )
        fig.update_yaxes(rangemode="tozero")
        return self._layout(fig, f"{self.deployment}: observed and estimated latency vs SLA", height=560)

    def _load_figure(self, decisions: list[AgentDecision]) -> go.Figure:
        fig = go.Figure()
        for field, name, line in (
            ("observed_rps", "observed", {"width": 2}),
            ("forecast_rps", "forecast mean", {"dash": "dot"}),
            ("forecast_upper_rps", "forecast upper", {"dash": "dash"}),
        ):
            points = [(self._x(d.time_s), _finite(getattr(d, field))) for d in decisions]
            points = [(x, y) for x, y in points if y is not None]
            fig.add_trace(
                go.Scatter(
                    x=[x for x, _ in points], y=[y for _, y in points], name=name, mode="lines+markers", line=line
                )
            )
        fig.update_yaxes(title_text="requests/s", rangemode="tozero")
        return self._layout(fig, f"{self.deployment}: load vs forecast")

    def _timeline_figure(self, decisions: list[AgentDecision]) -> go.Figure:
        """One trace per reason, so the legend reads as the list of reasons that occurred."""
        points: dict[str, tuple[list[Any], list[str], list[str], list[str]]] = {}
        for d in decisions:
            for p in d.pools:
                xs, ys, symbols, texts = points.setdefault(p.reason.value, ([], [], [], []))
                xs.append(self._x(d.time_s))
                ys.append(p.role)
                symbols.append("circle" if d.loop == "throughput" else "diamond")
                advisory = " (advisory)" if d.advisory else ""
                texts.append(
                    html.escape(
                        f"{d.loop} loop{advisory}: {p.current} → {p.target} (wanted {p.wanted}) {p.detail}".strip()
                    )
                )
        fig = go.Figure()
        for reason, (xs, ys, symbols, texts) in sorted(points.items()):
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=reason,
                    mode="markers",
                    text=texts,
                    marker={"symbol": symbols, "size": 10},
                    hovertemplate="%{y}: %{text}<extra>" + reason + "</extra>",
                )
            )
        fig.update_yaxes(title_text="pool", type="category")
        fig.update_layout(hovermode="closest")
        return self._layout(
            fig, f"{self.deployment}: decisions (circle: throughput loop, diamond: load loop)", height=300
        )

    def render_html(self) -> str:
        """One self-contained page: plotly.js is inlined once, so it opens offline."""
        _, _, now_s = self._snapshot()
        charts = [
            fig.to_html(full_html=False, include_plotlyjs=(i == 0), config=PLOT_CONFIG)
            for i, fig in enumerate(self.figures())
        ]
        title = f"{self.deployment} agent diagnostics"
        when = "no data yet" if now_s is None else f"as of {self._time_label(now_s)}"
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(when)} · SLA TTFT '
            f"{self.sla.ttft_ms:g} ms, ITL {self.sla.itl_ms:g} ms</p>" + "".join(charts) + "</body></html>"
        )

    def _time_label(self, now_s: float) -> str:
        if self.wall_clock:
            return datetime.fromtimestamp(now_s, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"t{math.floor(now_s):09d}s"

    def maybe_write(self, now_s: float, out_dir: str | Path, every_s: float) -> Path | None:
        """Write ``diagnostics-<time>.html`` when ``now_s`` enters a new ``every_s`` period.

        Periods are aligned to multiples of ``every_s`` on the given clock (hourly reports land on
        the hour); the first call only starts the schedule, and a clock stepping back writes
        nothing. The file is written to a temporary name and renamed, so readers never see half a
        report. Returns the path written, or None.
        """
        if not every_s >= 1:
            raise ValueError(f"every_s must be >= 1 second, got {every_s}")
        period = math.floor(now_s / every_s)
        with self._lock:
            due = self._last_period is not None and period > self._last_period
            if self._last_period is None or period > self._last_period:
                self._last_period = period
        if not due:
            return None
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"diagnostics-{self._time_label(now_s)}.html"
        write_atomically(path, self.render_html())
        return path
