"""Versioned wire protocols of Fleet Planner; the modules under ``v1`` are generated from
``proto/fleet_planner/api/v1/planner.proto`` by ``scripts/gen_proto.sh`` (do not edit them)."""
