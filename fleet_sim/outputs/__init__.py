"""A simulation run's outputs: ``summary.json``, ``decisions.jsonl``, ``timeline.csv`` and a
self-contained ``report.html``, all derived from one ``SimulationResult``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet_sim.results import SimulationResult

from .records import TIMELINE_COLUMNS, write_decisions, write_timeline
from .report import render_report
from .stability import DeploymentStability, ScalingStability, scaling_stability
from .summary import priority_weighted_attainment, slo_met, summarize

__all__ = [
    "TIMELINE_COLUMNS",
    "DeploymentStability",
    "ScalingStability",
    "priority_weighted_attainment",
    "render_report",
    "scaling_stability",
    "slo_met",
    "summarize",
    "write_decisions",
    "write_outputs",
    "write_timeline",
]


def write_outputs(result: SimulationResult, out_dir: Path) -> dict[str, Any]:
    """Write the four output files into ``out_dir`` (created if missing); return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    write_decisions(result.decisions, out_dir / "decisions.jsonl")
    write_timeline(result.timeline, out_dir / "timeline.csv")
    (out_dir / "report.html").write_text(render_report(result, summary), encoding="utf-8")
    return summary
