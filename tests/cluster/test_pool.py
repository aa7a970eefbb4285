from __future__ import annotations

import pytest

from cluster import ClusterError, plan_pool


def test_two_core_machine_gets_one_actor_that_leaves_a_cpu_for_reads_and_writes():
    pool = plan_pool({"CPU": 2.0})
    assert (pool.actors, pool.num_cpus, pool.num_gpus, pool.torch_threads) == (1, 1.0, 0.0, 2)


def test_bigger_cpu_nodes_get_several_multi_threaded_actors():
    pool = plan_pool({"CPU": 32.0})
    assert pool.actors == 4 and pool.torch_threads == 8
    assert pool.actors * pool.num_cpus <= 31  # one CPU stays free
    assert "4 CPU actor(s) x 8 torch threads" in pool.describe()


def test_explicit_actor_count_on_two_cpus_uses_fractional_reservations():
    pool = plan_pool({"CPU": 2.0}, actors=2)
    assert pool.actors == 2 and pool.torch_threads == 1
    assert pool.num_cpus == 0.5
    assert not pool.spread and "spread" not in pool.describe()


@pytest.mark.parametrize(
    ("resources", "actors"),
    [({"CPU": 1.0}, None), ({"CPU": 1.0}, 1), ({"CPU": 1.0, "GPU": 1.0}, None), ({"CPU": 1.0, "GPU": 2.0}, None)],
)
def test_a_one_cpu_machine_reserves_no_cpu_so_read_and_write_tasks_can_run(resources, actors):
    # half a CPU per actor left half a CPU, and a task needs a whole one: the run waited forever
    pool = plan_pool(resources, actors=actors)
    assert pool.num_cpus == 0.0, pool
    assert pool.uses_gpu == ("GPU" in resources)


@pytest.mark.parametrize(("cpus", "actors"), [(2.0, 3), (2.0, 10000), (1.0, 2)])
def test_more_cpu_actors_than_cpus_is_refused_naming_both(cpus, actors):
    with pytest.raises(
        ClusterError, match=rf"cluster.actors = {actors} CPU actors, but the Ray cluster has {cpus:g} CPUs"
    ):
        plan_pool({"CPU": cpus}, actors=actors)


def test_one_actor_per_gpu_by_default():
    pool = plan_pool({"CPU": 16.0, "GPU": 4.0})
    assert (pool.actors, pool.num_gpus) == (4, 1.0)
    assert pool.uses_gpu
    assert pool.actors * pool.num_cpus <= 15


def test_gpus_per_actor_and_errors():
    assert plan_pool({"CPU": 8.0, "GPU": 4.0}, gpus_per_actor=2).actors == 2
    assert not plan_pool({"CPU": 8.0, "GPU": 4.0}, gpus_per_actor=0).uses_gpu
    with pytest.raises(ClusterError, match=r"3 actor\(s\) x 2 GPU need 6 GPUs; the Ray cluster has 4"):
        plan_pool({"CPU": 8.0, "GPU": 4.0}, actors=3, gpus_per_actor=2)
    with pytest.raises(ClusterError, match="gpus_per_actor = 1 but the Ray cluster has no GPUs"):
        plan_pool({"CPU": 8.0}, gpus_per_actor=1)
    with pytest.raises(ClusterError, match="at least 1 is needed"):
        plan_pool({"CPU": 0.0})


NODES_16_4 = {"big": {"CPU": 16.0}, "small": {"CPU": 4.0}}


def test_nodes_of_different_sizes_each_get_actors_sized_to_them():
    # sized by the largest node and spread by count, one 8-thread actor ran on the 4-CPU node
    pool = plan_pool({"CPU": 20.0}, nodes=NODES_16_4)
    shares = {s.node_id: (s.actors, s.torch_threads, s.num_cpus) for s in pool.per_node}
    assert shares == {"big": (2, 8, 7.5), "small": (1, 4, 3.0)}
    assert (pool.actors, pool.num_cpus, pool.torch_threads) == (3, 3.0, 8)  # the request fits every bundle
    for node, cpus in (("big", 16), ("small", 4)):
        actors, threads, reserve = shares[node]
        assert actors * threads <= cpus and cpus - actors * reserve >= 1  # no oversubscription, a CPU for tasks
        assert pool.threads_on(node) == threads
    assert pool.threads_on("joined-later") == 4  # a node the pool was not sized for: the smallest share's
    assert pool.describe() == (
        "3 CPU actor(s) over 2 nodes (2 x 8 torch threads reserving 7.5 CPU each on big; "
        "1 x 4 torch threads reserving 3 CPU each on small)"
    )


@pytest.mark.parametrize(
    ("actors", "expected"),
    [(1, {"big": (1, 16)}), (3, {"big": (2, 8), "small": (1, 4)}), (5, {"big": (4, 4), "small": (1, 4)})],
)
def test_an_actor_count_is_shared_out_by_cpus(actors, expected):
    pool = plan_pool({"CPU": 20.0}, actors=actors, nodes=NODES_16_4)
    assert {s.node_id: (s.actors, s.torch_threads) for s in pool.per_node} == expected
    assert pool.actors == actors
    if len(expected) == 1:
        assert pool.spread and pool.describe().endswith(", on node big)")  # still pinned: Ray could pick "small"


def test_threads_per_actor_on_nodes_smaller_than_that():
    pool = plan_pool({"CPU": 20.0}, cpus_per_actor=8, nodes=NODES_16_4)
    assert [(s.node_id, s.actors, s.torch_threads) for s in pool.per_node] == [("big", 2, 8)]
    pool = plan_pool({"CPU": 6.0}, cpus_per_actor=8, nodes={"a": {"CPU": 2.0}, "b": {"CPU": 4.0}})
    assert [(s.node_id, s.actors, s.torch_threads) for s in pool.per_node] == [("b", 1, 8)]  # none fits: largest


def test_gpu_actors_over_several_nodes_reserve_what_each_gpu_node_can_give():
    # the cluster-wide sizing gave each of 2 GPU actors 1 CPU; both GPUs sit on a 1-CPU node, so one actor
    # could never start
    nodes = {"head": {"CPU": 2.0}, "gpus": {"CPU": 1.0, "GPU": 2.0}}
    assert plan_pool({"CPU": 3.0, "GPU": 2.0}, nodes=nodes).num_cpus == 0.0
    nodes = {"head": {"CPU": 2.0}, "gpus": {"CPU": 3.0, "GPU": 4.0}, "more": {"CPU": 16.0, "GPU": 4.0}}
    pool = plan_pool({"CPU": 21.0, "GPU": 8.0}, nodes=nodes)
    assert (pool.actors, pool.num_cpus) == (8, 0.5)  # 4 actors on a 3-CPU node: 2 CPUs over 4, one left
    assert pool.describe() == "8 GPU actor(s) x 1 GPU (reserving 0.5 CPU each)"
    # fewer actors than GPUs: Ray may still put them all on the small node
    assert plan_pool({"CPU": 21.0, "GPU": 8.0}, actors=2, nodes=nodes).num_cpus == 1.0
    assert plan_pool({"CPU": 21.0, "GPU": 8.0}, gpus_per_actor=4, nodes=nodes).num_cpus == 1.0
