"""A self-contained HTML report of one run: tables from the summary, Plotly charts from the timeline.

plotly.js is embedded inline exactly once, so the file opens offline and can be mailed or archived
as one artifact. Long timelines are bucketed to at most ``MAX_POINTS`` points per series, keeping
each bucket's maximum (peaks of GPUs and latency are what a reader looks for) and its mean
arrival rate, so a day-long run still yields a page a browser opens quickly.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fleet_planner.planning import DeploymentSpec, PoolRole
from fleet_sim.results import DecisionRecord, SimulationResult, TimelineRow

MAX_POINTS = 2000
STATE_COLORS = {"ready": "#2e7d32", "starting": "#f9a825", "draining": "#9e9e9e"}
ROLE_COLORS = {"prefill": "#1565c0", "decode": "#e65100", "agg": "#6a1b9a"}
TYPE_COLORS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037")
PLOT_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #212121; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #555; margin-top: 0; }
.badge { display: inline-block; padding: .1rem .5rem; border-radius: .8rem; font-size: .9rem; font-weight: 600; }
.badge.oracle { background: #fff3e0; color: #bf360c; border: 1px solid #ffb74d; }
.badge.live { background: #e8f5e9; color: #1b5e20; border: 1px solid #81c784; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th { background: #f5f5f5; } td:first-child, th:first-child { text-align: left; }
.notes { background: #fffde7; border: 1px solid #fff59d; padding: .4rem 1.2rem; }
.small { color: #666; font-size: .85rem; }
"""


@dataclass
class _PoolSeries:
    """One pool's timeline as arrays in time order, already bucketed to at most MAX_POINTS."""

    time_s: np.ndarray
    target: np.ndarray
    ready: np.ndarray
    starting: np.ndarray
    draining: np.ndarray
    arrivals_per_s: np.ndarray
    ttft_p90_ms: np.ndarray
    itl_p90_ms: np.ndarray
    bucketed: bool


def _bucket_starts(n: int) -> np.ndarray:
    """Start index of each bucket; one row per bucket when the series is already short."""
    return np.unique(np.linspace(0, n, min(n, MAX_POINTS), endpoint=False).astype(np.intp))


