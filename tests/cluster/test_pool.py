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
    [({"CPU": 1.0}, None), ({"CPU": 1.0}, 2), ({"CPU": 1.0, "GPU": 1.0}, None), ({"CPU": 1.0, "GPU": 2.0}, None)],
)
def test_a_one_cpu_machine_reserves_no_cpu_so_read_and_write_tasks_can_run(resources, actors):
    # half a CPU per actor left half a CPU, and a task needs a whole one: the run waited forever
    pool = plan_pool(resources, actors=actors)
    assert pool.num_cpus == 0.0, pool
    assert pool.uses_gpu == ("GPU" in resources)


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
