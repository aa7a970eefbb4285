"""Sizing the encoder actor pool from the cluster's resources.

GPUs: one actor per ``gpus_per_actor`` GPUs. CPUs only: few actors with
several torch threads each (on 2 cores, 1 actor x 2 threads beat 2 x 1), and
a CPU reservation that always leaves one CPU for Ray Data's read and write
tasks — reserving every core for actors hangs the pipeline ("backpressured").

A task needs one whole CPU on one node. A 1-CPU machine's actors therefore
reserve no CPU at all (half a CPU reserved would leave half, and no task would
ever run); torch threads are set explicitly, so the reservation only keeps the
read and write tasks schedulable.

Several nodes: each node with CPUs gets its own share of CPU actors, sized to
that node: on nodes of 16 and 4 CPUs, 2 actors x 8 threads on the first and
1 x 4 on the second, each node keeping one whole CPU for tasks (a read or write
task needs a whole CPU on one node; 2 actors x 0.5 CPU on two 1-CPU nodes leave
half a CPU on each). Ray would put an actor on any node with room, so the shares
are held by a placement group with one bundle per actor, pinned to its node
(``actor_placement`` in ``_pipeline``), and an actor sets its torch threads from
the node it lands on (``PoolPlan.threads_on``).

GPU actors over several nodes: the GPUs place them. Their CPU reservation must
fit every GPU node: on a node with c CPUs and k of the actors it is at most
(c - 1) / k, so that node keeps a CPU for tasks too (none on a 1-CPU node).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ._errors import ClusterError

__all__ = ["NodeShare", "PoolPlan", "plan_pool"]

MAX_THREADS_PER_CPU_ACTOR = 8


@dataclass(frozen=True)
class PoolRequest:
    """What a job asks of the encoder actor pool (unset: sized from the cluster's resources), and whether Ray
    Data shows progress bars. Embedding, backfill and calibration plans all carry one."""

    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    progress: bool = True


@dataclass(frozen=True)
class NodeShare:
    """The CPU actors one node holds in a pool over several nodes."""

    node_id: str  # Ray node id (hex)
    actors: int
    torch_threads: int  # threads of each actor there
    num_cpus: float  # CPUs each actor's bundle reserves there


@dataclass(frozen=True)
class PoolPlan:
    actors: int
    num_cpus: float  # Ray reservation per actor (several nodes: the smallest share's, what fits every bundle)
    num_gpus: float
    torch_threads: int  # threads each actor gives torch (CPU actors; several nodes: the largest share's)
    #: CPU actors over several nodes: each node's share, placed by ``cluster.actor_placement``
    per_node: tuple[NodeShare, ...] = ()

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0

    @property
    def nodes(self) -> int:
        """Nodes the CPU actors are shared over (1: wherever Ray puts them)."""
        return max(1, len(self.per_node))

    @property
    def spread(self) -> bool:
        """CPU actors over several nodes: placed one per bundle of a placement group whose bundles are pinned
        to the nodes (``cluster.actor_placement``), since their CPU reservation may be too small (0 on 1-CPU
        nodes) to keep Ray from putting them all on one node."""
        return bool(self.per_node)

    def threads_on(self, node_id: str) -> int:
        """Torch threads of a CPU actor on node ``node_id``: its node's share, or the smallest share's on a
        node the pool was not sized for (one that joined later, or a placement that fell back)."""
        for share in self.per_node:
            if share.node_id == node_id:
                return share.torch_threads
        return min((s.torch_threads for s in self.per_node), default=self.torch_threads)

    def describe(self) -> str:
        if self.uses_gpu:
            return f"{self.actors} GPU actor(s) x {self.num_gpus:g} GPU (reserving {self.num_cpus:g} CPU each)"
        if len({(s.torch_threads, s.num_cpus) for s in self.per_node}) > 1:
            shares = "; ".join(
                f"{s.actors} x {s.torch_threads} torch threads reserving {s.num_cpus:g} CPU each on {s.node_id[:8]}"
                for s in self.per_node
            )
            return f"{self.actors} CPU actor(s) over {self.nodes} nodes ({shares})"
        where = ""
        if len(self.per_node) == 1:
            where = f", on node {self.per_node[0].node_id[:8]}"
        elif self.per_node:
            where = f", spread over {self.nodes} nodes"
        return (
            f"{self.actors} CPU actor(s) x {self.torch_threads} torch threads "
            f"(reserving {self.num_cpus:g} CPU each{where})"
        )


def plan_pool(
    resources: Mapping[str, float],
    *,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
    nodes: Mapping[str, Mapping[str, float]] | None = None,
) -> PoolPlan:
    """Choose the pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    ``gpus_per_actor=0`` forces CPU actors on a GPU cluster. Asking for more
    than the cluster has is an error that says what it has. ``nodes``: each live
    node's resources by node id (``ray.nodes()``); with more than one node with
    CPUs, CPU actors are shared out per node (``PoolPlan.per_node``), and GPU
    actors reserve what every GPU node can give while keeping a CPU for tasks.
    """
    cpus = float(resources.get("CPU", 0))
    gpus = float(resources.get("GPU", 0))
    if cpus < 1:
        raise ClusterError(f"the Ray cluster reports {cpus:g} CPUs; at least 1 is needed")
    if actors is not None and actors < 1:
        raise ClusterError(f"cluster.actors must be >= 1, got {actors}")
    use_gpu = gpus > 0 and gpus_per_actor != 0
    if gpus_per_actor and gpus_per_actor > 0 and gpus == 0:
        raise ClusterError(
            f"cluster.gpus_per_actor = {gpus_per_actor:g} but the Ray cluster has no GPUs; "
            f"set gpus_per_actor = 0 to run on CPUs"
        )
    if use_gpu:
        return _gpu_pool(cpus, gpus, nodes or {}, actors=actors, per=float(gpus_per_actor or 1))
    if actors is not None and actors > cpus:
        raise ClusterError(
            f"cluster.actors = {actors} CPU actors, but the Ray cluster has {cpus:g} CPUs: at most "
            f"{int(cpus)} (each needs a core for its torch thread); lower cluster.actors, or leave it unset to size "
            f"the pool from the cluster"
        )
    threads = int(cpus_per_actor) if cpus_per_actor else None
    node_cpus = {node: float(r.get("CPU", 0)) for node, r in (nodes or {}).items() if float(r.get("CPU", 0)) > 0}
    if len(node_cpus) > 1:
        return _multi_node_cpu_pool(node_cpus, actors=actors, threads=threads)
    n, threads = _cpu_actors(cpus, actors=actors, threads=threads)
    return PoolPlan(actors=n, num_cpus=_reserve(cpus, n, threads), num_gpus=0.0, torch_threads=threads)


def _cpu_actors(cpus: float, *, actors: int | None, threads: int | None) -> tuple[int, int]:
    """(actors, threads each) on ``cpus`` CPUs: as many actors of ``threads`` threads (default: all the
    CPUs, at most MAX_THREADS_PER_CPU_ACTOR) as fit, at least one; or ``actors`` sharing the CPUs."""
    if actors is None:
        threads = threads or int(min(cpus, MAX_THREADS_PER_CPU_ACTOR))
        return max(1, int(cpus // threads)), threads
    return actors, max(1, threads or int(cpus // actors))


def _reserve(cpus: float, actors: int, per_actor: float) -> float:
    """CPUs each of ``actors`` actors on a node of ``cpus`` CPUs reserves: at most ``per_actor``, and one
    whole CPU stays free for read/write tasks. On a 1-CPU node any reservation would leave less than the
    whole CPU a task needs, and the run would wait forever: the actors reserve nothing there (their torch
    threads are set explicitly)."""
    spare = cpus - 1.0
    reserve = min(per_actor, spare / actors) if spare > 0 and actors else 0.0
    return math.floor(reserve * 1000) / 1000


def _gpu_pool(
    cpus: float, gpus: float, nodes: Mapping[str, Mapping[str, float]], *, actors: int | None, per: float
) -> PoolPlan:
    fit = math.floor(gpus / per + 1e-9)
    n = actors or max(1, fit)
    if n * per > gpus + 1e-9:
        raise ClusterError(f"{n} actor(s) x {per:g} GPU need {n * per:g} GPUs; the Ray cluster has {gpus:g}")
    # the GPUs place the actors, and a GPU node holds at most as many as its GPUs fit: the reservation
    # must leave a CPU on each of them (the cluster's total would put 2 actors x 1 CPU on a 1-CPU node)
    gpu_nodes = [
        (float(r.get("CPU", 0)), min(n, math.floor(float(r.get("GPU", 0)) / per + 1e-9)))
        for r in nodes.values()
        if float(r.get("GPU", 0)) >= per - 1e-9
    ] or [(cpus, n)]
    reserve = min(_reserve(c, k, 1.0) for c, k in gpu_nodes)
    return PoolPlan(actors=n, num_cpus=reserve, num_gpus=per, torch_threads=1)


def _multi_node_cpu_pool(node_cpus: Mapping[str, float], *, actors: int | None, threads: int | None) -> PoolPlan:
    """A share of CPU actors per node, sized to that node (actors, threads, reservation), as one node's pool
    would be; a given actor count is shared out in proportion to the nodes' CPUs."""
    if actors is not None:
        counts: dict[str, int | None] = dict(_proportional(actors, node_cpus))
    elif threads:  # a node smaller than the threads asked for gets none, unless no node is big enough
        counts = {node: int(c // threads) for node, c in node_cpus.items()}
        if not any(counts.values()):
            counts[max(node_cpus, key=node_cpus.__getitem__)] = 1
    else:
        counts = dict.fromkeys(node_cpus)
    shares = []
    for node, c in node_cpus.items():
        if counts[node] == 0:
            continue
        k, t = _cpu_actors(c, actors=counts[node], threads=threads)
        shares.append(NodeShare(node_id=node, actors=k, torch_threads=t, num_cpus=_reserve(c, k, float(t))))
    return PoolPlan(
        actors=sum(s.actors for s in shares),
        num_cpus=min(s.num_cpus for s in shares),
        num_gpus=0.0,
        torch_threads=max(s.torch_threads for s in shares),
        per_node=tuple(shares),
    )


def _proportional(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """``total`` split over the keys in proportion to ``weights`` (largest remainders; ties to the larger
    weight, then to the earlier key)."""
    whole = sum(weights.values())
    exact = {k: total * w / whole for k, w in weights.items()}
    counts = {k: math.floor(x) for k, x in exact.items()}
    order = sorted(weights, key=lambda k: (-(exact[k] - counts[k]), -weights[k]))
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts
