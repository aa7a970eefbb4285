"""Long texts as several chunks: token windows cut at word (or sentence) starts, with an overlap.

A chunk is a character span of the text, so a chunk's text is ``text[start:end]`` and a reader can point
back into the document. Windows are counted in the model's own tokens (no special tokens), so a chunk of
``tokens`` tokens always fits the encoder: nothing is truncated.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import EncoderConfigError

__all__ = ["Chunking", "chunk_spans"]

#: a token ending in one of these, then whitespace, ends a sentence
_SENTENCE_END = ".!?"


@dataclass(frozen=True)
class Chunking:
    """How a text is cut: at most ``tokens`` tokens per chunk, ``overlap`` tokens repeated from the chunk
    before, and with ``sentences`` each cut moved back to a sentence start when one lies in the window's
    second half."""

    tokens: int
    overlap: int = 0
    sentences: bool = False

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise EncoderConfigError(f"chunking tokens must be >= 1, got {self.tokens}")
        if not 0 <= self.overlap < self.tokens:
            raise EncoderConfigError(
                f"chunking overlap must be in 0..{self.tokens - 1} (below tokens), got {self.overlap}"
            )

    def describe(self) -> str:
        """One stable line for the table's provenance: a change of it is a change of the vectors."""
        return f"tokens={self.tokens},overlap={self.overlap},sentences={str(self.sentences).lower()}"

    @classmethod
    def parse(cls, text: str) -> Chunking:
        """The inverse of :meth:`describe`."""
        fields = dict(part.split("=", 1) for part in text.split(","))
        return cls(int(fields["tokens"]), int(fields["overlap"]), fields["sentences"] == "true")


def chunk_spans(tokenizer: Any, texts: Sequence[str], chunking: Chunking) -> list[list[tuple[int, int]]]:
    """Each text's chunks as ``(char_start, char_end)`` spans, in order; a text that fits is one span, the
    whole text. ``tokenizer``: a fast Hugging Face tokenizer (character offsets are needed)."""
    if not texts:
        return []
    enc = tokenizer(
        list(texts),
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        truncation=False,
        verbose=False,  # no "longer than the maximum" warning: that is why we are here
    )
    encodings = getattr(enc, "encodings", None)
    if not encodings:
        raise EncoderConfigError("chunking needs a fast tokenizer (character offsets); this model has a slow one")
    return [_spans(text, e.offsets, chunking) for text, e in zip(texts, encodings, strict=True)]


def _spans(text: str, offsets: Sequence[tuple[int, int]], chunking: Chunking) -> list[tuple[int, int]]:
    n = len(offsets)
    if n <= chunking.tokens:
        return [(0, len(text))]
    starts = _word_starts(offsets)
    sentence_starts = _sentence_starts(text, offsets, starts) if chunking.sentences else []
    spans = []
    s = 0
    while True:
        end = s + chunking.tokens
        if end >= n:
            spans.append((offsets[s][0], offsets[n - 1][1]))
            return spans
        cut = _last_at_most(starts, end, above=s) or end  # one word longer than the window: cut inside it
        if sentence_starts:
            cut = _last_at_most(sentence_starts, cut, above=s + chunking.tokens // 2) or cut
        spans.append((offsets[s][0], offsets[cut - 1][1]))
        back = cut - chunking.overlap
        s = _last_at_most(starts, back, above=s) or (back if back > s else cut)


def _word_starts(offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Token positions that begin a whitespace-separated word (whitespace lies between them and the token
    before), so a chunk never starts or ends inside a word, nor on the punctuation after one."""
    return [t for t in range(1, len(offsets)) if offsets[t][0] > offsets[t - 1][1]]


def _sentence_starts(text: str, offsets: Sequence[tuple[int, int]], word_starts: list[int]) -> list[int]:
    """Word starts that follow a sentence's end: the token before ends in . ! or ?."""
    return [t for t in word_starts if text[offsets[t - 1][1] - 1] in _SENTENCE_END]


def _last_at_most(positions: list[int], limit: int, *, above: int) -> int | None:
    """The largest of the sorted ``positions`` that is <= ``limit`` and > ``above``; None if there is none."""
    i = bisect.bisect_right(positions, limit) - 1
    return positions[i] if i >= 0 and positions[i] > above else None
