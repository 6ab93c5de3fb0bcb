"""The in-memory trace: a struct of numpy arrays sorted by arrival, so replay stays vectorised."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Past this a trace does not fit one machine's replay (about 300 bytes a request in the simulator,
# docs/simulator.md, *Memory*): a slip of a scale factor or peak rate is refused before the
# arrays are drawn instead of ending in a MemoryError.
MAX_TRACE_REQUESTS = 50_000_000


@dataclass(frozen=True)
class Trace:
    """Requests sorted by ``arrival_s`` (seconds from the trace start).

    ``hash_ids`` (Mooncake prefix-block ids, 512 tokens a block) is kept when the source has it;
    equal leading ids mean a shareable KV prefix.
    """

    arrival_s: np.ndarray  # float64, non-decreasing, >= 0
    input_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    source: str = ""
    hash_ids: list[list[int]] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("trace columns differ in length")
        if self.hash_ids is not None and len(self.hash_ids) != n:
            raise ValueError("hash_ids length differs from the trace")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0
