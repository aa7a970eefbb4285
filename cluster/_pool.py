"""Sizing the encoder actor pool from the cluster's resources.

GPUs: one actor per ``gpus_per_actor`` GPUs. CPUs only: few actors with
several torch threads each (on 2 cores, 1 actor x 2 threads beat 2 x 1), and
a CPU reservation that always leaves one CPU for Ray Data's read and write
tasks — reserving every core for actors hangs the pipeline ("backpressured").

A task needs one whole CPU on one node. A 1-CPU machine's actors therefore
reserve no CPU at all (half a CPU reserved would leave half, and no task would
ever run); torch threads are set explicitly, so the reservation only keeps the
read and write tasks schedulable.

Several nodes: Ray Data spreads the actors over the nodes, so the spare CPU
must be whole on every node: 2 actors x 0.5 CPU on two 1-CPU nodes leave half
a CPU on each. There, an actor's threads are capped by the largest node's CPUs
and its reservation leaves one whole CPU per node (none at all on 1-CPU nodes).
Such a reservation does not keep Ray from putting every actor on one node, so
a pool over several nodes is placed through a SPREAD placement group
(``actor_placement`` in ``_pipeline``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._errors import ClusterError

__all__ = ["PoolPlan", "plan_pool"]

MAX_THREADS_PER_CPU_ACTOR = 8


@dataclass(frozen=True)
class PoolPlan:
    actors: int
    num_cpus: float  # Ray reservation per actor
    num_gpus: float
    torch_threads: int  # threads each actor gives torch (CPU actors)
    nodes: int = 1  # nodes with CPUs the pool was sized for

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0

    @property
    def spread(self) -> bool:
        """CPU actors over several nodes: placed one per bundle of a SPREAD placement group
        (``cluster.actor_placement``), since their CPU reservation may be too small (0 on 1-CPU nodes) to
        keep Ray from putting them all on one node."""
        return not self.uses_gpu and self.nodes > 1

    def describe(self) -> str:
        if self.uses_gpu:
            return f"{self.actors} GPU actor(s) x {self.num_gpus:g} GPU"
        where = f", spread over {self.nodes} nodes" if self.spread else ""
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
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> PoolPlan:
    """Choose the pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    ``gpus_per_actor=0`` forces CPU actors on a GPU cluster. Asking for more
    than the cluster has is an error that says what it has. ``nodes``: each live
    node's resources (``ray.nodes()``); with more than one node with CPUs, CPU
    actors are sized so that every node keeps a whole CPU for read/write tasks.
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
        per = float(gpus_per_actor or 1)
        fit = math.floor(gpus / per + 1e-9)
        n = actors or max(1, fit)
        if n * per > gpus + 1e-9:
            raise ClusterError(f"{n} actor(s) x {per:g} GPU need {n * per:g} GPUs; the Ray cluster has {gpus:g}")
        spare = cpus - 1.0  # one whole CPU stays free for the read, prepare and write tasks
        reserve = min(1.0, spare / n) if spare > 0 else 0.0
        return PoolPlan(actors=n, num_cpus=math.floor(reserve * 1000) / 1000, num_gpus=per, torch_threads=1)
    threads = int(cpus_per_actor) if cpus_per_actor else None
    node_cpus = [float(n.get("CPU", 0)) for n in nodes or () if float(n.get("CPU", 0)) > 0]
    if len(node_cpus) > 1:
        return _multi_node_cpu_pool(node_cpus, actors=actors, threads=threads)
    if actors is None:
        threads = threads or int(min(cpus, MAX_THREADS_PER_CPU_ACTOR))
        n = max(1, int(cpus // threads))
    else:
        n = actors
        threads = threads or max(1, int(cpus // n))
    spare = cpus - 1.0  # one whole CPU stays free for read/write tasks
    # a 1-CPU machine: any reservation would leave less than the whole CPU a task needs, and the run
    # would wait forever; the actors reserve nothing there (their torch threads are set explicitly)
    reserve = min(float(threads), spare / n) if spare > 0 else 0.0
    return PoolPlan(actors=n, num_cpus=math.floor(reserve * 1000) / 1000, num_gpus=0.0, torch_threads=max(1, threads))


def _multi_node_cpu_pool(node_cpus: Sequence[float], *, actors: int | None, threads: int | None) -> PoolPlan:
    """CPU actors over several nodes: an actor's threads fit on one node, and the reservation leaves one
    whole CPU on every node however evenly Ray spreads the actors."""
    largest = max(node_cpus)
    if actors is None:
        threads = threads or int(min(largest, MAX_THREADS_PER_CPU_ACTOR))
        n = max(1, int(sum(c // threads for c in node_cpus)))
    else:
        n = actors
        threads = threads or max(1, int(min(largest, sum(node_cpus) // n)))
    per_node = math.ceil(n / len(node_cpus))  # the most actors one node gets when they are spread
    reserve = min(float(threads), max(min(node_cpus) - 1.0, 0.0) / per_node)
    return PoolPlan(
        actors=n,
        num_cpus=math.floor(reserve * 1000) / 1000,
        num_gpus=0.0,
        torch_threads=max(1, threads),
        nodes=len(node_cpus),
    )
