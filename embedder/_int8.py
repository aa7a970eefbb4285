"""The int8 CPU backend (``backend="int8"``): the cut model exported to ONNX with its exit layers pooled inside
the graph, its linear layers quantized to int8, run by ONNX Runtime.

What stays elastic: the graph holds only the blocks up to the deepest layer it serves (the rest are never
exported, so never run) and returns every exit layer's pooled state, so several granularities still come
from one pass; Matryoshka cuts, calibration and normalization run after it, as on the torch path
(:mod:`embedder._post`).

The recipe (:data:`RECIPE`), chosen by measurement on all-MiniLM-L6-v2 and real text (README, "int8 on CPU"):
every MatMul with a constant weight is int8 (weights per output channel, activations per tensor with a scale
computed per batch: "dynamic" quantization), except the ones that narrow the width (the feed-forward down
projections, whose input is the activation function's output with its few large channels); those, the
embeddings, LayerNorm, softmax and attention's activation-by-activation products stay in float32. Quantizing
the down projections too was 0.2 points of mean cosine worse (0.9935 vs 0.9966 at full depth), below the
0.995 this backend promises; static (calibrated) activation scales were far worse (0.83).

The exported graph is cached (:func:`graph_path`), keyed by the weights fingerprint, the depth, the exit
layers, the pooling and the recipe; under ``$EMBEDJOB_CACHE_DIR`` when set, else next to the model when its
folder is writable, else under ``~/.cache/embedjob`` (:func:`int8_cache_dir`). A changed weight file changes
the fingerprint, so the graph is exported again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._batching import Batch
from ._config import Pooling
from ._errors import EncoderConfigError
from ._model import ExitModel
from ._pooling import pool

__all__ = ["RECIPE", "Int8Graphs", "graph_path", "int8_cache_dir", "int8_missing"]

logger = logging.getLogger("embedder")

#: names the quantization recipe in the cache key (a change of it re-exports)
RECIPE = "int8dyn1"

_OPSET = 17


def int8_missing() -> str | None:
    """Why the int8 backend cannot run here (its packages are missing), or None."""
    missing = [name for name in ("onnxruntime", "onnx") if not _importable(name)]
    if not missing:
        return None
    return (
        f"backend 'int8' needs {' and '.join(missing)}, not installed here; "
        f"pip install 'embedjob[int8]' (or use backend 'torch')"
    )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def int8_cache_dir(model_root: Path) -> Path:
    """Where the int8 graphs of the model in ``model_root`` are kept: ``$EMBEDJOB_CACHE_DIR/int8`` when set,
    else ``<model>/.embedjob/int8`` when the model's folder is writable, else ``~/.cache/embedjob/int8`` (the
    file names carry the weights fingerprint, so one folder serves many models)."""
    base = os.environ.get("EMBEDJOB_CACHE_DIR")
    if not base and os.access(model_root, os.W_OK):
        return model_root / ".embedjob" / "int8"
    return Path(base or Path.home() / ".cache" / "embedjob").expanduser() / "int8"


def graph_path(cache_dir: Path, *, fingerprint: str, depth: int, layers: Sequence[int], pooling: Pooling) -> Path:
    """The cached graph for these weights, this depth and these exit layers (the file name is the key)."""
    exits = "-".join(str(k) for k in sorted(layers))
    return cache_dir / f"{fingerprint}-depth{depth}-exits{exits}-{pooling.value}-{RECIPE}.onnx"


class _ExitGraph(nn.Module):
    """What is exported: the cut model, returning each exit layer's pooled state (B, H) float32."""

    def __init__(self, model: nn.Module, layers: Sequence[int], num_layers: int, pooling: Pooling) -> None:
        super().__init__()
        self.model = model
        self.layers = tuple(layers)
        self.num_layers = num_layers
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        states = out.hidden_states
        return tuple(
            pool(out.last_hidden_state if k == self.num_layers else states[k], attention_mask, self.pooling)
            for k in self.layers
        )


