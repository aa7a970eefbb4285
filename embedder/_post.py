"""Post-processing: pooled exit layers in, the requested granularities out, in input order on the host.

On the device: apply the calibration's projection of each exit layer, cut each
Matryoshka prefix, re-normalize after cutting (:class:`PostProcess`). Then the
host copies, asynchronous on CUDA, written back in input order (:class:`HostSink`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._calibration import Calibration
from ._granularity import Granularity

__all__ = ["HostSink", "PostProcess"]


class PostProcess:
    """Turns each batch's pooled exit layers into its granularities' vectors, float32 on the device.

    ``num_layers`` x ``hidden_size`` is the model as trained; ``normalize`` re-normalizes after cutting.
    """

    def __init__(self, *, num_layers: int, hidden_size: int, normalize: bool, device: torch.device) -> None:
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.normalize = normalize
        self.device = device
        self._projections: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def calibrated(self, g: Granularity) -> bool:
        """Full depth at full width stays exactly the model's vector; everything else goes through the calibration."""
        return not (g.layer == self.num_layers and g.dim == self.hidden_size)

    def project(self, calibration: Calibration, granularities: tuple[Granularity, ...]) -> None:
        """Keep each exit layer's projection on the device, as wide as the widest of ``granularities`` needs."""
        h = self.hidden_size
        widest: dict[int, int] = {}
        for g in granularities:
            if self.calibrated(g):
                widest[g.layer] = max(widest.get(g.layer, 0), g.dim)
        for layer, dim in widest.items():
            if layer == self.num_layers:
                weight, bias = calibration.rotation[:, :dim], None
            else:
                w = calibration.maps[layer]
                weight, bias = w[:h, :dim], torch.from_numpy(w[h, :dim].copy()).to(self.device)
            self._projections[layer] = (torch.from_numpy(weight.copy()).to(self.device), bias)

    def __call__(
        self, pooled: dict[int, torch.Tensor], grans: tuple[Granularity, ...]
    ) -> dict[Granularity, torch.Tensor]:
        """Apply the calibration, cut each prefix, re-normalize after cutting; float32, still on the device."""
        projected: dict[int, torch.Tensor] = {}
        for layer, (weight, bias) in self._projections.items():
            if layer in pooled:
                projected[layer] = pooled[layer] @ weight if bias is None else torch.addmm(bias, pooled[layer], weight)
        result = {}
        for g in grans:
            source = projected[g.layer] if g.layer in projected and self.calibrated(g) else pooled[g.layer]
            vec = source[:, : g.dim]
            if self.normalize:
                vec = F.normalize(vec, p=2.0, dim=-1)
            result[g] = vec.float()
        return result


class HostSink:
    """Moves each batch's vectors to the host and writes them back in input order.

    On CUDA the copies are asynchronous (into pinned memory, one event per batch), so the CPU goes on
    queueing the next batches while the GPU works and the GPU never waits for a host copy; rows land in
    ``out`` once their batch's event has fired. Elsewhere rows are written at once.
    """

    MAX_IN_FLIGHT = 8  # batches whose copies may be pending (bounds the pinned host memory held)

    def __init__(self, out: dict[Granularity, np.ndarray], device: torch.device) -> None:
        self.out = out
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[np.ndarray, dict[Granularity, torch.Tensor], Any]] = []

    def add(self, positions: np.ndarray, vectors: dict[Granularity, torch.Tensor]) -> None:
        if not self.cuda:
            self._write(positions, vectors)
            return
        copies = {g: v.to("cpu", non_blocking=True) for g, v in vectors.items()}
        event = torch.cuda.Event()
        event.record()
        self.pending.append((positions, copies, event))
        while self.pending and (len(self.pending) > self.MAX_IN_FLIGHT or self.pending[0][2].query()):
            self._pop()

    def drain(self) -> None:
        while self.pending:
            self._pop()

    def _pop(self) -> None:
        positions, copies, event = self.pending.pop(0)
        event.synchronize()
        self._write(positions, copies)

    def _write(self, positions: np.ndarray, vectors: dict[Granularity, torch.Tensor]) -> None:
        for g, v in vectors.items():
            self.out[g][positions] = v.numpy()
