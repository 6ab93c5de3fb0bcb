"""One error type for every bad input, so the CLI can print one clear line and exit non-zero."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A user-supplied file or value is unusable.

    Always names the file (when there is one), the field inside it and the problem, e.g.
    ``scenario.yaml: deployments[0].pools.prefill.min: must be >= 0 (got -1)``.
    """

    def __init__(self, problem: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = str(file) if file is not None else None
        self.field = field
        self.problem = problem
        where = ": ".join(part for part in (self.file, field) if part)
        super().__init__(f"{where}: {problem}" if where else problem)
