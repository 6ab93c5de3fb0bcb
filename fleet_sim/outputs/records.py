"""Row-level outputs: every scaling decision (JSON lines) and every pool interval (CSV), so a run
can be audited or re-plotted without re-simulating."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from fleet_sim.results import DecisionRecord, TimelineRow

from .summary import number

TIMELINE_COLUMNS = (
    "time_s",
    "deployment",
    "pool",
    "gpu_type",
    "target",
    "ready",
    "starting",
    "draining",
    "pending",
    "gpus",
    "gpu_seconds",
    "arrivals",
    "ttft_p90_ms",
    "itl_p90_ms",
)


def write_decisions(decisions: list[DecisionRecord], path: Path) -> None:
    """One JSON object per line, in recording order."""
    with path.open("w", encoding="utf-8") as out:
        for d in decisions:
            record = {
                "time_s": number(d.time_s),
                "deployment": d.deployment,
                "pool": d.role,
                "from": d.from_replicas,
                "to": d.to_replicas,
                "reason": d.reason,
            }
            out.write(json.dumps(record, allow_nan=False) + "\n")


def _cell(value: float) -> str | float:
    """Undefined latencies are empty cells, which spreadsheets and pandas read as missing."""
    return "" if math.isnan(value) else value


def write_timeline(timeline: list[TimelineRow], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(TIMELINE_COLUMNS)
        for r in timeline:
            writer.writerow(
                (
                    r.time_s,
                    r.deployment,
                    r.role,
                    r.gpu_type,
                    r.target,
                    r.ready,
                    r.starting,
                    r.draining,
                    r.pending,
                    r.gpus,
                    r.gpu_seconds,
                    r.arrivals,
                    _cell(r.ttft_p90_ms),
                    _cell(r.itl_p90_ms),
                )
            )
