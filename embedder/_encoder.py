"""The elastic encoder: one forward pass, stopped at the deepest requested layer,
emitting every requested (layer, dim) granularity.

The work is split in three, as serving stacks do: CPU pre-processing
(validate, tokenize once, plan token-budget batches; ``_text``, ``_tokenizer``,
``_batching``), the forward pass with exit layers pooled by hooks as they are
produced (``_model`` cuts the model and holds the hooks, ``_forward`` runs
batches), and post-processing (cut each Matryoshka prefix, re-normalize,
write rows back in input order; ``_post``). This class wires them together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._batching import Plan, Tokenized, make_plan
from ._calibration import Calibration
from ._calibration_fit import CalibrationStats
from ._config import INT8_BATCH_TOKENS, EncoderConfig, Pooling, resolve_device, resolve_dtype, resolve_num_threads
from ._errors import EncoderConfigError, GranularityError
from ._forward import ForwardPass, packed_runner
from ._granularity import Granularity, GranularitySpec, parse_granularities, resolve_granularities
from ._int8 import Int8Graphs, int8_cache_dir
from ._loading import ModelDir, read_model_dir, torch_dtype_name, weights_fingerprint
from ._model import ExitModel, default_batch_tokens, load_model
from ._post import HostSink, PostProcess
from ._tokenizer import TextTokenizer, load_hf_tokenizer

__all__ = ["ElasticEncoder", "EncodeResult", "EncodeStats"]

logger = logging.getLogger("embedder")


@dataclass(frozen=True)
class EncodeStats:
    """What one :meth:`ElasticEncoder.encode_with_stats` call did."""

    texts: int
    real_tokens: int
    padded_tokens: int
    batches: int
    truncated_positions: tuple[int, ...]
    depth: int
    seconds_tokenize: float
    seconds_forward: float
    seconds_total: float

    @property
    def truncated(self) -> int:
        return len(self.truncated_positions)

    @property
    def padding_overhead(self) -> float:
        """Padded tokens computed beyond the real ones, as a fraction of the real ones."""
        return self.padded_tokens / self.real_tokens - 1.0 if self.real_tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds_total if self.seconds_total > 0 else float("nan")


@dataclass(frozen=True)
class EncodeResult:
    vectors: dict[Granularity, np.ndarray]
    stats: EncodeStats
    token_counts: np.ndarray  # (n,) tokens per input text after truncation, specials included


class ElasticEncoder:
    """A transformer encoder that stops at the deepest requested layer and emits
    several (layer, dim) granularities from one forward pass.

    >>> enc = ElasticEncoder.from_pretrained(path, ["l3_d64", "l6_d384"])   # doctest: +SKIP
    >>> out = enc.encode(["a passage", "another one"])                      # doctest: +SKIP
    >>> out[Granularity(3, 64)].shape                                       # doctest: +SKIP
    (2, 64)

    Blocks after the deepest requested layer are dropped when the model is
    loaded and are never run.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Any,
        model_dir: ModelDir,
        config: EncoderConfig,
        granularities: tuple[Granularity, ...],
        pooling: Pooling,
        max_length: int,
        device: torch.device,
        dtype: torch.dtype,
        calibration: Calibration | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.config = config
        self.granularities = granularities
        self.pooling = pooling
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.text_tokenizer = TextTokenizer(tokenizer, max_length=max_length, lowercase=model_dir.do_lower_case)
        self.depth = max(g.layer for g in granularities)
        self._fingerprint: str | None = None
        self._exits = ExitModel(
            model,
            num_layers=model_dir.num_layers,
            depth=self.depth,
            exit_layers=(g.layer for g in granularities),
            pooling=pooling,
        )
        self._forward = ForwardPass(
            self._exits,
            packed_runner(self._exits, model_dir, pooling, device, config.packed),
            device=device,
            batch_tokens=config.batch_tokens
            or (INT8_BATCH_TOKENS if config.backend == "int8" else default_batch_tokens(device, model_dir, dtype)),
            graphs=self._int8_graphs() if config.backend == "int8" else None,
        )
        self._post = PostProcess(
            num_layers=model_dir.num_layers,
            hidden_size=model_dir.hidden_size,
            normalize=config.normalize,
            device=device,
        )
        self.calibration: Calibration | None = None
        if calibration is not None:
            self._set_calibration(calibration)

    def _int8_graphs(self) -> Int8Graphs:
        """The int8 graphs (:mod:`embedder._int8`), the one to the deepest exit layer exported (or read from
        the cache) now, so a missing runtime or a failed export shows when the encoder is built."""
        graphs = Int8Graphs(
            self._exits,
            layers=sorted({g.layer for g in self.granularities}),
            fingerprint=self.fingerprint,
            cache_dir=int8_cache_dir(self.model_dir.root),
            threads=torch.get_num_threads(),
        )
        graphs.prepare(self.depth)
        return graphs

    def _set_calibration(self, calibration: Calibration) -> None:
        """Check the calibration fits this model and keep each exit layer's projection on the device."""
        calibration.check_compatible(
            model_fingerprint=self.fingerprint,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            pooling=self.pooling.value,
            layers=tuple(sorted({g.layer for g in self.granularities})),
            model_name=self.model_dir.name,
        )
        if calibration.info.max_length != self.max_length:
            logger.warning(
                "calibration %s was fitted with max_length %d; this encoder uses %d",
                calibration.fingerprint,
                calibration.info.max_length,
                self.max_length,
            )
        self._post.project(calibration, self.granularities)
        self.calibration = calibration

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        granularities: GranularitySpec,
        *,
        pooling: str | Pooling | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        num_threads: int | None = None,
        calibration: Calibration | str | Path | None = None,
        packed: bool | None = None,
        backend: str = "torch",
    ) -> ElasticEncoder:
        """Load a local Hugging Face or sentence-transformers model dir, offline.

        ``granularities``: ``"starbucks"``, ``"l3_d64,l6_d384"``, or a list of
        strings / (layer, dim) pairs. ``pooling=None`` reads
        ``1_Pooling/config.json`` when present, else mean. ``max_length=None``
        reads ``sentence_bert_config.json``, else the model's position limit.
        ``device``/``dtype`` ``None``: CUDA with bf16 (fp16 where bf16 is not
        supported) when available, else CPU float32. Everything is validated
        before the weights are read.

        ``packed``: run batches without padding (``None``: on CUDA for BERT-architecture models,
        RoBERTa and XLM-R included; :mod:`embedder._packed`).

        ``backend``: ``"torch"`` (default), or ``"int8"``: on CPU, the cut model exported to ONNX with int8
        linear layers and run by ONNX Runtime (:mod:`embedder._int8`; ``pip install 'embedjob[int8]'``); the
        graph is exported on first use and cached next to the model.

        ``calibration``: a :class:`Calibration` or the path of a saved one; it
        is applied inside :meth:`encode` to every granularity except full depth
        at full width (queries and documents alike).
        """
        config = EncoderConfig(
            granularities=parse_granularities(granularities),
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
            device=device,
            dtype=dtype,
            batch_tokens=batch_tokens,
            max_batch_size=max_batch_size,
            num_threads=num_threads,
            packed=packed,
            backend=backend,  # type: ignore[arg-type]  # checked by EncoderConfig
        )
        return cls.from_config(path, config, granularity_spec=granularities, calibration=calibration)

    @classmethod
    def for_calibration(cls, path: str | Path, layers: Any = None, **options: Any) -> ElasticEncoder:
        """An encoder that runs to full depth and pools ``layers`` (default: all below full depth), for fitting.

        ``options`` are those of :meth:`from_pretrained` (pooling, max_length, device, ...).
        """
        mdir = read_model_dir(path)
        wanted = range(1, mdir.num_layers) if layers is None else layers
        grans = sorted(
            {Granularity(int(k), mdir.hidden_size) for k in wanted} | {Granularity(mdir.num_layers, mdir.hidden_size)}
        )
        return cls.from_pretrained(path, grans, **options)

    @classmethod
    def from_config(
        cls,
        path: str | Path,
        config: EncoderConfig,
        *,
        granularity_spec: GranularitySpec | None = None,
        calibration: Calibration | str | Path | None = None,
    ) -> ElasticEncoder:
        """Load with a ready :class:`EncoderConfig` (what the job layer builds)."""
        from transformers import AutoModel

        if calibration is not None and not isinstance(calibration, Calibration):
            calibration = Calibration.load(calibration)

        mdir = read_model_dir(path)
        grans = resolve_granularities(
            granularity_spec if granularity_spec is not None else config.granularities,
            num_layers=mdir.num_layers,
            hidden_size=mdir.hidden_size,
            model_name=mdir.name,
        )
        pooling, max_length = mdir.resolve(config.pooling, config.max_length)
        device = resolve_device("cpu" if config.backend == "int8" else config.device)
        dtype = resolve_dtype(config.dtype, device)
        if device.type == "cpu":
            threads = resolve_num_threads(config.num_threads)
            if threads is not None:
                torch.set_num_threads(threads)
        tokenizer = load_hf_tokenizer(mdir, path)
        model = load_model(AutoModel, str(mdir.transformer_dir), str(path), dtype)
        model.eval().to(device)
        return cls(
            model=model,
            tokenizer=tokenizer,
            model_dir=mdir,
            config=config,
            granularities=grans,
            pooling=pooling,
            max_length=max_length,
            device=device,
            dtype=dtype,
            calibration=calibration,
        )

    # ------------------------------------------------------------- properties
    @property
    def num_layers(self) -> int:
        """Depth of the model as trained (not just what this encoder runs)."""
        return self.model_dir.num_layers

    @property
    def hidden_size(self) -> int:
        return self.model_dir.hidden_size

    @property
    def fingerprint(self) -> str:
        """A short hash of the weight files, to tell models apart in table metadata."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model_dir.root)
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """Everything that decides the vectors, as plain JSON-able values."""
        return {
            "model_path": str(self.model_dir.root),
            "weights_fingerprint": self.fingerprint,
            "granularities": [str(g) for g in self.granularities],
            "pooling": self.pooling.value,
            "normalize": self.config.normalize,
            "max_length": self.max_length,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "dtype": torch_dtype_name(self.dtype),
            "backend": self.config.backend,
            "calibration": self.calibration.fingerprint if self.calibration else None,
        }

    def __repr__(self) -> str:
        grans = ", ".join(str(g) for g in self.granularities)
        cal = f", calibration={self.calibration.fingerprint}" if self.calibration else ""
        cal += ", backend=int8" if self.config.backend == "int8" else ""
        return (
            f"ElasticEncoder({self.model_dir.name!r}, [{grans}], pooling={self.pooling.value}, "
            f"depth={self.depth}/{self.num_layers}, device={self.device}, dtype={torch_dtype_name(self.dtype)}{cal})"
        )

    # ---------------------------------------------------------------- encoding
    def encode(
        self, texts: Sequence[str], granularities: GranularitySpec | None = None
    ) -> dict[Granularity, np.ndarray]:
        """Embed ``texts``: one float32 (n, dim) array per granularity, rows in input order.

        ``granularities`` picks a subset of this encoder's; only the layers
        that subset needs are run. Raises :class:`InvalidTextError` naming the
        positions of None / empty / whitespace-only / non-string inputs.
        """
        return self.encode_with_stats(texts, granularities).vectors

    def encode_with_stats(self, texts: Sequence[str], granularities: GranularitySpec | None = None) -> EncodeResult:
        """Like :meth:`encode`, also returning token, padding, truncation and timing figures."""
        t0 = time.perf_counter()
        grans = self._select(granularities)
        tok = self.tokenize(texts)
        return self._encode(tok, grans, t0, time.perf_counter())

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Validate and tokenize ``texts`` as :meth:`encode` does (what :meth:`encode_tokenized` takes)."""
        return self.text_tokenizer(texts)

    def encode_tokenized(self, tok: Tokenized, granularities: GranularitySpec | None = None) -> EncodeResult:
        """Embed texts tokenized elsewhere: by :meth:`tokenize`, or by a :class:`TextTokenizer` of this model
        in another process (the pipeline tokenizes in CPU tasks so a GPU never waits for the tokenizer).

        The ids must fit this encoder's ``max_length``; ``seconds_tokenize`` in the stats is 0.
        """
        grans = self._select(granularities)
        longest = int(tok.lengths.max()) if len(tok.lengths) else 0
        if longest > self.max_length:
            raise EncoderConfigError(
                f"token ids of up to {longest} tokens were passed, but this encoder's max_length is "
                f"{self.max_length}; tokenize with TextTokenizer.from_model(path, max_length={self.max_length})"
            )
        t0 = time.perf_counter()
        return self._encode(tok, grans, t0, t0)

    def _encode(self, tok: Tokenized, grans: tuple[Granularity, ...], t0: float, t_tokenized: float) -> EncodeResult:
        plan = self._plan(tok)
        out = {g: np.empty((len(tok.lengths), g.dim), dtype=np.float32) for g in grans}
        depth = max(g.layer for g in grans)
        layers = frozenset(g.layer for g in grans)
        sink = HostSink(out, self.device)
        with torch.inference_mode(), self._exits.run_to(depth):
            for batch in plan.batches:
                for part, pooled in self._forward.fitting(batch, layers, depth):
                    sink.add(part.positions, self._post(pooled, grans))
            sink.drain()
        t2 = time.perf_counter()
        stats = EncodeStats(
            texts=len(tok.lengths),
            real_tokens=plan.real_tokens,
            padded_tokens=plan.padded_tokens,
            batches=len(plan.batches),
            truncated_positions=tuple(int(p) for p in plan.truncated_positions),
            depth=depth,
            seconds_tokenize=t_tokenized - t0,
            seconds_forward=t2 - t_tokenized,
            seconds_total=t2 - t0,
        )
        return EncodeResult(vectors=out, stats=stats, token_counts=tok.lengths)

    def pooled_states(self, texts: Sequence[str], layers: Sequence[int] | None = None) -> dict[int, np.ndarray]:
        """Each exit layer's pooled states, (n, hidden_size) float32: no calibration, no cut, no normalization.

        ``layers`` defaults to every layer this encoder's granularities exit at.
        """
        served = sorted({g.layer for g in self.granularities})
        chosen = served if layers is None else sorted({int(k) for k in layers})
        missing = [k for k in chosen if k not in served]
        if missing:
            raise GranularityError(
                f"layer(s) {', '.join(map(str, missing))} are not exit layers of this encoder; it pools {served}"
            )
        plan = self._plan(self.tokenize(texts))
        out = {k: np.empty((len(texts), self.hidden_size), dtype=np.float32) for k in chosen}
        depth = max(chosen)
        with torch.inference_mode(), self._exits.run_to(depth):
            for batch in plan.batches:
                for part, pooled in self._forward.fitting(batch, frozenset(chosen), depth):
                    for k in chosen:
                        out[k][part.positions] = pooled[k].to("cpu", torch.float32).numpy()
        return out

    def calibration_stats(self, layers: Sequence[int] | None = None) -> CalibrationStats:
        """Empty statistics for fitting maps at ``layers`` (default: this encoder's exit layers below full depth)."""
        if self.depth != self.num_layers:
            raise GranularityError(
                f"fitting a calibration needs full depth ({self.num_layers}); this encoder stops at layer {self.depth}"
            )
        served = sorted({g.layer for g in self.granularities if g.layer < self.num_layers})
        return CalibrationStats.empty(
            num_layers=self.num_layers, hidden_size=self.hidden_size, layers=served if layers is None else layers
        )

    def add_calibration_rows(
        self, stats: CalibrationStats, texts: Sequence[str], heldout: np.ndarray | Sequence[bool] | None = None
    ) -> None:
        """Embed ``texts`` and add them to ``stats``: pooled states of its layers against normalized full depth."""
        states = self.pooled_states(texts, [*stats.layers, self.num_layers])
        full = states.pop(self.num_layers)
        full /= np.clip(np.linalg.norm(full, axis=1, keepdims=True), 1e-12, None)
        stats.add(states, full, heldout)

    @property
    def packed(self) -> bool:
        """Whether batches run packed (no padding; :mod:`embedder._packed`) rather than padded."""
        return self._forward.packed is not None

    @property
    def batch_tokens(self) -> int:
        """Tokens per forward batch (padded ones included); lowered when a batch runs out of device memory."""
        return self._forward.batch_tokens

    @batch_tokens.setter
    def batch_tokens(self, value: int) -> None:
        self._forward.batch_tokens = value

    def _plan(self, tok: Tokenized) -> Plan:
        return make_plan(
            tok,
            packed=self.packed,
            batch_tokens=self.batch_tokens,
            max_batch_size=self.config.max_batch_size,
            pad_token_id=self.text_tokenizer.pad_token_id,
            padding_side=self.text_tokenizer.padding_side,
        )

    def _select(self, granularities: GranularitySpec | None) -> tuple[Granularity, ...]:
        if granularities is None:
            return self.granularities
        wanted = parse_granularities(granularities)
        missing = [str(g) for g in wanted if g not in self.granularities]
        if missing:
            raise GranularityError(
                f"granularities {', '.join(missing)} are not served by this encoder; "
                f"it serves {', '.join(str(g) for g in self.granularities)}"
            )
        return wanted
