"""Packed (unpadded) forward for BERT encoders: every text of a batch in one ``(tokens, hidden)`` tensor.

A padded batch computes ``rows x longest`` tokens; on short passages of mixed
length a quarter of that is padding, and small padded batches leave a GPU
waiting on kernel launches. Packed, the linear layers, norms and activations
run on real tokens only, as one large matrix product per weight, and attention
runs per text over a jagged (nested) tensor with PyTorch's fused SDPA kernels.
The same weights and modules run (Hugging Face's own ``BertEmbeddings``,
``BertSelfOutput``, ``BertIntermediate``, ``BertOutput``); only the attention
core is called directly, so the vectors match the padded path up to rounding.

Used on CUDA for models with BERT's blocks: ``model_type`` "bert" (BERT,
MiniLM, BGE, E5 and GTE's BERT-based checkpoints, ...), "roberta" and
"xlm-roberta" (multilingual E5, BGE-M3, ...), whose position ids start after
the padding index (``pad_token_id + 1``). Other architectures keep the padded
path.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._batching import PackedBatch
from ._config import Pooling

__all__ = ["PACKED_MODEL_TYPES", "PackedBert", "host_to_device"]

#: model types the packed path runs -> whether position ids start after the padding index (RoBERTa's
#: ``create_position_ids_from_input_ids``) instead of at 0
PACKED_MODEL_TYPES = {"bert": False, "roberta": True, "xlm-roberta": True}


class PackedBert:
    """Runs a Hugging Face ``BertModel``'s (or ``RobertaModel``'s) embeddings and blocks on packed tokens."""

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], pooling: Pooling) -> None:
        self.model = model
        self.blocks = blocks
        self.pooling = pooling
        cfg = model.config
        self.heads = int(cfg.num_attention_heads)
        self.head_dim = int(cfg.hidden_size) // self.heads
        after_padding = PACKED_MODEL_TYPES.get(getattr(cfg, "model_type", "bert"), False)
        self.first_position = int(cfg.pad_token_id) + 1 if after_padding else 0

    @staticmethod
    def supports(model: nn.Module, config: dict[str, Any], blocks: Sequence[nn.Module]) -> bool:
        """BERT's blocks (``PACKED_MODEL_TYPES``) with absolute positions, no cross-attention, and the module
        layout this runner calls."""
        if config.get("model_type") not in PACKED_MODEL_TYPES:
            return False
        if config.get("position_embedding_type", "absolute") != "absolute":
            return False
        if config.get("is_decoder") or config.get("add_cross_attention"):
            return False
        if not hasattr(getattr(model, "embeddings", None), "word_embeddings"):
            return False
        for block in blocks:
            attention = getattr(block, "attention", None)
            self_attn = getattr(attention, "self", None)
            if not all(hasattr(self_attn, name) for name in ("query", "key", "value")):
                return False
            if not (hasattr(attention, "output") and hasattr(block, "intermediate") and hasattr(block, "output")):
                return False
        return True

    def forward(
        self, batch: PackedBatch, layers: frozenset[int], depth: int, device: torch.device
    ) -> dict[int, torch.Tensor]:
        """Each exit layer in ``layers`` pooled per text, (B, H) float32, running blocks 1..``depth``."""
        lengths = torch.from_numpy(batch.lengths)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        ids = host_to_device(torch.from_numpy(batch.ids), device)
        lengths, offsets = host_to_device(lengths, device), host_to_device(offsets, device)
        n = ids.shape[0]
        text_of = torch.repeat_interleave(torch.arange(len(batch.lengths), device=device), lengths, output_size=n)
        position = torch.arange(n, device=device) - offsets[:-1][text_of] + self.first_position
        hidden = self.model.embeddings(
            input_ids=ids[None], position_ids=position[None], token_type_ids=torch.zeros_like(ids)[None]
        )[0]
        pooled: dict[int, torch.Tensor] = {}
        for k, block in enumerate(list(self.blocks)[:depth], start=1):
            hidden = self._block(block, hidden, offsets, batch.shortest, batch.longest)
            if k in layers:
                pooled[k] = _segment_pool(hidden, text_of, offsets, lengths, self.pooling)
        return pooled

    def _block(
        self, block: nn.Module, hidden: torch.Tensor, offsets: torch.Tensor, shortest: int, longest: int
    ) -> torch.Tensor:
        n = hidden.shape[0]
        attn = block.attention
        q, k, v = (
            getattr(attn.self, name)(hidden).view(n, self.heads, self.head_dim) for name in ("query", "key", "value")
        )
        context = _jagged_attention(q, k, v, offsets, shortest, longest).reshape(n, self.heads * self.head_dim)
        hidden = attn.output(context, hidden)  # dense, dropout, LayerNorm(. + hidden)
        return block.output(block.intermediate(hidden), hidden)


def _jagged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, shortest: int, longest: int
) -> torch.Tensor:
    """Bidirectional attention within each text: (N, heads, d) in, (N, heads, d) out. The shortest and
    longest lengths come from the host: left for the nested tensor to find, each is a device sync."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype" (the jagged layout is the supported one)

        def nested(x: torch.Tensor) -> torch.Tensor:
            return torch.nested.nested_tensor_from_jagged(
                x, offsets, min_seqlen=shortest, max_seqlen=longest
            ).transpose(1, 2)

        out = F.scaled_dot_product_attention(nested(q), nested(k), nested(v))
        return out.transpose(1, 2).values()


def _segment_pool(
    hidden: torch.Tensor, text_of: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, mode: Pooling
) -> torch.Tensor:
    """Pool packed token states (N, H) into one float32 vector per text (B, H), as ``pool`` does padded."""
    hidden = hidden.float()
    rows = lengths.shape[0]
    if mode is Pooling.MEAN:
        sums = torch.zeros(rows, hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
        sums.index_add_(0, text_of, hidden)
        return sums / lengths.clamp(min=1).unsqueeze(1).to(hidden.dtype)
    if mode is Pooling.CLS:
        return hidden[offsets[:-1]]
    if mode is Pooling.LAST_TOKEN:
        return hidden[offsets[1:] - 1]
    if mode is Pooling.MAX:
        out = torch.full((rows, hidden.shape[1]), -1e9, dtype=hidden.dtype, device=hidden.device)
        index = text_of.unsqueeze(1).expand_as(hidden)
        return out.scatter_reduce(0, index, hidden, reduce="amax", include_self=True)
    raise ValueError(f"unknown pooling {mode!r}")  # unreachable: Pooling is closed


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: on CUDA through pinned memory, without waiting for the copy."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