def _bucket_end_times(time_s: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return time_s[np.append(starts[1:], time_s.size) - 1]


def _interval_lengths(time_s: np.ndarray) -> np.ndarray:
    """Each row covers ``[previous time, time]``; recording starts at 0."""
    dt = np.diff(time_s, prepend=0.0)
    positive = dt[dt > 0]
    fallback = float(np.median(positive)) if positive.size else 1.0
    return np.where(dt > 0, dt, fallback)


def _bucket_peak(rows: list[TimelineRow], field: str, starts: np.ndarray) -> np.ndarray:
    """Each bucket's maximum of one timeline column."""
    return np.fmax.reduceat(np.array([getattr(r, field) for r in rows], dtype=float), starts)


def _pool_series(timeline: list[TimelineRow]) -> dict[tuple[str, str], _PoolSeries]:
    rows_by_pool: dict[tuple[str, str], list[TimelineRow]] = {}
    for row in timeline:
        rows_by_pool.setdefault((row.deployment, row.role), []).append(row)
    series = {}
    for key, rows in rows_by_pool.items():
        rows.sort(key=lambda r: r.time_s)
        t = np.array([r.time_s for r in rows], dtype=float)
        starts = _bucket_starts(t.size)
        arrivals = np.add.reduceat(np.array([r.arrivals for r in rows], dtype=float), starts)
        seconds = np.add.reduceat(_interval_lengths(t), starts)
        series[key] = _PoolSeries(
            time_s=_bucket_end_times(t, starts),
            target=_bucket_peak(rows, "target", starts),
            ready=_bucket_peak(rows, "ready", starts),
            starting=_bucket_peak(rows, "starting", starts),
            draining=_bucket_peak(rows, "draining", starts),
            arrivals_per_s=arrivals / seconds,
            ttft_p90_ms=_bucket_peak(rows, "ttft_p90_ms", starts),
            itl_p90_ms=_bucket_peak(rows, "itl_p90_ms", starts),
            bucketed=t.size > MAX_POINTS,
        )
    return series


def _time_unit(duration_s: float) -> tuple[float, str]:
    if duration_s >= 6 * 3600:
        return 3600.0, "hours"
    if duration_s >= 1800:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _layout(fig: go.Figure, title: str, height: int) -> None:
    fig.update_layout(
        title=title,
        height=height,
        template="plotly_white",
        hovermode="x unified",
        margin={"l": 60, "r": 20, "t": 60, "b": 40},
        legend={"groupclick": "toggleitem"},
    )


def _fleet_figure(result: SimulationResult, unit: tuple[float, str]) -> go.Figure:
    """GPUs held per GPU type (summed over pools at each recording instant) against the inventory."""
    scale, unit_name = unit
    fig = go.Figure()
    rows = result.timeline
    types = sorted(set(result.gpu_inventory) | {r.gpu_type for r in rows})
    if rows:
        times, instant = np.unique(np.array([r.time_s for r in rows], dtype=float), return_inverse=True)
        type_index = {name: i for i, name in enumerate(types)}
        kind = np.array([type_index[r.gpu_type] for r in rows], dtype=np.intp)
        held = np.bincount(
            instant * len(types) + kind,
            weights=np.array([r.gpus for r in rows], dtype=float),
            minlength=times.size * len(types),
        ).reshape(times.size, len(types))
        starts = _bucket_starts(times.size)
        x = _bucket_end_times(times, starts) / scale
        held = np.maximum.reduceat(held, starts, axis=0)
    for i, gpu_type in enumerate(types):
        color = TYPE_COLORS[i % len(TYPE_COLORS)]
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=held[:, i],
                    name=f"{gpu_type} in use",
                    mode="lines",
                    line={"color": color, "shape": "hv"},
                )
            )
        if gpu_type in result.gpu_inventory:
            fig.add_hline(
                y=result.gpu_inventory[gpu_type],
                line={"color": color, "dash": "dash"},
                annotation_text=f"{gpu_type} inventory ({result.gpu_inventory[gpu_type]})",
                annotation_position="top left",
            )
    _layout(fig, "GPUs in use by GPU type vs inventory", 380)
    fig.update_xaxes(title_text=f"time ({unit_name})")
    fig.update_yaxes(title_text="GPUs", rangemode="tozero")
    return fig


def _decision_markers(decisions: list[DecisionRecord], scale: float) -> go.Scatter:
    """Scale decisions at their new target: triangles up for scale-out, down for scale-in."""
    if len(decisions) > MAX_POINTS:
        decisions = [decisions[i] for i in np.linspace(0, len(decisions) - 1, MAX_POINTS).astype(int)]
    return go.Scatter(
        x=[d.time_s / scale for d in decisions],
        y=[d.to_replicas for d in decisions],
        mode="markers",
        name="scale decision",
        marker={
            "symbol": ["triangle-up" if d.to_replicas > d.from_replicas else "triangle-down" for d in decisions],
            "size": 9,
            "color": "#212121",
        },
        hovertext=[f"{d.from_replicas}→{d.to_replicas}: {d.reason}" for d in decisions],
        hoverinfo="text",
    )


