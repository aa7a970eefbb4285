"""The table lock under real races and real store faults: two processes, a local file and a real S3 server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import LockLost, LockStoreWarning, TableLock, TableLocked

from ..hosts import take_lock_from_another_host
from ..s3proxy import S3FaultProxy

# A contender: for each "go ROUND START_AT" line, wait until START_AT and try the lock once; print
# "won ROUND" or "lost ROUND"; a winner holds it until the next "release" line.
_CONTENDER = r"""
import json, sys, time
from storage import TableLock, TableLocked
uri, name, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) or None
print("ready", flush=True)
held = None
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "go":
        round_, start_at = args[0], float(args[1])
        while time.time() < start_at:
            pass
        lock = TableLock(uri, run_id=f"{name}-{round_}", storage_options=opts)
        try:
            lock.acquire()
        except TableLocked:
            print("lost", round_, flush=True)
        else:
            held = lock
            print("won", round_, flush=True)
    elif cmd == "release":
        if held is not None:
            held.release()
            held = None
        print("released", flush=True)
"""

ROUNDS = 50
#: real collisions the S3 race waits for (each one a double win without the conditional write)
COLLISIONS = 10


def _race(uri: str, options: dict[str, dict | None], plant_stale=None, rounds: int = ROUNDS, enough=None) -> list[str]:
    """Contender processes "a" and "b" (with their own storage options) race for the lock ``rounds`` times, or
    until ``enough()`` says the rounds so far suffice; before each round ``plant_stale()`` may leave a crashed
    run's lock to take over. Returns each round's winners."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, uri, name, json.dumps(options[name])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for name in ("a", "b")
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        winners = []
        for r in range(rounds):
            if plant_stale is not None:
                plant_stale()
            start_at = time.time() + 0.08
            for p in procs:
                p.stdin.write(f"go {r} {start_at}\n")
                p.stdin.flush()
            answers = [p.stdout.readline().split() for p in procs]
            assert all(a and a[1] == str(r) for a in answers), answers
            winners.append("".join(name for name, a in zip("ab", answers, strict=True) if a[0] == "won"))
            for p in procs:
                p.stdin.write("release\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout.readline().strip() == "released"
            if enough is not None and enough():
                break
        return winners
    finally:
        for p in procs:
            p.kill()
            p.wait()


_STALE = json.dumps({"run_id": "crashed", "host": "elsewhere", "pid": 1, "lease_until": 0}).encode()


@pytest.mark.parametrize("takeover", [False, True], ids=["free", "stale"])
def test_two_processes_racing_for_a_local_lock_never_both_win(tmp_path, takeover):
    """Both contenders find the table free, or both find a crashed run's lock and take it over at once."""
    lock_file = tmp_path / "t_staging" / "LOCK.json"

    def plant() -> None:
        lock_file.parent.mkdir(exist_ok=True)
        lock_file.write_bytes(_STALE)

    winners = _race(str(tmp_path / "t.lance"), {"a": None, "b": None}, plant if takeover else None)
    assert all(len(w) == 1 for w in winners), winners  # exactly one winner each round
    assert not lock_file.exists()


def test_two_processes_racing_for_an_s3_lock_never_both_win(s3_env):
    """On S3, through the real server: "b" reaches it over a slow link (its writes land 0.6 s after its
    read), so only a conditional write keeps it from overwriting the lock "a" just took."""
    s3_env["client"].create_bucket(Bucket="race")
    with S3FaultProxy(s3_env["endpoint"]) as slow:
        slow.delay("t_staging/LOCK.json", 0.6, methods=("PUT",))
        options = {"a": _opts(s3_env["endpoint"]), "b": _opts(slow.endpoint)}

        def refused() -> int:
            """Rounds that were real collisions: "b" found the lock free, wrote, and the store refused it."""
            return sum(1 for m, p, s in slow.log if m == "PUT" and p.endswith("/t_staging/LOCK.json") and s == 412)

        # each collision costs "b"'s 0.6 s: race until COLLISIONS of them (about 2 rounds in 3), not ROUNDS
        winners = _race("s3://race/db/t.lance", options, enough=lambda: refused() >= COLLISIONS)
    assert all(len(w) == 1 for w in winners), winners  # (without If-None-Match both win: "b" overwrites)
    assert refused() >= COLLISIONS, slow.log
    keys = [o["Key"] for o in s3_env["client"].list_objects_v2(Bucket="race").get("Contents", [])]
    assert "db/t_staging/LOCK.json" not in keys  # every winner released it


def test_a_store_that_ignores_conditional_writes_gets_a_loud_warning(s3_env, caplog):
    s3_env["client"].create_bucket(Bucket="nocas")
    with S3FaultProxy(s3_env["endpoint"]) as proxy:
        proxy.strip_conditionals = True  # the store accepts If-None-Match and ignores it
        lock = TableLock("s3://nocas/t.lance", run_id="r1", storage_options=_opts(proxy.endpoint))
        with caplog.at_level(logging.WARNING, logger="storage"), pytest.warns(LockStoreWarning):
            lock.acquire()
        try:
            assert "ignores conditional writes" in caplog.text and "nocas" in caplog.text
            assert lock.holder()["run_id"] == "r1"  # it still works, as write-and-read-back
            with pytest.raises(TableLocked, match="run r1"):
                TableLock("s3://nocas/t.lance", run_id="r2", storage_options=_opts(proxy.endpoint)).acquire()
        finally:
            lock.release()


def test_the_heartbeat_rides_out_transient_store_failures(s3_env, monkeypatch, caplog):
    """503s on the lock object for longer than one renewal interval, shorter than the lease: kept."""
    monkeypatch.setenv("EMBEDJOB_LOCK_LEASE_S", "6")
    s3_env["client"].create_bucket(Bucket="beat")
    with S3FaultProxy(s3_env["endpoint"]) as proxy:
        opts = _opts(proxy.endpoint)
        lock = TableLock("s3://beat/t.lance", run_id="steady", storage_options=opts)
        lock.acquire()
        try:
            with caplog.at_level(logging.WARNING, logger="storage"):
                rule = proxy.fail("t_staging/LOCK.json", seconds=3.5)  # reads and writes of the lock fail
                time.sleep(5.5)
            assert rule.hits >= 2, rule.hits  # the heartbeat did try, and failed, more than once
            assert "could not renew the lock" in caplog.text and "retrying" in caplog.text
            assert not lock.lost
            lock.check()  # still ours: renewed after the outage
            assert lock.holder()["lease_until"] > time.time() + 4
            # another run (from another host, so only the lease counts) still finds it held
            with pytest.raises(TableLocked, match="run steady"):
                TableLock("s3://beat/t.lance", run_id="other", storage_options=opts).acquire()
        finally:
            lock.release()


def test_a_lapsed_lease_is_noticed_logged_and_the_run_cannot_commit(s3_env, monkeypatch, caplog, tmp_path):
    """The store is gone for longer than the lease; another host takes the table; the first run's check fails."""
    monkeypatch.setenv("EMBEDJOB_LOCK_LEASE_S", "3")
    s3_env["client"].create_bucket(Bucket="lapse")
    uri = "s3://lapse/t.lance"
    with S3FaultProxy(s3_env["endpoint"]) as proxy:
        opts = _opts(proxy.endpoint)
        lock = TableLock(uri, run_id="slow", storage_options=opts)
        lock.acquire()
        try:
            with caplog.at_level(logging.WARNING, logger="storage"):
                proxy.fail("t_staging/LOCK.json")  # until cleared
                deadline = time.time() + 15
                while not lock.lost and time.time() < deadline:
                    time.sleep(0.1)
                assert lock.lost and time.time() > lock._lease_until  # noticed once the lease really ran out
                assert "ran out" in caplog.text and "while the store could not be reached" in caplog.text
                # the taker goes to the store directly, as a run on another host would
                taker = take_lock_from_another_host(uri, _opts(s3_env["endpoint"]))
                proxy.clear()
                time.sleep(1.5)
            assert taker == "taken"
            with pytest.raises(
                LockLost, match=r"run slow no longer holds the lock .*\(run taker \(host another-host, .*took it over"
            ):
                lock.check()
        finally:
            lock.release()
        assert TableLock(uri, run_id="x", storage_options=opts).holder()["run_id"] == "taker"  # release left it


def test_a_live_process_on_this_host_keeps_its_lock_when_its_heartbeat_stalls(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDJOB_LOCK_LEASE_S", "0.5")
    uri = str(tmp_path / "t.lance")
    mine = TableLock(uri, run_id="mine")
    mine.acquire()
    mine._stop.set()  # the heartbeat stops, as in a process stalled in a long call
    mine._thread.join()
    time.sleep(0.8)
    assert mine.holder()["lease_until"] < time.time()  # the lease ran out...
    with pytest.raises(TableLocked, match="run mine"):
        TableLock(uri, run_id="next").acquire()  # ...but its owner lives here
    mine.check()  # and it can still renew and commit
    mine.release()


def test_a_reader_never_sees_a_half_written_local_lock(tmp_path):
    """The lock file is linked into place complete: a reader polling as fast as it can never sees it empty."""
    uri = str(tmp_path / "t.lance")
    path = Path(TableLock(uri, run_id="x").uri)
    code = (
        "import sys; from storage import TableLock\n"
        f"for i in range(200):\n    l = TableLock({uri!r}, run_id=f'w{{i}}'); l.acquire(); l.release()\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    seen, partial = 0, []
    while writer.poll() is None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        seen += 1
        try:
            assert json.loads(data)["run_id"].startswith("w")
        except (ValueError, KeyError, AssertionError):
            partial.append(data)
    assert writer.returncode == 0
    assert seen > 0 and partial == [], (seen, partial[:3])


def _opts(endpoint: str) -> dict[str, str]:
    return {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_endpoint": endpoint,
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
