"""Files other processes read while they are written."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def write_atomically(path: Path, text: str | bytes, *, durable: bool = False, private: bool = False) -> None:
    """Write ``text`` (or bytes) to ``path`` so that a reader sees the old content or the whole
    new one, never a part: a temporary file beside it, then a rename. The temporary name is unique
    per call, so processes writing the same file at once do not interleave (the last rename wins).
    ``durable`` syncs the data to disk before the rename (state that must survive a crash);
    ``private`` creates the file readable and writable by its owner only (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        with open(descriptor, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