def _deployment_figure(
    spec: DeploymentSpec,
    series: dict[PoolRole, _PoolSeries],
    decisions: dict[PoolRole, list[DecisionRecord]],
    sla: tuple[float, float],
    unit: tuple[float, str],
) -> go.Figure:
    """Replicas per pool (stacked states, dashed target, decision markers), load, p90 TTFT and ITL."""
    scale, unit_name = unit
    roles = list(series)
    titles = [f"{role} replicas" for role in roles] + [
        "arrivals per second",
        f"p90 TTFT (ms), SLA {sla[0]:g} ms",
        f"p90 ITL (ms), SLA {sla[1]:g} ms",
    ]
    n_rows = len(titles)
    fig = make_subplots(
        rows=n_rows, cols=1, shared_xaxes=True, vertical_spacing=0.06 if n_rows < 5 else 0.045, subplot_titles=titles
    )
    load_row, ttft_row, itl_row = n_rows - 2, n_rows - 1, n_rows
    for row, role in enumerate(roles, start=1):
        s = series[role]
        x = s.time_s / scale
        for state in ("ready", "starting", "draining"):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=getattr(s, state),
                    name=f"{role} {state}",
                    legendgroup=role,
                    stackgroup=role,
                    mode="lines",
                    line={"width": 0.5, "color": STATE_COLORS[state], "shape": "hv"},
                ),
                row=row,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=s.target,
                name=f"{role} target",
                legendgroup=role,
                mode="lines",
                line={"color": "#000000", "dash": "dash", "shape": "hv"},
            ),
            row=row,
            col=1,
        )
        if decisions.get(role):
            marker = _decision_markers(decisions[role], scale)
            marker.update(name=f"{role} scale decision", legendgroup=role)
            fig.add_trace(marker, row=row, col=1)
        color = ROLE_COLORS.get(role)
        for r, values in ((load_row, s.arrivals_per_s), (ttft_row, s.ttft_p90_ms), (itl_row, s.itl_p90_ms)):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=values,
                    name=f"{role}",
                    legendgroup=role,
                    showlegend=False,
                    mode="lines",
                    line={"color": color},
                    connectgaps=False,
                ),
                row=r,
                col=1,
            )
    fig.add_hline(y=sla[0], line={"color": "#c62828", "dash": "dot"}, row=ttft_row, col=1)
    fig.add_hline(y=sla[1], line={"color": "#c62828", "dash": "dot"}, row=itl_row, col=1)
    _layout(fig, f"{spec.name} ({spec.mode}, tenant {spec.tenant}, endpoint {spec.endpoint})", 230 * n_rows + 80)
    fig.update_xaxes(title_text=f"time ({unit_name})", row=n_rows, col=1)
    fig.update_yaxes(rangemode="tozero")
    return fig


def _fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}%"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _latency_cells(stats: dict[str, Any]) -> list[str]:
    return [_fmt(stats["ttft_ms"][p]) for p in ("p50", "p90", "p99")] + [
        _fmt(stats["itl_ms"][p], 2) for p in ("p50", "p90", "p99")
    ]


LATENCY_HEADERS = ["TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p90 ms", "ITL p99 ms"]


def _fleet_table(summary: dict[str, Any]) -> str:
    fleet = summary["fleet"]
    types = sorted(set(fleet["gpu_inventory"]) | set(fleet["max_gpus_in_use"]) | set(fleet["gpu_hours_by_type"]))
    rows = [
        ["SLO attainment (TTFT and ITL met)", _pct(fleet["slo_attainment"])],
        ["GPU-hours", _fmt(fleet["gpu_hours"], 2)],
        *[[f"GPU-hours on {t}", _fmt(fleet["gpu_hours_by_type"].get(t), 2)] for t in types],
        *[
            [
                f"peak {t} in use / inventory",
                f"{_fmt(fleet['max_gpus_in_use'].get(t))} / {_fmt(fleet['gpu_inventory'].get(t))}",
            ]
            for t in types
        ],
        ["budget violations (ticks)", _fmt(fleet["budget_violations"])],
        ["scaling direction reversals per deployment-hour", _fmt(fleet["reversals_per_deployment_hour"], 2)],
        ["target changes per pool-hour", _fmt(fleet["target_changes_per_pool_hour"], 2)],
        ["requests", _fmt(fleet["requests"])],
        ["completed", _fmt(fleet["completed"])],
        ["rejected", _fmt(fleet["rejected"])],
        ["unfinished at end", _fmt(fleet["unfinished"])],
        ["never routed to a deployment", _fmt(fleet["unrouted"])],
        ["simulated seconds", _fmt(summary["simulated_seconds"])],
        ["wall seconds", _fmt(summary["wall_seconds"], 2)],
        ["requests per wall second", _fmt(summary["requests_per_wall_second"], 0)],
    ]
    return _table(["metric", "value"], rows)


def _endpoint_table(summary: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"{s['sla']['ttft_ms']:g} / {s['sla']['itl_ms']:g}",
            _fmt(s["requests"]),
            _pct(s["slo_attainment"]),
            *_latency_cells(s),
        ]
        for name, s in summary["endpoints"].items()
    ]
    return _table(["endpoint", "SLA TTFT / ITL ms", "requests", "SLO attainment", *LATENCY_HEADERS], rows)


def _tenant_table(summary: dict[str, Any]) -> str:
    rows = [
        [name, _fmt(s["requests"]), _pct(s["slo_attainment"]), _fmt(s["gpu_hours"], 2)]
        for name, s in summary["tenants"].items()
    ]
    return _table(["tenant", "requests", "SLO attainment", "GPU-hours"], rows)


