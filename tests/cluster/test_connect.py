from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster import ClusterError, probe_address


def test_an_address_nobody_listens_on_fails_fast_with_a_hint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ClusterError) as info:
        probe_address(f"127.0.0.1:{port}", timeout=2.0)
    assert time.perf_counter() - t0 < 5
    assert f"cannot reach a Ray cluster at '127.0.0.1:{port}'" in str(info.value)
    assert "ray start --head" in str(info.value)


def test_probe_accepts_a_listening_port_and_skips_non_tcp_forms():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        # a listening port passes (a closed one raises ClusterError, as above)
        assert probe_address(f"127.0.0.1:{s.getsockname()[1]}", timeout=2.0) is None
        assert probe_address(f"ray://127.0.0.1:{s.getsockname()[1]}", timeout=2.0) is None
    assert probe_address("auto", timeout=0.1) is None  # nothing to probe: Ray resolves it


# ----------------------------------------------------------------- exposure

_EMBEDDED = """
import sys
from cluster import ray_session
with ray_session():
    print("up", flush=True)
    sys.stdin.readline()
"""


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _listening(pids: set[int]) -> list[tuple[int, str, str]]:
    """(pid, command, local address) of every TCP socket in LISTEN state the processes hold, from /proc."""
    listen: dict[str, str] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listen[fields[9]] = _address(fields[1], v6)
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            argv0 = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
            command = os.path.basename(argv0.strip())  # the program, whatever the checkout's path length
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listen:
                out.append((pid, command, listen[target[8:-1]]))
    return out


def _address(hex_addr: str, v6: bool) -> str:
    ip_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(ip_hex)
    # /proc stores each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = str(ipaddress.IPv6Address(words) if v6 else ipaddress.IPv4Address(words))
    return f"{ip}:{int(port_hex, 16)}"


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rpartition(":")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_the_embedded_local_ray_listens_on_loopback_only():
    """Every TCP listener of every process the embedded Ray starts (GCS, raylet, agents, workers) is on
    127.0.0.1, read from the process table while it runs."""
    ray_tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # Ray's unix sockets need a short path
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMBEDDED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == b"up"
        time.sleep(3)  # the agents start their servers a moment after ray.init returns
        sockets = _listening(_descendants(proc.pid))
        commands = " ".join(c for _, c, _ in sockets)
        assert "gcs_server" in commands and "raylet" in commands, sockets  # the check sees Ray's servers
        exposed = [s for s in sockets if not _is_loopback(s[2])]
        assert exposed == [], exposed
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)  # anything of that Ray still left
        shutil.rmtree(ray_tmp, ignore_errors=True)


_PRELOADED = """
import os, sys
import ray
from cluster import ray_session

@ray.remote(num_cpus=0)
def preloaded():
    return sorted(m for m in ("cluster._stages", "torch", "transformers", "ray.data") if m in sys.modules)

with ray_session() as started:
    print(started, ray.get(preloaded.remote()), os.environ.get("RAY_preload_python_modules"), flush=True)
"""


def test_the_embedded_local_rays_workers_come_with_the_runs_imports_but_not_torch():
    """A worker of the embedded Ray has imported what every worker of a run needs before it takes work, and
    not torch or transformers (which only the encoder actor needs), and the setting that asked for it is not
    left in the driver's environment."""
    ray_tmp = tempfile.mkdtemp(prefix="rp", dir="/tmp")  # Ray's unix sockets need a short path
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    for name in ("RAY_ADDRESS", "RAY_preload_python_modules"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PRELOADED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and the Ray it started (its own process group)
        out, err = proc.communicate()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "True ['cluster._stages', 'ray.data'] None"
