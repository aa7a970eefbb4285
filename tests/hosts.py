"""Another host, on this machine: a process in its own UTS namespace, under its own host name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_TAKE = (
    "import json, sys; from storage import TableLock\n"
    "l = TableLock(sys.argv[1], run_id='taker', storage_options=json.loads(sys.argv[2]) or None)\n"
    "l.acquire(); print('taken', flush=True)\n"
)


def take_lock_from_another_host(uri: str, storage_options: dict | None = None, host: str = "another-host") -> str:
    """Acquire ``uri``'s table lock as run "taker" from a process named ``host`` (so a holder's pid on this host
    does not count, only its lease), and leave it held (the process exits without releasing; its 60 s lease
    keeps it). Returns "taken", or what went wrong. Skips the test where no UTS namespace can be made."""
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a UTS namespace here (another host name): {probe.stderr.decode().strip()}")
    out = subprocess.run(
        [
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname {host} && exec "$0" -c "$1" "$2" "$3"',
            sys.executable,
            _TAKE,
            uri,
            json.dumps(storage_options),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "EMBEDJOB_LOCK_LEASE_S": "60"},
        check=False,
    )
    return out.stdout.strip() or out.stderr[-2000:]
