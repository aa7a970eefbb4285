"""The Jobs API address and runtime env, without a cluster (tests/e2e/test_submit_e2e.py has one)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from cluster import ClusterError, RayJobsClient, build_runtime_env, jobs_api_address


@pytest.fixture
def no_ray_env(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return monkeypatch


def test_address_precedence(no_ray_env):
    no_ray_env.setenv("RAY_ADDRESS", "http://from-ray-address:8265")
    assert jobs_api_address() == "http://from-ray-address:8265"
    no_ray_env.setenv("RAY_API_SERVER_ADDRESS", "api-server:8265/")
    assert jobs_api_address() == "http://api-server:8265"
    assert jobs_api_address("https://explicit:443") == "https://explicit:443"


def test_missing_or_wrong_addresses_say_what_is_expected(no_ray_env):
    with pytest.raises(ClusterError, match=r"no Ray Jobs API address: pass --address http://HEAD:8265"):
        jobs_api_address()
    no_ray_env.setenv("RAY_ADDRESS", "head:6379")
    with pytest.raises(ClusterError, match=r"RAY_ADDRESS is 'head:6379', not an http\(s\):// URL"):
        jobs_api_address()
    with pytest.raises(ClusterError, match=r"--address 'ray://head:10001' is not a Ray Jobs API address"):
        jobs_api_address("ray://head:10001")


def test_unreachable_address_fails_fast_and_names_it(no_ray_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens there
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=rf"cannot reach the Ray Jobs API at 'http://127.0.0.1:{port}'"):
        RayJobsClient(f"127.0.0.1:{port}", timeout_s=2)
    assert time.monotonic() - t0 < 5


def test_runtime_env_carries_the_packages_and_offline_models(tmp_path):
    env = build_runtime_env(working_dir=tmp_path, py_modules=[tmp_path / "extra"], env_vars={"A": "1"})
    names = [Path(m).name for m in env["py_modules"]]
    assert names == ["embedder", "storage", "cluster", "extra"]
    assert env["env_vars"] == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "A": "1"}
    assert env["working_dir"] == str(tmp_path)
