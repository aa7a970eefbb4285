"""The forward pass: one batch through the kept blocks, packed or padded, each exit layer pooled.

A padded batch runs the Hugging Face model, its exit layers pooled by the
:class:`ExitModel`'s hooks; a packed batch runs :class:`PackedBert`. A batch
that runs out of device memory is halved until it fits, and the token budget
for the batches after it follows (:meth:`ForwardPass.fitting`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ._batching import Batch, PackedBatch
from ._config import Pooling
from ._errors import EncoderConfigError
from ._int8 import Int8Graphs
from ._loading import ModelDir
from ._model import ExitModel
from ._packed import PACKED_MODEL_TYPES, PackedBert, host_to_device
from ._pooling import pool

__all__ = ["ForwardPass", "packed_runner"]

logger = logging.getLogger("embedder")


def packed_runner(
    exits: ExitModel, model_dir: ModelDir, pooling: Pooling, device: torch.device, packed: bool | None
) -> PackedBert | None:
    """The packed runner when batches run packed: ``packed=None`` on CUDA where the model supports it,
    ``True`` always (a model that does not support it is the error), ``False`` never."""
    if not (packed if packed is not None else device.type == "cuda"):
        return None
    if PackedBert.supports(exits.model, model_dir.config, exits.blocks):
        return PackedBert(exits.model, exits.blocks, pooling)
    if packed:
        raise EncoderConfigError(
            f"packed = true needs a BERT-architecture model (model_type one of "
            f"{', '.join(map(repr, PACKED_MODEL_TYPES))}); "
            f"{model_dir.name} is {model_dir.config.get('model_type')!r}; leave packed unset to pad"
        )
    return None


class ForwardPass:
    """Runs batches on ``device``: packed through ``packed`` when given, padded through the int8 ``graphs``
    when given (:mod:`embedder._int8`), else padded through ``exits``.

    ``batch_tokens`` is the token budget batches are planned with; :meth:`fitting` lowers it when a
    batch runs out of device memory.
    """

    def __init__(
        self,
        exits: ExitModel,
        packed: PackedBert | None,
        *,
        device: torch.device,
        batch_tokens: int,
        graphs: Int8Graphs | None = None,
    ) -> None:
        self.exits = exits
        self.packed = packed
        self.graphs = graphs
        self.device = device
        self.batch_tokens = batch_tokens

    def run(self, batch: Batch | PackedBatch, layers: frozenset[int], depth: int) -> dict[int, torch.Tensor]:
        """Run the blocks up to ``depth`` on one batch; return each exit layer pooled, (B, H) float32."""
        if isinstance(batch, PackedBatch):
            assert self.packed is not None
            return self.packed.forward(batch, layers, depth, self.device)
        if self.graphs is not None:
            return self.graphs.run(batch, layers, depth)
        exits = self.exits
        ids = _to_device(batch.input_ids, self.device)
        mask = _to_device(batch.attention_mask, self.device)
        with exits.capturing(mask, layers) as pooled:
            output = exits.model(input_ids=ids, attention_mask=mask)
            if depth == exits.num_layers and depth in layers:
                # The model's own last state (hidden_states[L] in HF terms, final norm included).
                pooled[depth] = pool(output.last_hidden_state, mask, exits.pooling)
        return pooled

    def fitting(
        self, batch: Batch | PackedBatch, layers: frozenset[int], depth: int
    ) -> list[tuple[Batch | PackedBatch, dict[int, torch.Tensor]]]:
        """:meth:`run`, halving a batch that runs out of device memory (and the token budget for the
        batches after it) until it fits; a single text that does not fit is the error."""
        try:
            return [(batch, self.run(batch, layers, depth))]
        except torch.cuda.OutOfMemoryError:
            rows = len(batch.positions)
            width = batch.longest if isinstance(batch, PackedBatch) else batch.input_ids.shape[1]
            if rows == 1:
                raise
            torch.cuda.empty_cache()
            budget = max(width, batch.padded_tokens // 2)
            if budget < self.batch_tokens:
                logger.warning(
                    "out of device memory on a batch of %d texts x %d tokens; splitting it and lowering "
                    "batch_tokens from %d to %d",
                    rows,
                    width,
                    self.batch_tokens,
                    budget,
                )
                self.batch_tokens = budget
            half = rows // 2
            return self.fitting(batch.rows(0, half), layers, depth) + self.fitting(
                batch.rows(half, rows), layers, depth
            )


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return host_to_device(torch.from_numpy(array), device)
