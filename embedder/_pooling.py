"""Pooling one layer's token states into one vector per text, on the model's device."""

from __future__ import annotations

import torch

from ._config import Pooling

__all__ = ["pool"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """Pool ``hidden`` (B, T, H) under ``mask`` (B, T; 1 = real token) to (B, H) float32.

    Works for right and left padding: "first"/"last" token mean the first/last
    position whose mask is 1. Matches sentence-transformers' Pooling module.
    """
    hidden = hidden.float()
    if mode is Pooling.MEAN:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode is Pooling.CLS:
        first = mask.int().argmax(dim=1)
        return hidden[rows, first]
    if mode is Pooling.LAST_TOKEN:
        seq_len = mask.shape[1]
        last = seq_len - 1 - mask.int().flip(dims=[1]).argmax(dim=1)
        return hidden[rows, last]
    if mode is Pooling.MAX:
        masked = hidden.masked_fill(~mask.bool().unsqueeze(-1), -1e9)
        return masked.max(dim=1).values
    raise ValueError(f"unknown pooling {mode!r}")  # unreachable: Pooling is closed
