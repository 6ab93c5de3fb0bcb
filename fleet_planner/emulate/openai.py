"""The OpenAI-compatible request subset the emulator understands, and its tokenizer-free length rule.

Lengths without a tokenizer:

- a prompt given as token ids (``[1, 2, 3]`` or ``[[1, 2, 3]]``) has that many tokens — what
  ``fleet-planner profile live`` sends, since every OpenAI-compatible server accepts it and the
  length is then exact everywhere;
- a text prompt, and each chat message's text, counts one token per whitespace-separated word
  (at least one token per request);
- the output is exactly ``max_tokens`` (``max_completion_tokens`` for chat) tokens, default 16: the
  emulator never stops early, as if ``ignore_eos`` were always set.

Unknown fields (temperature, ``ignore_eos``, ...) are accepted and ignored, as real servers do.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_TOKENS = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError(f"one prompt per request (got a batch of {len(prompt)})")
            return prompt[0]
        return prompt

    def input_tokens(self) -> int:
        if isinstance(self.prompt, list):
            return len(self.prompt)
        return max(1, len(str(self.prompt).split()))

    def output_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def words(self) -> int:
        if self.content is None:
            return 0
        if isinstance(self.content, str):
            return len(self.content.split())
        return sum(len(str(part.get("text", "")).split()) for part in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def input_tokens(self) -> int:
        return max(1, sum(m.words() for m in self.messages))

    def output_tokens(self) -> int:
        for value in (self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return DEFAULT_MAX_TOKENS


def error_body(message: str, kind: str, code: int) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
