"""The Ray Data pipeline: read -> prepare -> encode (actor pool) -> write fragments.

The driver only sees small per-batch records (fragment JSON and counts); the
corpus streams through the cluster and is never collected here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from embedder import Chunking, weight_files
from storage import StagedPart, rows_per_node
from storage.vocab import TOKENIZE_CHOICES, replaces_table

from ._plans import CorpusPlan, NextEncoder
from ._pool import PoolPlan, PoolRequest, plan_pool
from ._progress import ProgressDisplay, Stage, display_or_own, start_counter, verbose_output
from ._registry import IdRegistry
from ._stages import EncodeActor, prepare
from ._timing import log_actor_timings, log_timing

__all__ = ["EmbedPlan", "PipelineResult", "actor_placement", "map_with_actors", "run_pipeline", "start_pool"]

logger = logging.getLogger("cluster")


@dataclass(frozen=True, kw_only=True)
class EmbedPlan(CorpusPlan):
    """Everything one run needs, resolved and checked by the job layer."""

    run_id: str
    passthrough: tuple[str, ...]
    schema: pa.Schema
    output_uri: str
    rejects_uri: str
    vector_dtype: str
    rows_per_block: int | None = None
    rows_per_part: int = 16384
    #: how rows are compared with the table (IdRegistry): create / overwrite / append / incremental
    mode: str = "create"
    #: the table version the run planned against (None: no table yet)
    read_version: int | None = None
    #: a resumed run: ids its staging folder already holds are not embedded again
    resume: bool = False
    #: where texts are tokenized: "tasks" (the CPU prepare tasks, so a GPU never waits for the
    #: tokenizer), "actor" (inside the encoder actor), or "auto": tasks on GPU actors, actor on CPU ones
    tokenize: str = "auto"
    #: long texts cut into chunks, a row each (None: one row per text)
    chunking: Chunking | None = None
    #: a migration step (mode "migrate"): the new settings, a second encoder in every actor (``next_vec_*``)
    next_encoder: NextEncoder | None = None
    #: a migration step's slice of old rows: at most this many, taken within this many seconds (None: no limit)
    slice_rows: int | None = None
    slice_s: float | None = None

    # What the stages are built with: the same for the Ray pipeline and a small night in this process (_inprocess)

    def registry_args(self) -> dict[str, Any]:
        """The run's :class:`IdRegistry`."""
        return dict(
            mode=self.mode,
            table_uri=self.output_uri,
            read_version=self.read_version,
            staging_uri=(self.output_uri, self.run_id) if self.resume else None,
            storage_options=self.storage_options,
            slice_rows=self.slice_rows,
            slice_s=self.slice_s,
        )

    def prepare_args(self, registry: Any, progress: Any, tokenize: str) -> dict[str, Any]:
        """``prepare``'s keyword arguments: the registry and progress counter, tokenized in the tasks or not."""
        return {
            "id_column": self.id_column,
            "text_column": self.text_column,
            "passthrough": list(self.passthrough),
            "registry": registry,
            "progress": progress,
            "tokenizer": (self.model_path, self.encoder.max_length) if tokenize == "tasks" else None,
            "chunking": (self.model_path, self.encoder.max_length, self.chunking) if self.chunking else None,
            "copy_old": self.next_encoder is not None and self.next_encoder.table_uri is not None,
        }

    def encoder_args(self, progress: Any) -> dict[str, Any]:
        """``EncodeActor``'s constructor arguments, less the pool."""
        return dict(
            model_path=self.model_path,
            config=self.encoder,
            vector_dtype=self.vector_dtype,
            run_id=self.run_id,
            calibration_uri=self.calibration_uri,
            storage_options=self.storage_options,
            progress=progress,
            next_encoder=self.next_encoder,
        )

    def stager_args(self) -> dict[str, Any]:
        """The staging sink's (``RunStager``'s) arguments."""
        return dict(
            uri=self.output_uri,
            rejects_uri=self.rejects_uri,
            schema=self.schema,
            run_id=self.run_id,
            storage_options=self.storage_options,
            overwrite=replaces_table(self.mode),
            rows_per_part=self.rows_per_part,
        )


