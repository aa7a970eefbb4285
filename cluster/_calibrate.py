"""Fitting a calibration on a sample of the corpus, through the same Ray pipeline as a run.

read -> sample (deterministic, by a hash of each row's id and the seed) ->
actors embed the sampled rows to full depth and return summed statistics ->
the driver adds them up. Only statistics reach the driver, never the sample's
texts or vectors; the caller solves them into a :class:`embedder.Calibration`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from embedder import (
    CalibrationStats,
    Chunking,
    EncoderConfig,
    Granularity,
    cached_tokenizer,
    chunk_spans,
    embeddable_text,
    heldout_mask,
    read_model_dir,
)

from ._pipeline import actor_placement, map_with_actors, start_pool
from ._plans import CorpusPlan
from ._pool import PoolPlan
from ._progress import ProgressDisplay, Stage, display_or_own, report, start_counter
from ._stages import load_encoder

__all__ = ["CalibrationPlan", "CalibrationSample", "run_calibration", "sample_fraction"]

logger = logging.getLogger("cluster")


@dataclass(frozen=True, kw_only=True)
class CalibrationPlan(CorpusPlan):
    """A calibration fit: which corpus, which model and exit layers, how big a sample."""

    layers: tuple[int, ...]
    sample: int
    heldout_fraction: float = 0.2
    seed: int = 0
    #: a chunked job's chunking: the maps are fitted on the chunks its rows will hold
    chunking: Chunking | None = None


@dataclass
class CalibrationSample:
    stats: CalibrationStats
    rows_total: int
    rows_sampled: int
    pool: PoolPlan
    seconds: float


def sample_fraction(sample: int, total: int) -> float:
    return 1.0 if total <= sample else sample / total


def _unit(seed: int, salt: str, key: object) -> float:
    digest = hashlib.blake2b(f"{seed}|{salt}|{key!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def sample_rows(
    batch: pa.Table,
    *,
    id_column: str,
    text_column: str,
    fraction: float,
    heldout_fraction: float,
    seed: int,
    chunking: tuple[str, int | None, Chunking] | None = None,
    progress: Any = None,
) -> pa.Table:
    """The rows of ``batch`` in the sample (by id hash) that hold embeddable text: ``text, heldout``;
    ``chunking`` (model dir, max_length, how): each sampled document's chunks, held out with their document
    (``progress``: the counter the rows read are reported to)."""
    report(progress, read=batch.num_rows)
    texts: list[str] = []
    ids: list[object] = []
    for id_value, value in zip(batch.column(id_column).to_pylist(), batch.column(text_column).to_pylist(), strict=True):
        if id_value is None or (fraction < 1.0 and _unit(seed, "sample", id_value) >= fraction):
            continue
        text = embeddable_text(value)
        if text is not None:
            texts.append(text)
            ids.append(id_value)
    held = heldout_mask(ids, heldout_fraction, seed) if ids else []
    if chunking is not None and texts:
        model_path, max_length, how = chunking
        spans = chunk_spans(cached_tokenizer(model_path, max_length).tokenizer, texts, how)
        held = [h for h, doc in zip(held, spans, strict=True) for _ in doc]
        texts = [t[a:b] for t, doc in zip(texts, spans, strict=True) for a, b in doc]
    return pa.table({"text": pa.array(texts, pa.string()), "heldout": pa.array(held, pa.bool_())})


class CalibrateActor:
    """Loads the model once at full depth; turns each batch of sampled rows into statistics."""

    def __init__(
        self,
        *,
        model_path: str,
        config: EncoderConfig,
        layers: Sequence[int],
        pool: PoolPlan,
        progress: Any = None,
    ) -> None:
        mdir = read_model_dir(model_path)
        grans = {Granularity(int(k), mdir.hidden_size) for k in layers}
        grans.add(Granularity(mdir.num_layers, mdir.hidden_size))
        config = dataclasses.replace(config, granularities=tuple(sorted(grans)))
        self.encoder = load_encoder(model_path, config, pool)
        self.layers = tuple(layers)
        self.progress = progress

    def __call__(self, batch: pa.Table) -> pa.Table:
        stats = self.encoder.calibration_stats(self.layers)
        if batch.num_rows:
            heldout = batch.column("heldout").to_numpy(zero_copy_only=False)
            self.encoder.add_calibration_rows(stats, batch.column("text").to_pylist(), heldout)
            report(self.progress, done=batch.num_rows, embedded=batch.num_rows)
        return pa.table({"stats": pa.array([stats.to_bytes()], pa.large_binary()), "rows": [batch.num_rows]})


def run_calibration(plan: CalibrationPlan, *, display: ProgressDisplay | None = None) -> CalibrationSample:
    """Sample the corpus and sum the actors' statistics on the connected Ray cluster. ``display``: where its
    progress shows (default: a display of its own); the total is the sample's expected size."""
    with display_or_own(display, "calibration", show=plan.pool.progress) as shown:
        return _run_calibration(plan, shown)


def _run_calibration(plan: CalibrationPlan, display: ProgressDisplay) -> CalibrationSample:
    t0 = time.perf_counter()
    pool = start_pool(plan.pool)
    ds = plan.source.read([plan.id_column, plan.text_column])
    total = plan.source.row_count()
    if total is None:
        total = ds.count()
    fraction = sample_fraction(plan.sample, total)
    # a few batches per actor: statistics are (H+1)^2 per layer, so fewer, larger batches move less
    batch_rows = int(min(2048, max(64, math.ceil(min(plan.sample, total) / (pool.actors * 2)))))
    logger.info(
        "calibration: sampling %.4g of %d rows (about %d); actor pool: %s",
        fraction,
        total,
        min(plan.sample, total),
        pool.describe(),
    )
    counter = start_counter()
    display.begin(Stage.CALIBRATING, total=min(plan.sample, total), counter=counter)
    ds = ds.map_batches(
        sample_rows,
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
        fn_kwargs={
            "id_column": plan.id_column,
            "text_column": plan.text_column,
            "fraction": fraction,
            "heldout_fraction": plan.heldout_fraction,
            "seed": plan.seed,
            "chunking": (plan.model_path, plan.encoder.max_length, plan.chunking) if plan.chunking else None,
            "progress": counter,
        },
    )
    with actor_placement(pool, plan.model_path) as placement:
        ds = map_with_actors(
            ds,
            CalibrateActor,
            pool,
            placement,
            batch_size=batch_rows,
            model_path=plan.model_path,
            config=plan.encoder,
            layers=plan.layers,
            progress=counter,
        )
        mdir = read_model_dir(plan.model_path)
        stats = CalibrationStats.empty(num_layers=mdir.num_layers, hidden_size=mdir.hidden_size, layers=plan.layers)
        sampled = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for blob, rows in zip(batch.column("stats").to_pylist(), batch.column("rows").to_pylist(), strict=True):
                stats = stats + CalibrationStats.from_bytes(blob)
                sampled += rows
    display.end_phase(total=sampled)  # the sample's real size (the total was its expected size)
    return CalibrationSample(
        stats=stats, rows_total=total, rows_sampled=sampled, pool=pool, seconds=time.perf_counter() - t0
    )
