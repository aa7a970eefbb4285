"""The loaded model cut to the deepest requested layer, with its exit layers pooled by hooks.

Loading (fused SDPA attention where transformers has it), block surgery (the
blocks after the deepest requested layer are dropped when the model is loaded
and are never run; BERT's pooler head is skipped), forward hooks that pool each
exit layer as it is produced, and running fewer of the kept blocks for one call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._config import DEFAULT_BATCH_TOKENS, Pooling
from ._errors import UnsupportedModelError
from ._loading import ModelDir, find_blocks, set_submodule
from ._pooling import pool

__all__ = ["ExitModel", "default_batch_tokens", "load_model"]

logger = logging.getLogger("embedder")


@dataclass
class _Capture:
    """Per-batch state the exit hooks read and fill."""

    mask: torch.Tensor | None = None
    layers: frozenset[int] = frozenset()
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)


class ExitModel:
    """A model whose block list is cut to ``depth`` blocks, pooling each of ``exit_layers`` through a
    forward hook while :meth:`capturing`."""

    def __init__(
        self, model: nn.Module, *, num_layers: int, depth: int, exit_layers: Iterable[int], pooling: Pooling
    ) -> None:
        self.model = model
        self.num_layers = num_layers
        self.pooling = pooling
        self.blocks_path, blocks = find_blocks(model, num_layers)
        # Keep only the blocks we will ever run: the rest are freed, never called.
        self.blocks = nn.ModuleList(list(blocks)[:depth])
        set_submodule(model, self.blocks_path, self.blocks)
        if isinstance(getattr(model, "pooler", None), nn.Module):
            model.pooler = None  # BERT's CLS pooler head: not a sentence embedding, skip its compute
        self._capture = _Capture()
        for layer in sorted(set(exit_layers)):
            self.blocks[layer - 1].register_forward_hook(self._make_hook(layer))

    def run_to(self, depth: int) -> _Depth:
        return _Depth(self, depth)

    @contextmanager
    def capturing(self, mask: torch.Tensor, layers: frozenset[int]) -> Iterator[dict[int, torch.Tensor]]:
        """While the model runs on a batch with ``mask``, pool ``layers`` (below full depth) into the dict yielded."""
        self._capture = _Capture(mask=mask, layers=layers)
        try:
            yield self._capture.pooled
        finally:
            self._capture = _Capture()

    def _make_hook(self, layer: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            cap = self._capture
            if layer in cap.layers and layer != self.num_layers and cap.mask is not None:
                hidden = output[0] if isinstance(output, (tuple, list)) else output
                cap.pooled[layer] = pool(hidden, cap.mask, self.pooling)

        return hook


class _Depth:
    """Context manager: run only the first ``depth`` of the kept blocks, restoring them after."""

    def __init__(self, exits: ExitModel, depth: int) -> None:
        self.exits = exits
        self.depth = depth

    def __enter__(self) -> None:
        exits = self.exits
        if self.depth < len(exits.blocks):
            set_submodule(exits.model, exits.blocks_path, nn.ModuleList(list(exits.blocks)[: self.depth]))

    def __exit__(self, *exc: object) -> None:
        exits = self.exits
        set_submodule(exits.model, exits.blocks_path, exits.blocks)


def load_model(auto_model: Any, model_dir: str, path: str, dtype: torch.dtype) -> nn.Module:
    """The model with PyTorch's fused scaled-dot-product attention (SDPA: flash / memory-efficient kernels on
    CUDA); architectures transformers has no SDPA path for fall back to its eager attention. Loads without
    transformers' "Loading weights" bar (a query or an actor would print it on every start)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _load_model(auto_model, model_dir, path, dtype)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _load_model(auto_model: Any, model_dir: str, path: str, dtype: torch.dtype) -> nn.Module:
    try:
        try:
            return auto_model.from_pretrained(model_dir, local_files_only=True, dtype=dtype, attn_implementation="sdpa")
        except ValueError as exc:
            if "sdpa" not in str(exc).lower() and "scaled_dot_product" not in str(exc).lower():
                raise
            logger.info("%s has no SDPA attention in transformers; using eager attention", path)
            return auto_model.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedModelError(path, f"transformers cannot load it: {exc}") from None


def default_batch_tokens(device: torch.device, mdir: ModelDir, dtype: torch.dtype) -> int:
    """Padded tokens per forward batch when the config sets none: fixed on CPU / MPS; on CUDA sized to
    the device's free memory (40% of it over one block's live activations per token, with headroom),
    between 8k and 256k tokens. A batch that still does not fit is split (:meth:`ForwardPass.fitting`)."""
    if device.type != "cuda":
        return DEFAULT_BATCH_TOKENS.get(device.type, 4096)
    free, _total = torch.cuda.mem_get_info(device)
    hidden = mdir.hidden_size
    inner = mdir.config.get("intermediate_size")
    inner = inner if isinstance(inner, int) and inner > 0 else 4 * hidden
    per_token = torch.empty((), dtype=dtype).element_size() * (8 * hidden + 2 * inner)
    tokens = int(0.4 * free / per_token)
    return max(8192, min(262144, tokens // 1024 * 1024))
