"""CPU pre-processing: tokenize once, plan batches under a token budget.

Padded: texts are sorted by token length (longest first, so an out-of-memory
batch shows up at once) and cut into batches whose padded size ``rows x
longest`` stays under the budget. Packed (:mod:`embedder._packed` runs them):
texts in input order, cut into batches of real tokens. Each batch remembers the
input positions of its rows, so outputs are written back in input order.
Which texts may be tokenized at all is :mod:`embedder._text`'s rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Batch", "PackedBatch", "Plan", "Tokenized", "make_plan", "plan_batches", "plan_packed", "tokenize"]


@dataclass(frozen=True)
class Tokenized:
    ids: Sequence[Sequence[int]]  # per text: a list, or a view into one flat array
    lengths: np.ndarray  # (n,) tokens per text after truncation, specials included
    truncated: np.ndarray  # (n,) bool: the text had more than max_length tokens


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, lowercase: bool = False) -> Tokenized:
    """Tokenize every text once, truncating to ``max_length`` and noting which were cut."""
    if not texts:
        return Tokenized(ids=[], lengths=np.zeros(0, dtype=np.int64), truncated=np.zeros(0, dtype=bool))
    if lowercase:
        texts = [t.lower() for t in texts]
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    ids = enc["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    encodings = getattr(enc, "encodings", None)
    if encodings:
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(ids))
    else:  # slow tokenizer: a text that fills max_length exactly is counted as cut
        truncated = lengths >= max_length
    return Tokenized(ids=ids, lengths=lengths, truncated=truncated)


@dataclass(frozen=True)
class Batch:
    positions: np.ndarray  # input positions of the rows, in batch order
    input_ids: np.ndarray  # (B, T) int64, padded
    attention_mask: np.ndarray  # (B, T) int64

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` of this batch, trimmed to their own longest text (right padding)."""
        mask = self.attention_mask[start:stop]
        width = self.input_ids.shape[1]
        if width and mask[:, -1].sum() == 0 and mask[:, 0].all():  # right-padded: drop all-pad columns
            width = max(1, int(mask.sum(axis=1).max()))
        return Batch(
            positions=self.positions[start:stop],
            input_ids=self.input_ids[start:stop, :width],
            attention_mask=mask[:, :width],
        )


@dataclass(frozen=True)
class PackedBatch:
    positions: np.ndarray  # input positions of the texts, in batch order
    ids: np.ndarray  # (N,) int64: every text's ids, one after another
    lengths: np.ndarray  # (B,) tokens per text

    @property
    def padded_tokens(self) -> int:
        """Tokens computed: the real ones (nothing is padded)."""
        return int(self.ids.size)

    @property
    def longest(self) -> int:
        return int(self.lengths.max()) if len(self.lengths) else 0

    @property
    def shortest(self) -> int:
        return int(self.lengths.min()) if len(self.lengths) else 0

    def rows(self, start: int, stop: int) -> PackedBatch:
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        return PackedBatch(
            positions=self.positions[start:stop],
            ids=self.ids[offsets[start] : offsets[stop]],
            lengths=self.lengths[start:stop],
        )


def plan_packed(tok: Tokenized, *, batch_tokens: int, max_batch_size: int) -> list[PackedBatch]:
    """Cut texts (in input order; nothing is padded, so no sorting) into batches of at most
    ``batch_tokens`` real tokens and ``max_batch_size`` texts. A text longer than the budget gets a
    batch of its own."""
    batches: list[PackedBatch] = []
    n = len(tok.lengths)
    start = 0
    while start < n:
        stop, total = start, 0
        while stop < n and stop - start < max_batch_size:
            length = int(tok.lengths[stop])
            if stop > start and total + length > batch_tokens:
                break
            total += length
            stop += 1
        pieces = [np.asarray(tok.ids[i], dtype=np.int64) for i in range(start, stop)]
        batches.append(
            PackedBatch(
                positions=np.arange(start, stop),
                ids=np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64),
                lengths=tok.lengths[start:stop].astype(np.int64),
            )
        )
        start = stop
    return batches


@dataclass(frozen=True)
class Plan:
    batches: list[Any]  # Batch (padded), or PackedBatch (packed)
    real_tokens: int
    padded_tokens: int
    truncated_positions: np.ndarray

    @property
    def padding_overhead(self) -> float:
        """Padded tokens computed beyond the real ones, as a fraction of the real ones."""
        return self.padded_tokens / self.real_tokens - 1.0 if self.real_tokens else 0.0


def plan_batches(
    tok: Tokenized,
    *,
    batch_tokens: int,
    max_batch_size: int,
    pad_token_id: int,
    padding_side: str = "right",
) -> Plan:
    """Sort by length and cut into padded batches of at most ``batch_tokens`` tokens.

    A single text longer than the budget still gets a batch of its own.
    """
    order = np.argsort(-tok.lengths, kind="stable")
    batches: list[Batch] = []
    start = 0
    n = len(order)
    while start < n:
        longest = int(tok.lengths[order[start]])
        rows = max(1, min(max_batch_size, batch_tokens // max(longest, 1), n - start))
        positions = order[start : start + rows]
        input_ids = np.full((rows, longest), pad_token_id, dtype=np.int64)
        mask = np.zeros((rows, longest), dtype=np.int64)
        for r, pos in enumerate(positions):
            seq = tok.ids[pos]
            if padding_side == "left":
                input_ids[r, longest - len(seq) :] = seq
                mask[r, longest - len(seq) :] = 1
            else:
                input_ids[r, : len(seq)] = seq
                mask[r, : len(seq)] = 1
        batches.append(Batch(positions=positions, input_ids=input_ids, attention_mask=mask))
        start += rows
    return Plan(
        batches=batches,
        real_tokens=int(tok.lengths.sum()),
        padded_tokens=sum(b.padded_tokens for b in batches),
        truncated_positions=np.flatnonzero(tok.truncated),
    )


def make_plan(
    tok: Tokenized,
    *,
    packed: bool,
    batch_tokens: int,
    max_batch_size: int | None,
    pad_token_id: int,
    padding_side: str,
) -> Plan:
    """CPU pre-processing after tokenizing: packed batches of real tokens, or sorted by length and cut
    into padded token-budget batches."""
    if packed:
        batches = plan_packed(tok, batch_tokens=batch_tokens, max_batch_size=max_batch_size or len(tok.lengths) or 1)
        real = int(tok.lengths.sum())
        return Plan(
            batches=batches, real_tokens=real, padded_tokens=real, truncated_positions=np.flatnonzero(tok.truncated)
        )
    return plan_batches(
        tok,
        batch_tokens=batch_tokens,
        max_batch_size=max_batch_size or 1024,
        pad_token_id=pad_token_id,
        padding_side=padding_side,
    )
