"""What the GPU figures need: a BERT-base-sized model, forward FLOPs, the device's peak, GPU busy.

* ``bert_base_like``: BERT-base's shape (12 layers, hidden 768, 12 heads, FFN 3072) with random
  weights and all-MiniLM-L6-v2's tokenizer (the same 30,522-token uncased WordPiece vocabulary). No
  hub is reachable here, and throughput does not depend on the weights' values.
* ``forward_flops``: 2 x (non-embedding parameters of the blocks run) per token, plus attention's
  4 x layers x hidden x n^2 per text of n tokens (QK^T and AV). Counted on real tokens only: padding
  is work the device does but not useful work, so MFU here is a lower bound.
* ``peak_tflops``: the datasheet dense (no sparsity) bf16/fp16 peak of known devices.
* ``GpuBusy``: samples NVML's utilisation (the share of time a kernel was running, as nvidia-smi
  shows it) in a thread while a block runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["GpuBusy", "bert_base_like", "forward_flops", "peak_tflops"]

#: dense bf16 / fp16 tensor-core peak, TFLOP/s (NVIDIA datasheets, without sparsity)
_PEAKS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5 (HBM3)
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of ``device_name`` (as torch names it), or None when it is not known."""
    for key, peak in _PEAKS:
        if key in device_name:
            return peak
    return None


def bert_base_like(folder: Path, tokenizer_from: str, *, seed: int = 0) -> Path:
    """Write a randomly initialised BERT-base-sized model (Hugging Face layout) into ``folder``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = folder / "bert-base-random"
    if (path / "config.json").exists():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True)
    torch.manual_seed(seed)
    model = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
        )
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def forward_flops(encoder: Any, lengths: Sequence[int], depth: int | None = None) -> float:
    """Useful forward FLOPs of ``encoder`` running to ``depth`` (default: its deepest layer) on texts of
    ``lengths`` real tokens."""
    depth = depth or encoder.depth
    params = sum(p.numel() for block in list(encoder._exits.blocks)[:depth] for p in block.parameters())
    tokens = float(sum(lengths))
    squares = float(sum(int(n) * int(n) for n in lengths))
    return 2.0 * params * tokens + 4.0 * depth * encoder.hidden_size * squares


class GpuBusy:
    """``with GpuBusy() as busy: ...`` then ``busy.fraction``: mean NVML utilisation over the block."""

    def __init__(self, index: int = 0, interval_s: float = 0.02) -> None:
        self.index = index
        self.interval_s = interval_s
        self.samples: list[int] = []
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuBusy:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)

        def sample() -> None:
            while not self._stop.is_set():
                self.times.append(time.perf_counter())
                self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                time.sleep(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import pynvml

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        pynvml.nvmlShutdown()

    @property
    def fraction(self) -> float:
        return sum(self.samples) / (100.0 * len(self.samples)) if self.samples else float("nan")

    def span(self) -> dict[str, float]:
        """Busy over the whole block, and over its busy span (first to last sample with a kernel running:
        what a job's start-up and model load leave out)."""
        busy = [i for i, u in enumerate(self.samples) if u > 0]
        if not busy:
            return {"busy_run": 0.0, "busy_span": 0.0, "span_seconds": 0.0}
        part = self.samples[busy[0] : busy[-1] + 1]
        return {
            "busy_run": self.fraction,
            "busy_span": sum(part) / (100.0 * len(part)),
            "span_seconds": self.times[busy[-1]] - self.times[busy[0]],
        }
