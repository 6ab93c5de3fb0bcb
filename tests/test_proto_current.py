"""CI check: the committed generated protocol modules are exactly what scripts/gen_proto.sh makes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["planner_pb2.py", "planner_pb2.pyi", "planner_pb2_grpc.py"]


def test_generated_code_is_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    for name in GENERATED:
        fresh = (tmp_path / "fleet_planner" / "api" / "v1" / name).read_text()
        committed = (ROOT / "fleet_planner" / "api" / "v1" / name).read_text()
        assert fresh == committed, f"fleet_planner/api/v1/{name} is stale: run scripts/gen_proto.sh"
