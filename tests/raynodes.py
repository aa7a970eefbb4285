"""Ray nodes started as real processes for a test (`ray start --head`, a worker, a two-node loopback cluster):
each a context manager that stops what it started."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

# ports with fixed defaults (52365, 10001, ...) that another Ray on this machine may hold
_RAY_FIXED_PORT_FLAGS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "ray-client-server-port",
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_auth_mode() -> str:
    """The auth mode of every node a test starts: token, unless RAY_AUTH_MODE says otherwise.

    Left unset, `ray start --head` turns token mode on only when ~/.ray/auth_token already exists (a local
    ``ray.init()`` writes one), so on a fresh machine the head ran without auth and a joining node in token
    mode was refused: the outcome hung on test order. A head in token mode does not write a token, so one
    is made here when none is found (`ray get-auth-token --generate`, what a local ``ray.init()`` does);
    the nodes and the drivers (``cluster.connect``, a plain ``ray.init(address=...)``) read it from there."""
    import subprocess
    import sys

    mode = os.environ.get("RAY_AUTH_MODE", "token")
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if mode == "token" and not os.environ.get("RAY_AUTH_TOKEN") and not token_file.is_file():
        ray_exe = Path(sys.executable).with_name("ray")
        subprocess.run([str(ray_exe), "get-auth-token", "--generate"], capture_output=True, check=True, timeout=120)
    return mode


@contextlib.contextmanager
def _ray_start(prefix: str, args: Sequence[str], extra_env: dict[str, str] | None = None):
    """`ray start ARGS --block` on loopback, in its own process group and temp dir; yields the process and
    kills the whole group (then removes the temp dir) on exit."""
    import signal
    import subprocess
    import sys
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # Ray's unix sockets need a short path
    ray_exe = Path(sys.executable).with_name("ray")
    env = {
        **os.environ,
        # the cluster's `python` is this venv's, as on a cluster image where Ray's interpreter is on the PATH
        "PATH": f"{ray_exe.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [
            str(ray_exe),
            "start",
            *args,
            "--block",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM makes Ray drain for 30 s; nothing here needs that
        proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_head_process(*, dashboard: bool, num_cpus: int = 2, extra_args: Sequence[str] = ()):
    """`ray start --head --block` on loopback in its own process group, every port a free one; yields
    (process, GCS port, dashboard port or None). The whole group is killed on exit. ``extra_args`` go to
    `ray start` as they are."""
    port, dash, *fixed = (free_port() for _ in range(2 + len(_RAY_FIXED_PORT_FLAGS)))
    ui = (
        ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
        if dashboard
        else ["--include-dashboard=false"]
    )
    args = [
        "--head",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        *ui,
        *(f"--{flag}={p}" for flag, p in zip(_RAY_FIXED_PORT_FLAGS, fixed, strict=True)),
        *extra_args,
    ]
    with _ray_start("rh", args, {"RAY_AUTH_MODE": _ray_auth_mode()}) as proc:
        yield proc, port, (dash if dashboard else None)


@contextlib.contextmanager
def ray_worker_process(
    gcs_address: str,
    *,
    num_cpus: int = 1,
    num_gpus: int = 0,
    resources: dict[str, float] | None = None,
    extra_args: Sequence[str] = (),
):
    """A second node for the cluster at ``gcs_address``: `ray start --address ... --block` on loopback, in its
    own process group and temp dir (its own raylet, object store and agents, every port a free one, worker
    ports chosen by the OS so they never meet the head's). Yields the process; the group is killed on exit."""
    import json

    flags = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    args = [
        f"--address={gcs_address}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        *([f"--resources={json.dumps(resources)}"] if resources else []),
        *(f"--{flag}={free_port()}" for flag in flags),
        "--min-worker-port=0",
        "--max-worker-port=0",
        *extra_args,
    ]
    with _ray_start("rw", args, {"RAY_AUTH_MODE": _ray_auth_mode()}) as proc:
        yield proc


@dataclasses.dataclass(frozen=True)
class RayTwoNodes:
    address: str  # the head's GCS, host:port
    head_id: str  # Ray node ids (hex)
    worker_id: str


# run in a fresh interpreter: waits until the cluster reports `want` live nodes, prints them as JSON
_RAY_NODES_SCRIPT = """
import json, sys, time
import ray
from cluster import ray_session
want, deadline = int(sys.argv[2]), time.time() + float(sys.argv[3])
with ray_session(sys.argv[1]):
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= want or time.time() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps([{"id": n["NodeID"], "resources": n["Resources"]} for n in alive]))
"""


@contextlib.contextmanager
def ray_two_node_cluster(*, head_cpus: int = 1, worker_cpus: int = 1, worker_gpus: int = 0, timeout_s: float = 120):
    """A two-node Ray cluster on this machine: `ray start --head` plus a second `ray start --address` with its
    own resources (and a custom resource ``second_node``), each in its own process group and temp dir.

    Yields a RayTwoNodes once both nodes are alive. At exit both groups are killed and no process of either
    node may be left (checked: the fixture fails otherwise)."""
    import socket
    import subprocess
    import sys
    import time

    small = ["--min-worker-port=0", "--max-worker-port=0", f"--object-store-memory={512 * 1024**2}"]
    pids: list[int] = []
    temp_dirs: list[str] = []
    with ray_head_process(dashboard=False, num_cpus=head_cpus, extra_args=small) as (head, port, _):
        pids.append(head.pid)
        temp_dirs += [a.split("=", 1)[1] for a in head.args if a.startswith("--temp-dir=")]
        deadline = time.time() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ray start --head did not come up") from None
                time.sleep(0.3)
        address = f"127.0.0.1:{port}"
        with ray_worker_process(
            address, num_cpus=worker_cpus, num_gpus=worker_gpus, resources={"second_node": 1}, extra_args=small[2:]
        ) as worker:
            pids.append(worker.pid)
            temp_dirs += [a.split("=", 1)[1] for a in worker.args if a.startswith("--temp-dir=")]
            out = subprocess.run(
                [sys.executable, "-c", _RAY_NODES_SCRIPT, address, "2", str(timeout_s)],
                capture_output=True,
                text=True,
                timeout=timeout_s + 60,
                check=False,
                cwd=Path(__file__).resolve().parents[1],
            )
            nodes = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout else []
            if len(nodes) != 2 or worker.poll() is not None:
                raise RuntimeError(f"the two-node cluster did not come up: {nodes} {out.stderr[-3000:]}")
            second = [n["id"] for n in nodes if "second_node" in n["resources"]]
            head_id = next(n["id"] for n in nodes if n["id"] not in second)
            yield RayTwoNodes(address=address, head_id=head_id, worker_id=second[0])
    _wait_ray_gone(pids, temp_dirs)


def _wait_ray_gone(pgids: Sequence[int], temp_dirs: Sequence[str], timeout_s: float = 30) -> None:
    """Wait until no live process is left in these process groups or names one of these temp dirs (Ray's
    workers and agents carry their node's temp dir on the command line); fail naming what is left."""
    import subprocess
    import time

    deadline = time.time() + timeout_s
    while True:
        left = []
        ps = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True, check=True)
        for line in ps.stdout.splitlines():
            pid, pgid, stat, *rest = line.split(None, 3)
            args = rest[0] if rest else ""
            if stat.startswith("Z"):
                continue
            if int(pgid) in pgids or any(d in args for d in temp_dirs):
                left.append(f"{pid} {args[:120]}")
        if not left:
            return
        if time.time() > deadline:
            raise RuntimeError(f"Ray processes left after teardown: {left}")
        time.sleep(0.5)