@dataclass
class PipelineResult:
    """What the commit needs: the run's staged parts (an earlier attempt's too) and what this attempt saw."""

    #: every part in the run's staging folder: what the commit adds
    parts: list[StagedPart]
    #: this attempt's rejected rows (an earlier attempt's are rejected again, not reused): fragments, count, reasons
    reject_fragments: list[str]
    rows_rejected: int
    reject_reasons: dict[str, int]
    pool: PoolPlan
    seconds: float
    #: from the id registry: read, new, changed, unchanged, staged (by an earlier attempt)
    counts: dict[str, int] = field(default_factory=dict)
    #: table ids whose old rows the commit deletes: replaced by new vectors, and gone from the input
    replaced_ids: list = field(default_factory=list)
    missing_ids: list = field(default_factory=list)
    #: where texts were tokenized: "tasks" or "actor"
    tokenize: str = "actor"

    @classmethod
    def staged(
        cls, stager: Any, *, pool: PoolPlan, t0: float, counts: dict[str, int], deletions: tuple, tokenize: str
    ) -> PipelineResult:
        """The result of an attempt whose writes went through ``stager`` (a ``RunStager``: the Ray Data sink, or
        the small night's in-process one), started at ``t0``; ``deletions``: the registry's (replaced, missing)."""
        replaced, missing = deletions
        return cls(
            parts=stager.parts,
            reject_fragments=stager.reject_fragments,
            rows_rejected=stager.rows_rejected,
            reject_reasons=stager.reject_reasons,
            pool=pool,
            seconds=time.perf_counter() - t0,
            counts=counts,
            replaced_ids=replaced,
            missing_ids=missing,
            tokenize=tokenize,
        )

    @property
    def rows_read(self) -> int:
        return self.counts.get("read", 0)

    @property
    def fragments(self) -> list[str]:
        return [f for p in self.parts for f in p.fragments]

    @property
    def rows_embedded(self) -> int:
        """Rows the commit adds, including those an earlier attempt of this run staged."""
        return sum(len(p.ids) for p in self.parts)

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.parts)

    @property
    def truncated(self) -> int:
        return sum(p.truncated for p in self.parts)

    @property
    def rows_per_node(self) -> dict[str, int]:
        """Ray node id -> rows its encoder actors embedded, most first (parts staged before nodes were
        recorded count nowhere)."""
        return rows_per_node(self.parts)


def resolve_tokenize(choice: str, pool: PoolPlan) -> str:
    """``auto``: tokenize in the CPU prepare tasks when the actors hold GPUs (the device must not wait
    for the tokenizer), inside the actor on CPU-only pools, where both share the same cores and
    one stage was faster (bench/pipeline.py measures both)."""
    if choice not in TOKENIZE_CHOICES:
        raise ValueError(f"tokenize must be one of {', '.join(TOKENIZE_CHOICES)}, got {choice!r}")
    if choice == "auto":
        return "tasks" if pool.uses_gpu else "actor"
    return choice


def _rows_per_block(plan: EmbedPlan, pool: PoolPlan) -> int:
    if plan.rows_per_block:
        return plan.rows_per_block
    total = plan.source.row_count()
    if total is None:
        return 512
    # enough blocks that every actor gets several, none so small that per-call overhead dominates; a GPU
    # actor's call is a few hundred ms of device work at most, so it gets larger blocks
    cap = 8192 if pool.uses_gpu else 2048
    return int(min(cap, max(32, math.ceil(total / (pool.actors * 4)))))


