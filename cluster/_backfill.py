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

import numpy as np
import pyarrow as pa

from embedder import EncoderConfig
from storage import backfill_fragment, fragment_ids, vector_array, vector_column

from ._pipeline import actor_placement, start_pool
from ._pool import PoolPlan
from ._stages import _node_id, load_encoder

__all__ = ["BackfillPlan", "BackfillResult", "run_backfill"]

logger = logging.getLogger("cluster")


@dataclass(frozen=True, kw_only=True)
class BackfillPlan:
    table_uri: str
    read_version: int
    model_path: str
    encoder: EncoderConfig  # the new granularities only
    vector_dtype: str
    storage_options: dict[str, str] | None = field(default=None, repr=False)
    calibration_uri: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    progress: bool = True


@dataclass
class BackfillResult:
    fragments: list[str]
    rows: int
    seconds: float
    pool: str
    #: Ray node id -> rows embedded there (the actor's node)
    rows_per_node: dict[str, int] = field(default_factory=dict)


class BackfillActor:
    def __init__(self, plan: BackfillPlan, pool: PoolPlan) -> None:
        self.encoder = load_encoder(
            plan.model_path,
            plan.encoder,
            pool,
            calibration_uri=plan.calibration_uri,
            storage_options=plan.storage_options,
        )
        self.plan = plan
        self.rows = 0
        self.node_id = _node_id()
        # the new columns' schema, given to Lance so it does not call the model on a sample row to learn it
        self.schema = self._compute(pa.RecordBatch.from_arrays([pa.array([], pa.string())], names=["text"])).schema

    def _compute(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        texts = batch.column("text").to_pylist()
        n = len(texts)
        vectors = self.encoder.encode([t or "" for t in texts]) if n else {}
        arrays, names = [], []
        for g in self.encoder.granularities:
            vecs = vectors[g] if n else np.zeros((0, g.dim), dtype=np.float32)
            arrays.append(vector_array(vecs, self.plan.vector_dtype))
            names.append(vector_column(str(g)))
        self.rows += n
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


def run_backfill(plan: BackfillPlan) -> BackfillResult:
    """Compute the new columns of every fragment on the connected Ray cluster; commit nothing."""
    import ray
    from ray.util import ActorPool

    t0 = time.perf_counter()
    pool = start_pool(plan)
    frags = fragment_ids(plan.table_uri, plan.read_version, plan.storage_options)
    n_actors = max(1, min(pool.actors, len(frags)))
    out: list[str] = []
    rows = 0
    per_node: dict[str, int] = {}
    with actor_placement(pool, plan.model_path) as placement:
        cls = ray.remote(max_restarts=2, max_task_retries=2, **placement)(BackfillActor)
        actors = [cls.remote(plan, pool) for _ in range(n_actors)]
        try:
            done = ActorPool(actors).map(lambda a, fid: a.fragment.remote(fid), frags)
            for k, (meta, n, node) in enumerate(done, start=1):
                out.append(meta)
                rows += n
                per_node[node] = per_node.get(node, 0) + n
                logger.info("backfill: fragment %d/%d done (%d rows so far)", k, len(frags), rows)
        finally:
            for a in actors:
                ray.kill(a)
    return BackfillResult(out, rows, time.perf_counter() - t0, pool.describe(), rows_per_node=per_node)
