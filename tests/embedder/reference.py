"""An independent reference for the encoder, written with plain transformers.

Runs the *full* model with ``output_hidden_states=True``, pools
``hidden_states[layer]`` under the attention mask, cuts the prefix and
normalizes. One text at a time, so no padding is involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


def reference_vectors(
    model_dir: Path,
    texts: list[str],
    pairs: list[tuple[int, int]],
    *,
    pooling: str = "mean",
    max_length: int = 128,
    normalize: bool = True,
) -> dict[tuple[int, int], np.ndarray]:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32).eval()
    out: dict[tuple[int, int], list[np.ndarray]] = {p: [] for p in pairs}
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            hidden_states = model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True
            ).hidden_states
            for layer, dim in pairs:
                tokens = hidden_states[layer][0]  # (T, H); one text, no padding
                if pooling == "mean":
                    vec = tokens.mean(dim=0)
                elif pooling == "cls":
                    vec = tokens[0]
                elif pooling == "max":
                    vec = tokens.max(dim=0).values
                elif pooling == "lasttoken":
                    vec = tokens[-1]
                else:
                    raise ValueError(pooling)
                vec = vec[:dim].double().numpy()
                if normalize:
                    vec = vec / np.linalg.norm(vec)
                out[(layer, dim)].append(vec)
    return {p: np.stack(v) for p, v in out.items()}


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)
