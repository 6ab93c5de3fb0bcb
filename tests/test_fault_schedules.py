"""Randomized fault schedules (issue 8's acceptance), the quick subset: 100 seeded schedules of
planner kill -9 with torn writes, agent loss and restart, delayed, duplicated, reordered and lost
messages, and lying agents, against the real state machine and audit log with a physical model
of pods (``benchmarks/bench_faults.py`` runs 1,000 and prints the figures)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_faults import run_schedules


def test_hundred_fault_schedules_keep_every_guarantee() -> None:
    logging.disable(logging.WARNING)  # every torn tail is reported; here they are the point
    try:
        total, failing = run_schedules(range(100))
    finally:
        logging.disable(logging.NOTSET)
    assert total.planner_kills > 100 and total.agent_losses > 100 and total.lying_agents > 50
    assert total.rounds > 3000
    assert failing == [], total.notes[:5]
    assert (total.budget_violations, total.reused_ids, total.dropped_requests) == (0, 0, 0)