DEPLOYMENT_HEADERS = [
    "deployment",
    "tenant",
    "endpoint",
    "requests",
    "completed",
    "rejected",
    "unfinished",
    "SLO attainment",
    *LATENCY_HEADERS,
    "GPU-hours",
    "GPU-hours by pool",
    "scale events",
    "reversals / h",
    "target changes / pool-h",
]


def _deployment_table(summary: dict[str, Any]) -> str:
    rows = [
        [
            name,
            s["tenant"],
            s["endpoint"],
            _fmt(s["requests"]),
            _fmt(s["completed"]),
            _fmt(s["rejected"]),
            _fmt(s["unfinished"]),
            _pct(s["slo_attainment"]),
            *_latency_cells(s),
            _fmt(s["gpu_hours"], 2),
            ", ".join(f"{role} {hours:,.2f}" for role, hours in s["gpu_hours_by_pool"].items()),
            _fmt(s["scale_events"]),
            _fmt(s["reversals_per_hour"], 2),
            _fmt(s["target_changes_per_pool_hour"], 2),
        ]
        for name, s in summary["deployments"].items()
    ]
    return _table(DEPLOYMENT_HEADERS, rows)


def _tables(summary: dict[str, Any]) -> str:
    return "".join(
        [
            "<h2>Fleet</h2>",
            _fleet_table(summary),
            "<h2>Endpoints</h2>",
            _endpoint_table(summary),
            "<h2>Tenants</h2>",
            _tenant_table(summary),
            "<h2>Deployments</h2>",
            _deployment_table(summary),
            '<p class="small">Attainment counts every arrived request: rejected and unfinished ones are misses. '
            "Requests never routed to a deployment count only in fleet and endpoint totals.</p>",
        ]
    )


def _header(result: SimulationResult) -> str:
    if result.clairvoyant:
        badge = (
            '<span class="badge oracle">clairvoyant oracle</span> '
            "knows future load: the physical limit, not a deployable policy"
        )
    else:
        badge = '<span class="badge live">live policy</span> sees only delayed past observations'
    meta = (
        f"seed {result.seed} · trace duration {result.duration_s:,.0f} s · "
        f"simulated {result.simulated_seconds:,.0f} s in {result.wall_seconds:,.2f} s wall"
    )
    notes = ""
    if result.notes:
        notes = '<div class="notes"><ul>' + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul></div>"
    return (
        f"<h1>{html.escape(result.name)}</h1>"
        f'<p class="meta">Policy <b>{html.escape(result.policy)}</b> {badge}</p>'
        f'<p class="meta">{meta}</p>{notes}'
    )


def render_report(result: SimulationResult, summary: dict[str, Any]) -> str:
    """The whole page as one HTML string; ``summary`` is ``summarize(result)``."""
    unit = _time_unit(max(result.duration_s, result.simulated_seconds))
    series = _pool_series(result.timeline)
    decisions: dict[tuple[str, str], list[DecisionRecord]] = {}
    for d in result.decisions:
        decisions.setdefault((d.deployment, d.role), []).append(d)

    charts = [
        "<h2>GPUs</h2>",
        _fleet_figure(result, unit).to_html(full_html=False, include_plotlyjs=True, config=PLOT_CONFIG),
    ]
    charts.append("<h2>Deployments over time</h2>")
    if any(s.bucketed for s in series.values()):
        charts.append(
            f'<p class="small">Long series are bucketed to {MAX_POINTS} points: '
            "replicas, GPUs and p90 latencies show each bucket's maximum, arrivals its mean rate.</p>"
        )
    for spec in result.deployments:
        pools = {role: series[(spec.name, role)] for role in spec.pools if (spec.name, role) in series}
        if not pools:
            charts.append(f"<h3>{html.escape(spec.name)}</h3><p>No timeline recorded.</p>")
            continue
        pool_decisions = {role: decisions.get((spec.name, role), []) for role in pools}
        fig = _deployment_figure(spec, pools, pool_decisions, result.endpoint_sla[spec.endpoint], unit)
        charts.append(fig.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG))

    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(result.name)} — {html.escape(result.policy)}</title>"
        f"<style>{CSS}</style></head><body>" + _header(result) + _tables(summary) + "".join(charts) + "</body></html>"
    )
