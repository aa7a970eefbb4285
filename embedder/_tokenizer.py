"""The encoder's tokenizer on its own, so CPU workers can tokenize for GPU workers.

A :class:`TextTokenizer` resolves ``max_length`` and lower-casing from the
model dir exactly as :class:`ElasticEncoder` does, so token ids made in a CPU
task are the ids the encoder would have made itself
(:meth:`ElasticEncoder.encode_tokenized` takes them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._batching import Tokenized, tokenize
from ._errors import ModelError, UnsupportedModelError
from ._loading import ModelDir, read_model_dir
from ._text import check_texts

__all__ = ["TextTokenizer", "cached_tokenizer", "load_hf_tokenizer", "tokenized_from_flat"]


def load_hf_tokenizer(mdir: ModelDir, path: str | Path) -> Any:
    """The model dir's Hugging Face tokenizer, offline; a model without a pad token pads with eos."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(mdir.transformer_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(str(path), f"cannot load its tokenizer: {exc}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise UnsupportedModelError(str(path), "its tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class TextTokenizer:
    """Validate texts and tokenize them once, truncated to the encoder's ``max_length``.

    >>> tok = TextTokenizer.from_model(path)              # doctest: +SKIP
    >>> t = tok(["a passage", "another one"])             # doctest: +SKIP
    >>> t.lengths                                         # doctest: +SKIP
    array([4, 4])
    """

    def __init__(self, tokenizer: Any, *, max_length: int, lowercase: bool) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lowercase = lowercase

    @classmethod
    def from_model(cls, path: str | Path, max_length: int | None = None) -> TextTokenizer:
        """The tokenizer of the model dir at ``path``; ``max_length=None`` reads it as the encoder does."""
        mdir = read_model_dir(path)
        _pooling, resolved = mdir.resolve(None, max_length)
        return cls(load_hf_tokenizer(mdir, path), max_length=resolved, lowercase=mdir.do_lower_case)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def padding_side(self) -> str:
        return getattr(self.tokenizer, "padding_side", "right")

    def __call__(self, texts: Sequence[str]) -> Tokenized:
        """Token ids of ``texts``; raises :class:`InvalidTextError` naming any None / empty / non-string."""
        check_texts(texts)
        return tokenize(self.tokenizer, texts, self.max_length, lowercase=self.lowercase)

    def tokenize_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, offsets, truncated)``: all ids as one int32 array, row i at ``values[offsets[i]:offsets[i+1]]``.

        The layout of an Arrow list column, so a CPU task can hand the ids on without a Python list per row.
        """
        tok = self(texts)
        offsets = np.zeros(len(tok.ids) + 1, dtype=np.int64)
        np.cumsum(tok.lengths, out=offsets[1:])
        values = np.fromiter((i for ids in tok.ids for i in ids), dtype=np.int32, count=int(offsets[-1]))
        return values, offsets, tok.truncated


@functools.lru_cache(maxsize=4)
def cached_tokenizer(path: str, max_length: int | None) -> TextTokenizer:
    """One :class:`TextTokenizer` per (model dir, max_length) per process: Ray reuses worker processes
    across tasks, so a task pays the tokenizer's load once, not per batch."""
    return TextTokenizer.from_model(path, max_length)


def tokenized_from_flat(values: np.ndarray, offsets: np.ndarray, truncated: np.ndarray) -> Tokenized:
    """:class:`Tokenized` over an Arrow-style flat layout (views, no copies per row)."""
    lengths = np.diff(offsets).astype(np.int64)
    ids = [values[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]
    return Tokenized(ids=ids, lengths=lengths, truncated=np.asarray(truncated, dtype=bool))
