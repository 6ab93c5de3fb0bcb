"""Bounds and name formats shared by the core and the planner's wire contract: a deployment file, an
engine profile and an agent's message are held to the same limits, so what one accepts the others
can carry. Here rather than in the contract so that the core (and the simulator's baselines, whose
cache is keyed by the code they run) does not depend on the wire schema."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

MAX_REPLICAS = 10_000
MAX_GPUS_PER_REPLICA = 1024
MAX_NAME = 256
MAX_STARTUP_S = 86_400.0

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
EndpointName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
]
