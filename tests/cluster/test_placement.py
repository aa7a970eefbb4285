"""Placing the encoder actors (issue 7): a CPU pool over several nodes goes through a placement group, one
bundle per actor pinned to its node's share; the group is removed afterwards, and one that cannot be placed
is given up with a warning instead of holding the run. (Two real nodes: tests/e2e/test_mixed_nodes_e2e.py.)"""

from __future__ import annotations

import logging

from cluster import NodeShare, PoolPlan, actor_placement


def _live_groups(ray) -> list[dict]:
    return [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]


def test_one_node_and_gpu_pools_need_no_group(ray_local, tiny_bert_dir):
    for pool in (PoolPlan(2, 0.5, 0.0, 1), PoolPlan(1, 1.0, 1.0, 1)):
        with actor_placement(pool, str(tiny_bert_dir)) as args:
            assert args == {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus or None}
    assert _live_groups(ray_local) == []


def test_a_pool_over_several_nodes_gets_one_bundle_per_actor(ray_local, tiny_bert_dir):
    ray = ray_local
    here = ray.get_runtime_context().get_node_id()
    pool = PoolPlan(2, 0.0, 0.0, 1, per_node=(NodeShare(here, actors=2, torch_threads=1, num_cpus=0.0),))
    with actor_placement(pool, str(tiny_bert_dir)) as args:
        strategy = args["scheduling_strategy"]
        (group,) = _live_groups(ray)
        assert group["strategy"] == "SPREAD" and group["state"] == "CREATED"
        assert ray.util.placement_group_table(strategy.placement_group)["bundles_to_node_id"] == {0: here, 1: here}
        assert [b["memory"] for b in group["bundles"].values()] == [args["memory"]] * 2
        assert args["memory"] >= 64 * 1024**2 and "CPU" not in group["bundles"][0]  # 0-CPU actors

        @ray.remote
        class Where:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        actors = [Where.options(**args).remote() for _ in range(2)]
        assert len(set(ray.get([a.node.remote() for a in actors]))) == 1  # one node here, both placed
        # each actor holds a whole bundle: a third finds none free
        third = Where.options(**args).remote()
        ready, _ = ray.wait([third.node.remote()], timeout=3)
        assert ready == []
        for a in (*actors, third):
            ray.kill(a)
        assert strategy.placement_group.bundle_count == 2
    assert _live_groups(ray) == []


def test_a_group_that_cannot_be_placed_is_given_up_with_a_warning(ray_local, tiny_bert_dir, caplog):
    here = ray_local.get_runtime_context().get_node_id()
    share = NodeShare(here, actors=2, torch_threads=8, num_cpus=64.0)  # the runtime has 2 CPUs
    pool = PoolPlan(actors=2, num_cpus=64.0, num_gpus=0.0, torch_threads=8, per_node=(share,))
    with caplog.at_level(logging.WARNING, logger="cluster"):
        with actor_placement(pool, str(tiny_bert_dir), timeout_s=1) as args:
            assert args == {"num_cpus": 64.0, "num_gpus": None}
    assert "was not placed in 1 s; placing the actors without it" in caplog.text
    assert _live_groups(ray_local) == []
