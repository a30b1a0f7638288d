"""The embedded engine's prefix cache: KV of token sequences kept in blocks, reused by prompts
that start with them (as vLLM's automatic prefix caching). ``EmbeddedBackend`` owns one, in its
worker thread; the module docstring of ``toolsim.llm.embedded`` tells how a prefill reuses it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

PREFIX_BLOCK = 16
"""Tokens per prefix-cache block: a prompt reuses whole blocks only."""
SHARED_MIN = 64
"""Uncached tokens a shared prefix must have to be worth its own prefill pass."""
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30
"""1 GiB: about 23k tokens of SmolLM2-135M KV in float32 (46 KB a token), 46k in bfloat16."""


@dataclass
class Block:
    parent: int | None
    """The key of the block before this one (None: the first block of a sequence)."""
    tokens: tuple[int, ...]
    kv: torch.Tensor
    """``[layers, 2 (keys, values), kv_heads, block, head_dim]``."""


class PrefixCache:
    """KV of token sequences the engine ran, in blocks of ``block`` tokens (worker thread
    only).

    A block's key hashes its tokens with its parent's key, so finding a prompt's longest
    cached prefix is a walk from its first block, and sequences that share a prefix (one
    system prompt, one conversation's earlier turns) share its blocks. Entries keep their
    tokens and parent: a hash collision reads as a miss, never as another sequence's KV.
    Eviction is least recently used by bytes; a chain is touched from its end back to its
    first block, so a parent is always more recent than its children and outlives them.
    """

    def __init__(self, max_bytes: int, block: int = PREFIX_BLOCK) -> None:
        self.max_bytes = max_bytes
        self.block = block
        self.bytes = 0
        self.evicted = 0
        self._blocks: OrderedDict[int, Block] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, tokens: Sequence[int], limit: int) -> list[torch.Tensor]:
        """The KV blocks of the longest cached prefix of ``tokens[:limit]``, in order."""
        keys: list[int] = []
        parent: int | None = None
        for start in range(0, limit - self.block + 1, self.block):
            chunk = tuple(tokens[start : start + self.block])
            key = hash((parent, chunk))
            entry = self._blocks.get(key)
            if entry is None or entry.parent != parent or entry.tokens != chunk:
                break
            keys.append(key)
            parent = key
        self._touch(keys)
        return [self._blocks[key].kv for key in keys]

    def store(self, tokens: Sequence[int], gather: Callable[[int, int], torch.Tensor]) -> None:
        """Keep the whole blocks of ``tokens``. ``gather(start, end)`` returns the KV of
        positions ``start:end`` as ``[layers, 2, kv_heads, end - start, head_dim]``; it is
        called once, for the blocks not held yet (a suffix: a parent outlives its children)."""
        keys: list[int] = []
        missing: list[tuple[int, int | None, tuple[int, ...]]] = []
        parent: int | None = None
        for start in range(0, len(tokens) - self.block + 1, self.block):
            chunk = tuple(tokens[start : start + self.block])
            key = hash((parent, chunk))
            entry = self._blocks.get(key)
            if entry is None:
                missing.append((key, parent, chunk))
            elif entry.parent != parent or entry.tokens != chunk or missing:
                break  # a collision: the other sequence keeps its block
            keys.append(key)
            parent = key
        if missing:
            first = len(keys) - len(missing)
            kv = gather(first * self.block, len(keys) * self.block)
            for j, (key, parent, chunk) in enumerate(missing):
                block = kv[:, :, :, j * self.block : (j + 1) * self.block].clone()
                self._blocks[key] = Block(parent, chunk, block)
                self.bytes += block.numel() * block.element_size()
        self._touch(keys)
        while self.bytes > self.max_bytes and self._blocks:
            _, dropped = self._blocks.popitem(last=False)
            self.bytes -= dropped.kv.numel() * dropped.kv.element_size()
            self.evicted += 1

    def clear(self) -> None:
        self._blocks.clear()
        self.bytes = 0

    def _touch(self, keys: list[int]) -> None:
        for key in reversed(keys):
            self._blocks.move_to_end(key)


def shared_prefixes(prompts: list[list[int]], block: int) -> list[list[int]]:
    """The longest whole-block prefixes (short of a last token) that two or more of
    ``prompts`` share, none a prefix of another."""
    found: set[tuple[int, ...]] = set()
    for a, b in itertools.pairwise(sorted(prompts)):  # sorted: adjacent pairs hold them all
        limit = min(len(a), len(b)) - 1
        n = next((i for i in range(limit) if a[i] != b[i]), limit) // block * block
        if n:
            found.add(tuple(a[:n]))
    return [list(p) for p in found if not any(len(q) > len(p) and q[: len(p)] == p for q in found)]


def stack_prefixes(
    prefixes: list[list[torch.Tensor]], width: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(keys, values)`` of ``[rows, kv_heads, width, head_dim]``: each row's
    blocks right-aligned, zeros (masked) on their left."""
    first = next(blocks[0] for blocks in prefixes if blocks)
    layers, _, heads, block, dim = first.shape
    out = first.new_zeros((layers, 2, len(prefixes), heads, width, dim))
    for i, blocks in enumerate(prefixes):
        start = width - len(blocks) * block
        for j, kv in enumerate(blocks):
            out[:, :, i, :, start + j * block : start + (j + 1) * block] = kv
    return [(out[layer, 0], out[layer, 1]) for layer in range(layers)]
