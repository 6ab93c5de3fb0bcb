"""One error type for every bad input, so the CLI can print one clear line and exit non-zero."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


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


def read_input_text(path: str | Path, what: str = "") -> str:
    """A user-supplied file's UTF-8 text; a missing, unreadable or binary file is one InputError
    naming it (``cannot read[ the WHAT]: why``)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read{' the ' + what if what else ''}: {unreadable(exc)}", file=path) from None


def unreadable(exc: Exception) -> str:
    """Why a file could not be read: the OS's word where it gave one (else the error itself: not
    UTF-8 text, a malformed CSV)."""
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def path_kind(path: str | Path) -> Literal["file", "folder"] | None:
    """What is at ``path``: a file, a folder or nothing. ``Path.exists`` raises rather than
    answers for a path the OS cannot look up (a name too long for the file system, a folder on the
    way that may not be searched); that is one InputError naming it, not a traceback."""
    try:
        if not Path(path).exists():
            return None
        return "folder" if Path(path).is_dir() else "file"
    except OSError as exc:
        raise InputError(f"cannot look up: {unreadable(exc)}", file=path) from None