class Int8Graphs:
    """The int8 graphs of one encoder, one per depth it is asked to run to (usually one: the deepest exit
    layer), exported on first use or read from the cache; :meth:`run` takes a padded batch."""

    def __init__(
        self,
        exits: ExitModel,
        *,
        layers: Sequence[int],
        fingerprint: str,
        cache_dir: Path,
        threads: int,
    ) -> None:
        problem = int8_missing()
        if problem:
            raise EncoderConfigError(problem)
        self.exits = exits
        self.layers = tuple(sorted(set(layers)))
        self.fingerprint = fingerprint
        self.cache_dir = cache_dir
        self.threads = threads
        self._sessions: dict[int, tuple[Any, tuple[int, ...]]] = {}

    def path(self, depth: int) -> Path:
        return graph_path(
            self.cache_dir,
            fingerprint=self.fingerprint,
            depth=depth,
            layers=[k for k in self.layers if k <= depth],
            pooling=self.exits.pooling,
        )

    def prepare(self, depth: int) -> None:
        """Export (or read from the cache) the graph to ``depth`` and open it."""
        self._session(depth)

    def run(self, batch: Batch, layers: frozenset[int], depth: int) -> dict[int, torch.Tensor]:
        """Each of ``layers`` pooled, (B, H) float32, from the graph that stops at ``depth``."""
        session, served = self._session(depth)
        wanted = [k for k in served if k in layers]
        outputs = session.run(
            [f"layer{k}" for k in wanted],
            {
                "input_ids": batch.input_ids.astype(np.int64, copy=False),
                "attention_mask": batch.attention_mask.astype(np.int64, copy=False),
            },
        )
        return {k: torch.from_numpy(v) for k, v in zip(wanted, outputs, strict=True)}

    def _session(self, depth: int) -> tuple[Any, tuple[int, ...]]:
        if depth not in self._sessions:
            import onnxruntime as ort

            path = self.path(depth)
            if not path.exists():
                self._export(path, depth)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            # Threads that spin between batches take the cores from the pipeline's read and write tasks.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._sessions[depth] = (session, tuple(k for k in self.layers if k <= depth))
        return self._sessions[depth]

    def _export(self, path: Path, depth: int) -> None:
        """Export the graph to ``depth``, quantize it and move it into the cache in one rename (two processes
        exporting at once both write whole files; the last rename wins, with the same content)."""
        t0 = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        layers = [k for k in self.layers if k <= depth]
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
            fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            graph = _ExitGraph(self.exits.model, layers, self.exits.num_layers, self.exits.pooling).eval()
            ids = torch.full((2, 8), 100, dtype=torch.int64)
            mask = torch.ones((2, 8), dtype=torch.int64)
            mask[1, 5:] = 0  # a padded row: the traced graph keeps the attention mask
            with torch.inference_mode(False), torch.no_grad(), self.exits.run_to(depth), _quiet():
                torch.onnx.export(
                    graph,
                    (ids, mask),
                    str(fp32),
                    input_names=["input_ids", "attention_mask"],
                    output_names=[f"layer{k}" for k in layers],
                    dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
                    opset_version=_OPSET,
                    dynamo=False,
                )
            quantize(fp32, int8)
            os.replace(int8, path)
        logger.info("exported the int8 graph to layer %d in %.1f s: %s", depth, time.perf_counter() - t0, path)


def quantize(source: Path, target: Path) -> None:
    """:data:`RECIPE`: int8 for every MatMul with a constant weight that does not narrow the width."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source), load_external_data=False)
    kept = narrowing_matmuls(model)
    with _quiet():
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept,
            extra_options={"MatMulConstBOnly": True},
        )


def narrowing_matmuls(model: Any) -> list[str]:
    """The MatMul nodes whose constant weight maps a wider input to a narrower output (in > out): the
    feed-forward down projections, left in float32 by :data:`RECIPE`."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        shape = shapes.get(node.input[1])
        if shape is not None and len(shape) == 2 and shape[0] > shape[1]:
            out.append(node.name)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's and the quantizer's advice (TracerWarnings, "consider pre-processing") off the log."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= logging.ERROR

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)
