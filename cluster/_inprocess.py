"""A run embedded in this process: the pipeline's own stages, run one after the other, without Ray.

Starting Ray, its actor pool and the model in the actors costs a run seconds before its first row; a night with
few rows to embed spends most of its time there (bench/incremental.py measures where the pool starts to pay). And
where an embedded Ray would run the whole pool as one CPU actor (:func:`one_encoder_here`: a machine of up to
``MAX_THREADS_PER_CPU_ACTOR`` CPUs and no GPU), that actor is the encoder this process runs anyway, on the same
cores: the pool adds its start-up and nothing else, at any size (bench/pipeline.py measures both).
:func:`run_in_process` runs such a night here: the input read with the source's own reader, each batch through
``prepare`` (the row rule, the content hash, the id registry: an :class:`IdRegistry` object instead of an actor),
one ``EncodeActor`` (an object, loaded only when a row is to be embedded), and the staging sink's
:class:`RunStager`; it returns the pipeline's :class:`PipelineResult`, so the commit, the guards, the summary
and a resume are the same. Nothing here imports Ray.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterator

import pyarrow as pa

from ._pipeline import EmbedPlan, PipelineResult, resolve_tokenize
from ._pool import PoolPlan, PoolRequest, plan_pool
from ._progress import ProgressCounter, ProgressDisplay, Stage, display_or_own
from ._registry import IdRegistry
from ._stager import RunStager, StagedWrite
from ._stages import EncodeActor, prepare
from ._timing import log_in_process_timings, timed

__all__ = ["describe_process", "one_encoder_here", "process_pool", "run_in_process"]

logger = logging.getLogger("cluster")

#: input rows read per batch when the job sets no ``rows_per_block``
_BATCH_ROWS = 8192


def process_pool(request: PoolRequest) -> PoolPlan:
    """This process as a pool of one encoder: the job's pool request planned on this machine's CPUs (and CUDA
    GPUs, unless ``gpus_per_actor = 0``), one actor."""
    import torch

    gpus = torch.cuda.device_count() if request.gpus_per_actor != 0 else 0
    return plan_pool(
        {"CPU": float(local_cpus()), "GPU": float(gpus)},
        actors=1,
        gpus_per_actor=request.gpus_per_actor,
        cpus_per_actor=request.cpus_per_actor,
    )


def one_encoder_here(request: PoolRequest) -> str | None:
    """Whether an embedded Ray on this machine would plan the job's pool (``request``) as one CPU actor with every
    CPU as its threads, the encoder :func:`process_pool` gives this process: its description in words, or None (a
    GPU here, more than one actor, or CPUs left to the pool's tasks). Asked without torch or Ray. Raises
    :class:`ClusterError` where this machine cannot meet the request (more CPU actors than CPUs, GPU actors and
    no GPU), as the pool's planning would."""
    gpu = _nvidia_gpu_here()
    if request.gpus_per_actor != 0 and gpu:
        return None  # GPU actors (tokenizing in CPU tasks beside them) are not this process's one encoder
    cpus = local_cpus()
    pool = plan_pool(
        {"CPU": float(cpus), "GPU": float(gpu)},
        actors=request.actors,
        gpus_per_actor=request.gpus_per_actor,
        cpus_per_actor=request.cpus_per_actor,
    )
    if pool.actors != 1 or pool.uses_gpu or pool.torch_threads < cpus:
        return None  # (CPUs beyond the actor's threads would run the pool's read and write tasks beside it)
    return f"an embedded Ray here would run 1 CPU actor x {pool.torch_threads} torch threads on {cpus} CPUs"


def local_cpus() -> int:
    """The CPUs this process may run on: the encoder's own count (``embedder._config.usable_cpus``)."""
    from embedder._config import usable_cpus

    return usable_cpus()


def _nvidia_gpu_here() -> bool:
    """Whether CUDA would see an NVIDIA GPU here, asked without importing torch: the driver's device nodes,
    unless CUDA_VISIBLE_DEVICES hides every device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def describe_process(pool: PoolPlan) -> str:
    """What :func:`process_pool` gives, in words."""
    return "1 encoder on the GPU" if pool.uses_gpu else f"1 encoder x {pool.torch_threads} torch threads"


def run_in_process(
    plan: EmbedPlan, *, delete_missing: bool = True, display: ProgressDisplay | None = None
) -> PipelineResult:
    """Run read -> prepare -> encode -> stage in this process, as :func:`run_pipeline` does on Ray; commit
    nothing. One encoder, no parallel reads: for few rows to embed, or a machine whose pool is one encoder."""
    with display_or_own(display, f"run {plan.run_id}", show=plan.pool.progress) as shown:
        return _run(plan, delete_missing, shown)


def _run(plan: EmbedPlan, delete_missing: bool, display: ProgressDisplay) -> PipelineResult:
    t0 = time.perf_counter()
    pool = process_pool(plan.pool)
    tokenize = resolve_tokenize(plan.tokenize, pool)
    logger.info("in this process: %s; tokenizing in the %s", describe_process(pool), tokenize)
    registry = IdRegistry(**plan.registry_args())
    counter = ProgressCounter()
    display.begin(Stage.ENCODING, total=plan.source.row_count(), counter=counter)
    stager = RunStager(**plan.stager_args())
    writes: list[StagedWrite] = []
    pending: list[pa.Table] = []
    encoder: EncodeActor | None = None
    with timed("in this process (read, prepare, encode, stage)"):
        for rows in _prepared(plan, registry, counter, tokenize):
            encoder = encoder or EncodeActor(pool=pool, **plan.encoder_args(counter))
            pending.append(encoder(rows))
            if sum(t.num_rows for t in pending) >= plan.rows_per_part:  # a part as large as the pipeline's
                writes += stager.write(pending)
                pending = []
        writes += stager.write(pending)
        display.end_phase()
        stager.finish(writes)
    log_in_process_timings(counter.notes())
    deletions = registry.deletions(delete_missing)
    return PipelineResult.staged(
        stager, pool=pool, t0=t0, counts=registry.counts(), deletions=deletions, tokenize=tokenize
    )


def _prepared(plan: EmbedPlan, registry: IdRegistry, counter: ProgressCounter, tokenize: str) -> Iterator[pa.Table]:
    """The input's batches through ``prepare``, those with rows left to encode (or to reject)."""
    columns = list(dict.fromkeys([plan.id_column, plan.text_column, *plan.passthrough]))
    kwargs = plan.prepare_args(registry, counter, tokenize)
    size = plan.rows_per_block or _BATCH_ROWS
    for block in _blocks(plan.source.batches(columns, batch_size=size), size):
        rows = prepare(block, **kwargs)
        if rows.num_rows:
            yield rows


def _blocks(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """The input's batches joined into blocks of at least ``size`` rows (the last may hold fewer): a parquet file
    is read a row group at a time, and one encode call over more rows pads less (it sorts its rows by length;
    2,048 + 952 rows cost 3% more than 3,000 at once, bench/RESULTS.md)."""
    pending: list[pa.Table] = []
    rows = 0
    for batch in batches:
        pending.append(pa.Table.from_batches([batch]))
        rows += batch.num_rows
        if rows >= size:
            yield pa.concat_tables(pending, promote_options="permissive")
            pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending, promote_options="permissive")
