"""Engine knobs: the serving-engine settings that shape latency but are not in the profile.

One type for everything that runs or models an engine: the agent tunes them
(``local_agent.knobs``) and hands them to a connector, the simulator's pools and the emulator run
with them, and sizing must use the ones in force. The names follow vLLM
(``--max-num-batched-tokens``, ``--max-num-seqs``); SGLang and TRT-LLM have the same two limits.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import Field

from fleet_planner.planning import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_NUM_SEQS, FrozenModel

# The command-line flags of each knob (vLLM's), in the order the engine args list them.
ENGINE_FLAGS = {"max_batch_tokens": "--max-num-batched-tokens", "max_num_seqs": "--max-num-seqs"}


class _HasKnobs(Protocol):
    max_batch_tokens: int
    max_num_seqs: int


class EngineKnobs(FrozenModel):
    """Per-pool engine settings; the defaults are the engine's own."""

    max_batch_tokens: int = Field(
        default=DEFAULT_MAX_BATCH_TOKENS, ge=1, description="token budget per iteration (chunked prefill)"
    )
    max_num_seqs: int = Field(default=DEFAULT_MAX_NUM_SEQS, ge=1, description="cap on sequences decoded together")

    @classmethod
    def of(cls, pool: _HasKnobs) -> EngineKnobs:
        """The knobs a pool description (``PoolSpec``, ``PoolConfig``) says are in force."""
        return cls(max_batch_tokens=pool.max_batch_tokens, max_num_seqs=pool.max_num_seqs)

    def engine_args(self) -> list[str]:
        """The knobs as engine command-line arguments (``--max-num-batched-tokens 8192 ...``)."""
        args: list[str] = []
        for name, flag in ENGINE_FLAGS.items():
            args += [flag, str(getattr(self, name))]
        return args

    def with_engine_args(self, args: list[Any]) -> list[str]:
        """``args`` (an engine's argument list) with these knobs set: existing flags (``--flag V``
        or ``--flag=V``) replaced, missing ones appended; everything else kept in order."""
        out: list[str] = []
        skip = False
        for item in (str(a) for a in args):
            if skip:
                skip = False
                continue
            flag = item.split("=", 1)[0]
            if flag in ENGINE_FLAGS.values():
                skip = "=" not in item
                continue
            out.append(item)
        return out + self.engine_args()

    def __str__(self) -> str:
        return f"max_num_seqs={self.max_num_seqs}, max_batch_tokens={self.max_batch_tokens}"
