#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC modules from proto/ (reproducible: same grpcio-tools, same
# output). Usage: scripts/gen_proto.sh [OUT_DIR]   (default: the repository root)
# tests/test_proto_current.py runs this into a temporary folder and diffs with the committed files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root}"
python="${PYTHON:-python}"
if [[ -x "$root/.venv/bin/python" && -z "${PYTHON:-}" ]]; then python="$root/.venv/bin/python"; fi
cd "$root/proto"
"$python" -m grpc_tools.protoc -I. \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  fleet_planner/api/v1/planner.proto
