"""Engine knobs: the serving-engine settings that shape latency but are not in the profile.

One type for everything that runs or models an engine: the agent tunes them
(``local_agent.knobs``) and hands them to a connector, the simulator's pools and the emulator run
with them, and sizing must use the ones in force. The names follow vLLM
(``--max-num-batched-tokens``, ``--max-num-seqs``); SGLang and TRT-LLM have the same two limits.
"""

from __future__ import annotations

import re
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

# Engine defaults (vLLM's --max-num-batched-tokens / --max-num-seqs): what a pool runs with unless
# its config says otherwise. Every model of an engine (sizing, simulator, emulator) starts here.
DEFAULT_MAX_BATCH_TOKENS = 8192
DEFAULT_MAX_NUM_SEQS = 256

# The command-line flags of each knob (vLLM's), in the order the engine args list them.
ENGINE_FLAGS = {"max_batch_tokens": "--max-num-batched-tokens", "max_num_seqs": "--max-num-seqs"}


class _HasKnobs(Protocol):
    max_batch_tokens: int
    max_num_seqs: int


class EngineKnobs(BaseModel):
    """Per-pool engine settings; the defaults are the engine's own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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

    def with_engine_args(self, args: list[str]) -> list[str]:
        """An engine's argument list with these knobs set: each flag's value replaced where it is
        (``--flag V`` or ``--flag=V``), missing flags appended, everything else kept. A list that
        is one shell command line (``["python3 -m dynamo.vllm --model M ..."]``, as DGDs often
        run ``sh -c``) is edited inside that string."""
        if len(args) == 1 and " " in args[0].strip():
            return [self._in_command_line(args[0])]
        out: list[str] = []
        skip = False
        for item in args:
            if skip:
                skip = False
                continue
            flag = item.split("=", 1)[0]
            if flag in ENGINE_FLAGS.values():
                skip = "=" not in item
                continue
            out.append(item)
        return out + self.engine_args()

    def _in_command_line(self, line: str) -> str:
        for name, flag in ENGINE_FLAGS.items():
            line = _set_flag(line, flag, str(getattr(self, name)))
        return line

    def __str__(self) -> str:
        return f"max_num_seqs={self.max_num_seqs}, max_batch_tokens={self.max_batch_tokens}"


def _set_flag(line: str, flag: str, value: str) -> str:
    """``line`` (a shell command line) with ``flag``'s value set, or the flag appended."""
    pattern = re.compile(rf"(?<!\S){re.escape(flag)}(=|\s+)\S+")
    if pattern.search(line):
        return pattern.sub(lambda match: f"{flag}{match.group(1)}{value}", line)
    return f"{line.rstrip()} {flag} {value}"
