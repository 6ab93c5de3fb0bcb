"""The agent's HTTP face (aiohttp): a live dashboard, Prometheus metrics, decision state, and the
authenticated control endpoint for runtime limits.

Reading is open, like any metrics endpoint: ``/``, ``/metrics``, ``/api/state``, ``/api/figures``
and ``GET /api/limits`` (the limits are no secret: the dashboard and ``/metrics`` show their
effect anyway). Changing the limits needs ``Authorization: Bearer <token>``: ``PUT`` replaces the
whole limits document, ``PATCH`` changes only the fields given; an invalid body is refused with
400 and a JSON list of every problem, and nothing changes.
"""

from __future__ import annotations

import functools
import hmac
import html
import json
from typing import Any

import plotly.offline
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from local_agent.telemetry.control import LimitsError, LimitsStore
from local_agent.telemetry.diagnostics import CSS, PLOT_CONFIG, DiagnosticsRecorder

PAGE_SCRIPT = """
const CONFIG = %(config)s;
const REFRESH_MS = %(refresh_ms)d;
function cell(row, text) { const td = row.insertCell(); td.textContent = text; }
function fmt(value) { return value === null || value === undefined ? "–" : String(Math.round(value * 10) / 10); }
async function refresh() {
  const status = document.getElementById("status");
  try {
    const [figures, state] = await Promise.all(
      [fetch("api/figures").then(r => r.json()), fetch("api/state").then(r => r.json())]);
    figures.forEach((fig, i) => Plotly.react("chart-" + i, fig.data, fig.layout, CONFIG));
    const body = document.getElementById("pools");
    body.replaceChildren();
    for (const [loop, decision] of Object.entries(state.latest)) {
      for (const pool of decision.pools) {
        const row = body.insertRow();
        [loop + (decision.advisory ? " (advisory)" : ""), pool.role, pool.current, pool.wanted, pool.target,
         pool.reason, fmt(pool.estimated_ttft_ms), fmt(pool.estimated_itl_ms), pool.detail].forEach(v => cell(row, v));
      }
    }
    status.textContent = "updated at agent time " + fmt(state.now_s) + " s";
  } catch (err) {
    status.textContent = "update failed: " + err;
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
"""


@functools.cache
def _plotly_js() -> str:
    """plotly.js (~5 MB) inline, so the dashboard needs no internet access; loaded once per page."""
    return plotly.offline.get_plotlyjs()


def _live_page(deployment: str, charts_count: int, refresh_s: float) -> str:
    title = html.escape(f"{deployment} agent")
    charts = "".join(f'<div id="chart-{i}"></div>' for i in range(charts_count))
    headers = "".join(
        f"<th>{h}</th>"
        for h in ("loop", "pool", "current", "wanted", "target", "reason", "est. TTFT ms", "est. ITL ms", "detail")
    )
    script = PAGE_SCRIPT % {"config": json.dumps(PLOT_CONFIG), "refresh_ms": int(refresh_s * 1000)}
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{CSS} table {{ border-collapse: collapse; }} "
        "th, td { border: 1px solid #ddd; padding: .2rem .5rem; }</style>"
        f"<script>{_plotly_js()}</script></head><body>"
        f'<h1>{title}</h1><p class="meta" id="status">loading…</p>'
        f'<table><thead><tr>{headers}</tr></thead><tbody id="pools"></tbody></table>'
        f"{charts}<script>{script}</script></body></html>"
    )


def _error(status: int, message: str, problems: list[str] | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if problems is not None:
        body["problems"] = problems
    return web.json_response(body, status=status, headers=headers or None)


def make_app(
    recorder: DiagnosticsRecorder,
    metrics_registry: CollectorRegistry,
    limits_store: LimitsStore,
    token: str,
    refresh_s: float = 5.0,
) -> web.Application:
    """Build the application; serve it with ``web.AppRunner`` / ``web.TCPSite`` next to the agent loop."""
    if not token:
        raise ValueError("an empty control token would let anyone change the limits")
    expected = token.encode()
    page = _live_page(recorder.deployment, len(recorder.figures()), refresh_s)

    def authorized(request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given_bytes = given.strip().encode("utf-8", "surrogateescape")  # header bytes, exactly as sent
        return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, expected)

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(metrics_registry), headers={"Content-Type": content_type})

    async def state(_: web.Request) -> web.Response:
        return web.json_response(recorder.state())

    async def figures(_: web.Request) -> web.Response:
        return web.Response(text=recorder.figures_json(), content_type="application/json")

    async def limits(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response(limits_store.current.model_dump(mode="json"))
        if not authorized(request):
            return _error(401, "missing or wrong bearer token", None, **{"WWW-Authenticate": "Bearer"})
        try:
            body = json.loads(await request.text())
        except ValueError as err:
            return _error(400, f"body is not valid JSON: {err}")
        try:
            if request.method == "PUT":
                new = limits_store.replace(body)
            else:
                new = limits_store.merge(body)
        except LimitsError as err:
            return _error(400, "invalid limits", err.problems)
        return web.json_response(new.model_dump(mode="json"))

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/figures", figures)
    for method in ("GET", "PUT", "PATCH"):
        app.router.add_route(method, "/api/limits", limits)
    return app