def start_pool(request: PoolRequest) -> PoolPlan:
    """Set Ray Data's own progress bars (shown with ``embedjob -v`` only: embedjob's display shows the
    progress) and size the actor pool from the connected cluster's resources, as a plan (embedding,
    calibration or backfill) asks."""
    import ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = request.progress and verbose_output()
    if not ctx.enable_progress_bars:
        from ray.util.debug import log_once

        # Ray Data warns once per process that its bars are off ("Progress bars disabled. To enable, ..."):
        # they are off on purpose here, so that once is spent now (the key is Ray Data's)
        log_once("ray_data_progress_manager_disabled")
    return plan_pool(
        ray.cluster_resources(),
        actors=request.actors,
        gpus_per_actor=request.gpus_per_actor,
        cpus_per_actor=request.cpus_per_actor,
        nodes={node["NodeID"]: node["Resources"] for node in ray.nodes() if node.get("Alive")},
    )


#: how long the driver waits for the spread placement group before placing the actors without it
PLACEMENT_TIMEOUT_S = 60.0
_MIN_PLACEMENT_MEMORY = 64 * 1024**2


def _weights_bytes(model_path: str) -> int:
    """Bytes of the model's weight files: the memory an actor holds at the least (0 if unreadable)."""
    with contextlib.suppress(OSError):
        return sum(f.stat().st_size for f in weight_files(model_path))
    return 0


@contextlib.contextmanager
def actor_placement(pool: PoolPlan, model_path: str, *, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
    """The Ray options that place the encoder actors: ``num_cpus``/``num_gpus`` and, for CPU actors over
    several nodes, one bundle per actor in a placement group, each pinned to its node's share.

    Ray places CPU actors on any node with room, and best effort SPREAD scheduling lets them land on
    one node when other SPREAD actors (Ray Data's own) are created at the same time; a 0-CPU reservation
    (1-CPU nodes) does not stop it. Each bundle holds its node's CPU reservation for one actor and a
    logical ``memory`` of the model's weight size (at least 64 MiB; no task asks for memory, so none is
    starved), and is pinned to the node by its ``ray.io/node-id`` label. Each actor asks for exactly one
    bundle's memory and the smallest bundle's CPUs, so it takes a whole bundle, whichever it gets, and the
    bundles' nodes are the actors' nodes. An actor sets its threads from the node it lands on
    (``PoolPlan.threads_on``). GPU actors and single-node pools need no group. If the group cannot be
    placed within ``timeout_s`` (other jobs hold the resources, a node left), the actors are placed
    without it and a warning says so. The group is removed on exit.
    """

    args: dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus or None}
    if not pool.spread:
        yield args
        return
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    memory = max(_weights_bytes(model_path), _MIN_PLACEMENT_MEMORY)
    bundles: list[dict[str, float]] = []
    selectors: list[dict[str, str]] = []
    for share in pool.per_node:
        bundle = {"memory": float(memory), **({"CPU": share.num_cpus} if share.num_cpus > 0 else {})}
        bundles += [dict(bundle) for _ in range(share.actors)]
        selectors += [{"ray.io/node-id": share.node_id} for _ in range(share.actors)]
    try:
        pg = placement_group(bundles, strategy="SPREAD", bundle_label_selector=selectors)
    except TypeError:  # a Ray without bundle label selectors (< 2.5x): spread by count only
        pg = placement_group(bundles, strategy="SPREAD")
    wait = PLACEMENT_TIMEOUT_S if timeout_s is None else timeout_s
    shares = ", ".join(f"{s.actors} x {s.num_cpus:g} CPU on {s.node_id[:8]}" for s in pool.per_node)
    try:
        if pg.wait(timeout_seconds=wait):
            logger.info("actor placement: a placement group of %d bundle(s): %s", len(bundles), shares)
            args.update(
                memory=memory,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=False),
            )
        else:
            logger.warning(
                "the placement group holding %d actor(s) on %d nodes (%s) was not placed in %g s; "
                "placing the actors without it (Ray may put several on one node)",
                pool.actors,
                pool.nodes,
                shares,
                wait,
            )
        yield args
    finally:
        remove_placement_group(pg)


