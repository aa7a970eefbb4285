"""Backfill: embed a table's stored text for granularities it doesn't have yet, one fragment per task.

Each actor loads the model once (run only to the new granularities' deepest
layer), reads a fragment's ``text`` at the version the run planned against,
and writes the new vector columns as a new data file of that fragment. The
driver gets fragment metadata back, never vectors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from storage import (
    RunStaging,
    StagedPart,
    backfill_fragment,
    count_rows,
    fragment_ids,
    rows_per_node,
    vector_array,
    vector_column,
)

from ._pipeline import actor_placement, start_pool
from ._plans import EncoderPlan
from ._pool import PoolPlan
from ._progress import ProgressDisplay, Stage, display_or_own, record_embedded, report, start_counter
from ._stages import load_encoder, node_id

__all__ = ["BackfillPlan", "BackfillResult", "run_backfill"]

logger = logging.getLogger("cluster")


@dataclass(frozen=True, kw_only=True)
class BackfillPlan(EncoderPlan):
    """New vector columns for a table's fragments (``encoder``: the new granularities only)."""

    run_id: str
    table_uri: str
    read_version: int
    vector_dtype: str
    #: a resumed backfill: fragments whose new columns its staging folder already holds are not embedded again
    resume: bool = False


@dataclass
class BackfillResult:
    """Every fragment's new columns, as staged parts (an earlier attempt's too): what the commit adds."""

    parts: list[StagedPart]
    seconds: float
    pool: str
    #: a backfill rejects nothing (every row of the table is embedded again)
    reject_fragments: list[str] = field(default_factory=list)
    #: parts an earlier attempt staged
    resumed_keys: frozenset[str] = frozenset()

    @property
    def fragments(self) -> list[str]:
        return [f for p in self.parts for f in p.fragments]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def resumed(self) -> int:
        """Rows an earlier attempt staged."""
        return sum(p.rows for p in self.parts if p.key in self.resumed_keys)

    @property
    def rows_per_node(self) -> dict[str, int]:
        """Ray node id -> rows embedded there (the actor's node), most first."""
        return rows_per_node(self.parts)


def _part_key(fragment_id: int) -> str:
    return f"fragment-{fragment_id:09d}"


class BackfillActor:
    """Loads the model once; embeds fragments' text, reporting each batch to the progress counter and as Ray
    metrics."""

    def __init__(self, plan: BackfillPlan, pool: PoolPlan, progress: Any = None) -> None:
        self.encoder = load_encoder(
            plan.model_path,
            plan.encoder,
            pool,
            calibration_uri=plan.calibration_uri,
            storage_options=plan.storage_options,
        )
        self.plan = plan
        self.rows = 0
        self.node_id = node_id()
        self.progress = progress
        # the new columns' schema, given to Lance so it does not call the model on a sample row to learn it
        self.schema = self._compute(pa.RecordBatch.from_arrays([pa.array([], pa.string())], names=["text"])).schema

    def _compute(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        texts = batch.column("text").to_pylist()
        n = len(texts)
        vectors, tokens = {}, 0
        if n:
            result = self.encoder.encode_with_stats([t or "" for t in texts])
            vectors, tokens = result.vectors, int(result.token_counts.sum())
        arrays, names = [], []
        for g in self.encoder.granularities:
            vecs = vectors[g] if n else np.zeros((0, g.dim), dtype=np.float32)
            arrays.append(vector_array(vecs, self.plan.vector_dtype))
            names.append(vector_column(str(g)))
        self.rows += n
        if n:
            record_embedded(self.plan.run_id, self.node_id, rows=n, tokens=tokens)
            report(self.progress, read=n, done=n, embedded=n, tokens=tokens)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def fragment(self, fragment_id: int) -> tuple[str, int, str]:
        before = self.rows
        meta = backfill_fragment(
            self.plan.table_uri,
            self.plan.read_version,
            fragment_id,
            self._compute,
            output_schema=self.schema,
            storage_options=self.plan.storage_options,
        )
        return meta, self.rows - before, self.node_id


def run_backfill(plan: BackfillPlan, *, display: ProgressDisplay | None = None) -> BackfillResult:
    """Compute the new columns of every fragment on the connected Ray cluster, staging each fragment's as a
    part of the run (a resumed run skips the fragments already staged); commit nothing. ``display``: where
    its progress shows (default: a display of its own)."""
    with display_or_own(display, f"run {plan.run_id}", show=plan.pool.progress) as shown:
        return _run_backfill(plan, shown)


def _run_backfill(plan: BackfillPlan, display: ProgressDisplay) -> BackfillResult:
    import ray
    from ray.util import ActorPool

    t0 = time.perf_counter()
    pool = start_pool(plan.pool)
    staging = RunStaging(plan.table_uri, plan.run_id, plan.storage_options)
    kept = staging.parts() if plan.resume else []
    staged = {p.key for p in kept}
    frags = [
        f for f in fragment_ids(plan.table_uri, plan.read_version, plan.storage_options) if _part_key(f) not in staged
    ]
    counter = start_counter()
    display.begin(
        Stage.ENCODING, total=count_rows(plan.table_uri, plan.read_version, plan.storage_options), counter=counter
    )
    if staged:
        logger.info("backfill: %d fragment(s) staged by an earlier attempt are kept", len(staged))
        display.add(done=sum(p.rows for p in kept))
    if frags:
        n_actors = max(1, min(pool.actors, len(frags)))
        with actor_placement(pool, plan.model_path) as placement:
            cls = ray.remote(max_restarts=2, max_task_retries=2, **placement)(BackfillActor)
            actors = [cls.remote(plan, pool, counter) for _ in range(n_actors)]
            try:
                done = ActorPool(actors).map(lambda a, fid: a.fragment.remote(fid), frags)
                rows = 0
                for k, (fid, (meta, n, node)) in enumerate(zip(frags, done, strict=True), start=1):
                    staging.add_part(StagedPart(key=_part_key(fid), fragments=[meta], ids=[], rows=n, nodes={node: n}))
                    rows += n
                    logger.debug("backfill: fragment %d/%d done (%d rows so far)", k, len(frags), rows)
            finally:
                for a in actors:
                    ray.kill(a)
    display.end_phase()
    return BackfillResult(staging.parts(), time.perf_counter() - t0, pool.describe(), resumed_keys=frozenset(staged))
