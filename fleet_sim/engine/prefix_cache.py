"""The KV prefix cache of one replica: an LRU of prompt blocks (Mooncake ``hash_ids``).

The router peeks at it to send a prompt where most of its prefix is cached; the prefill stage
takes its hits (those tokens are not computed) and inserts a prompt's blocks once its prefill
completed (blocks still being computed are not shareable yet, as in vLLM).
"""

from __future__ import annotations

from collections import OrderedDict

PREFIX_BLOCK_TOKENS = 512  # tokens per prefix-cache block (Mooncake ``hash_ids`` granularity)


class PrefixCache:
    """Cached prefix-block ids, least recently used first, at most ``capacity`` blocks."""

    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def peek(self, hashes: list[int], limit: int) -> int:
        """Prompt tokens of ``hashes`` cached here (leading blocks only, at most ``limit``), without
        touching the LRU order: the router asks every replica, only one serves the prompt."""
        blocks = self._blocks
        if not blocks:
            return 0
        hit = 0
        for block in hashes:
            if block not in blocks:
                break
            hit += PREFIX_BLOCK_TOKENS
        return min(hit, limit)

    def take(self, hashes: list[int], input_tokens: int) -> int:
        """Prompt tokens already cached: the leading blocks found (stop at the first miss), at most
        ``input - 1`` (the last token is always computed); the blocks hit become most recent."""
        blocks = self._blocks
        hit = 0
        for block in hashes:
            if block not in blocks:
                break
            blocks.move_to_end(block)
            hit += PREFIX_BLOCK_TOKENS
        return min(hit, input_tokens - 1)

    def insert(self, hashes: list[int]) -> None:
        """A prompt's blocks become the most recent; least recently used ones past capacity go."""
        blocks = self._blocks
        for block in hashes:
            blocks[block] = None
            blocks.move_to_end(block)
        for _ in range(len(blocks) - self.capacity):
            blocks.popitem(last=False)