def map_with_actors(
    ds: Any, actor: type, pool: PoolPlan, placement: dict[str, Any], *, batch_size: int, **constructor_kwargs: Any
) -> Any:
    """``ds`` mapped (pyarrow batches of ``batch_size`` rows) through the pool's ``actor`` instances, each
    built with ``constructor_kwargs`` and the pool, placed as ``actor_placement`` said."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        actor,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=pool.actors),
        **placement,
        fn_constructor_kwargs={**constructor_kwargs, "pool": pool},
    )


def _log_actor_timings(counter: Any, started_at: float, actors: int) -> None:
    """The encoder actors' timings, from the run's counter (DEBUG only: nothing is asked of the counter else)."""
    import ray

    from ._timing import TIMING_LOGGER

    if not logging.getLogger(TIMING_LOGGER).isEnabledFor(logging.DEBUG):
        return
    try:
        notes = ray.get(counter.notes.remote(), timeout=10)
    except Exception as exc:  # timings are never a reason for the run to fail
        logger.debug("no actor timings: %s", exc)
        return
    log_actor_timings(notes, started_at=started_at, actors=actors)


def run_pipeline(
    plan: EmbedPlan, *, delete_missing: bool = True, display: ProgressDisplay | None = None
) -> PipelineResult:
    """Run read -> prepare -> encode -> write on the connected Ray cluster; commit nothing.

    Every written batch is recorded as a part in the run's staging folder.
    ``delete_missing`` (incremental runs): report the table's ids that are not
    in the input, for the commit to delete. ``display``: where the run's progress shows (default: a
    display of its own).
    """
    with display_or_own(display, f"run {plan.run_id}", show=plan.pool.progress) as shown:
        return _run_pipeline(plan, delete_missing, shown)


def _run_pipeline(plan: EmbedPlan, delete_missing: bool, display: ProgressDisplay) -> PipelineResult:
    import ray

    from ._sink import StagingSink

    t0 = time.perf_counter()
    pool = start_pool(plan.pool)
    rows = _rows_per_block(plan, pool)
    tokenize = resolve_tokenize(plan.tokenize, pool)
    logger.info("actor pool: %s; %d rows per block; tokenizing in the %s", pool.describe(), rows, tokenize)
    registry = ray.remote(num_cpus=0)(IdRegistry).options(max_restarts=0).remote(**plan.registry_args())
    counter = start_counter()
    display.begin(Stage.ENCODING, total=plan.source.row_count(), counter=counter)
    with actor_placement(pool, plan.model_path) as placement:
        columns = [plan.id_column, plan.text_column, *plan.passthrough]
        ds = plan.source.read(columns)
        ds = ds.repartition(target_num_rows_per_block=rows)
        ds = ds.map_batches(
            prepare,
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
            fn_kwargs=plan.prepare_args(registry, counter, tokenize),
        )
        ds = map_with_actors(
            ds,
            EncodeActor,
            pool,
            placement,
            batch_size=rows,
            **plan.encoder_args(counter),
        )
        sink = StagingSink(**plan.stager_args())
        log_timing("pool and plan", time.perf_counter() - t0)
        started_at, t_exec = time.time(), time.perf_counter()
        try:
            ds.write_datasink(sink)
        except Exception as exc:
            explained = plan.source.explain_read_error(exc)  # a damaged input file, named
            if explained is None:
                raise
            raise explained from None
        display.end_phase()
        log_timing("pipeline (Ray Data execution)", time.perf_counter() - t_exec)
        _log_actor_timings(counter, started_at, pool.actors)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Ray Data stats of run %s:\n%s", plan.run_id, ds.stats())
    deletions = ray.get(registry.deletions.remote(delete_missing))
    counts = ray.get(registry.counts.remote())
    ray.kill(registry)
    return PipelineResult.staged(sink, pool=pool, t0=t0, counts=counts, deletions=deletions, tokenize=tokenize)
