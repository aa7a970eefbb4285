"""The table lock, the staging folder, and the incremental commit, on real local Lance tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import lance
import pyarrow as pa
import pytest

from storage import (
    METADATA_KEY,
    RunStaging,
    StagedPart,
    StagingRecord,
    TableLock,
    TableLocked,
    TableMovedError,
    commit_changes,
    read_hashes,
    staged_runs,
    write_fragments,
)

from .test_lance_io import _prov


def test_lock_refuses_a_live_holder_and_names_it(tmp_path):
    uri = str(tmp_path / "t.lance")
    first = TableLock(uri, run_id="run-a")
    first.acquire()
    try:
        second = TableLock(uri, run_id="run-b")
        with pytest.raises(TableLocked, match=rf"being written by run run-a \(host .*, pid {os.getpid()}, since"):
            second.acquire()
        t0 = time.monotonic()
        with pytest.raises(TableLocked):
            second.acquire(wait_s=0.6, poll_s=0.2)
        assert time.monotonic() - t0 >= 0.6
        first.check()  # still ours
    finally:
        first.release()
    second.acquire()  # free now
    assert second.holder()["run_id"] == "run-b"
    second.release()
    assert second.holder() is None


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    uri = str(tmp_path / "t.lance")
    code = (
        "import sys; from storage import TableLock; "
        f"TableLock({uri!r}, run_id='doomed').acquire(); print('held', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    try:
        assert proc.stdout.readline().strip() == b"held"
        with pytest.raises(TableLocked, match="run doomed"):
            TableLock(uri, run_id="next").acquire()
    finally:
        proc.kill()
        proc.wait()
    lock = TableLock(uri, run_id="next")
    lock.acquire()  # its owner is gone: no need to wait for the lease
    assert lock.holder()["run_id"] == "next"
    lock.release()


def test_lock_with_an_expired_lease_is_taken_over_and_the_loser_notices(tmp_path, monkeypatch):
    uri = str(tmp_path / "t.lance")
    monkeypatch.setenv("EMBEDJOB_LOCK_LEASE_S", "0.3")
    stale = TableLock(uri, run_id="stale")
    stale.acquire()
    stale._stop.set()  # its heartbeat stops, as when a process hangs
    stale._thread.join()
    record = json.loads(open(stale.uri).read())
    record["host"] = "another-host"  # not this host: only the lease can free it
    open(stale.uri, "w").write(json.dumps(record))
    time.sleep(0.4)
    fresh = TableLock(uri, run_id="fresh")
    fresh.acquire()
    with pytest.raises(TableLocked, match="run fresh"):
        stale.check()  # the old holder must not commit now
    fresh.release()


def test_staging_parts_are_durable_and_idempotent(tmp_path):
    uri = str(tmp_path / "t.lance")
    staging = RunStaging(uri, "20261123T000000Z-aaaaaaaa")
    staging.write_record(StagingRecord(run_id=staging.run_id, status="running", read_version=3))
    staging.add_part(StagedPart(key="k1", fragments=["f1"], ids=["a", "b"], tokens=7))
    staging.add_part(StagedPart(key="k1", fragments=["f1b"], ids=["a", "b"], tokens=7))  # a retried task
    staging.add_part(StagedPart(key="k2", fragments=["f2"], ids=[3], reasons={"null text": 1}, rejected=1))
    again = RunStaging(uri, "20261123T000000Z-aaaaaaaa")
    parts = sorted(again.parts(), key=lambda p: p.key)
    assert [(p.key, p.fragments, p.ids) for p in parts] == [("k1", ["f1b"], ["a", "b"]), ("k2", ["f2"], [3])]
    assert again.update_record(status="failed").read_version == 3
    assert [s.run_id for s in staged_runs(uri)] == ["20261123T000000Z-aaaaaaaa"]
    again.remove()
    assert staged_runs(uri) == []


def _table(uri, ids, hashes):
    """A small Lance table carrying an embedjob provenance (what gc looks for)."""
    table = pa.table({"id": ids, "content_hash": hashes, "v": list(range(len(ids)))})
    table = table.replace_schema_metadata({METADATA_KEY: _prov().to_json()})
    return lance.write_dataset(table, uri, max_rows_per_file=3)


def test_commit_changes_adds_and_deletes_in_one_version(tmp_path):
    uri = str(tmp_path / "t.lance")
    ds = _table(uri, ["a", "b", "c", "d", "e", "it's"], ["h"] * 6)
    schema = ds.schema
    new = write_fragments(pa.table({"id": ["b", "z"], "content_hash": ["h2", "h"], "v": [10, 11]}), uri, schema)
    version = commit_changes(uri, new_fragments=new, delete_ids=["b", "d", "e", "it's"], read_version=1)
    assert version == 2
    rows = sorted(lance.dataset(uri).to_table().to_pylist(), key=lambda r: r["id"])
    assert [(r["id"], r["v"]) for r in rows] == [("a", 0), ("b", 10), ("c", 2), ("z", 11)]
    assert read_hashes(uri, 2).num_rows == 4
    assert lance.dataset(uri, version=1).count_rows() == 6
    assert commit_changes(uri, new_fragments=[], delete_ids=[], read_version=2) is None  # nothing: no version
    with pytest.raises(TableMovedError, match="is at version 2, but this run planned against version 1"):
        commit_changes(uri, new_fragments=[], delete_ids=["a"], read_version=1)


def test_commit_changes_with_integer_ids(tmp_path):
    uri = str(tmp_path / "t.lance")
    lance.write_dataset(pa.table({"id": [1, 2, 3], "content_hash": ["h"] * 3}), uri)
    assert commit_changes(uri, new_fragments=[], delete_ids=[2], read_version=1) == 2
    assert sorted(lance.dataset(uri).to_table()["id"].to_pylist()) == [1, 3]


def test_gc_removes_abandoned_staging_orphan_files_and_old_versions(tmp_path):
    from datetime import timedelta

    from storage import collect_garbage, staging_dir

    uri = str(tmp_path / "t.lance")
    ds = _table(uri, ["a", "b", "c"], ["h"] * 3)
    lance.write_dataset(pa.table({"id": ["d"], "content_hash": ["h"], "v": [3]}), uri, mode="append")  # v2
    # a run that planned against version 1 and died: the table moved on, so it can't be resumed
    dead = RunStaging(uri, "20261101T000000Z-0000dead")
    orphan = write_fragments(pa.table({"id": ["x"], "content_hash": ["h"], "v": [9]}), uri, ds.schema)
    dead.write_record(
        StagingRecord(run_id=dead.run_id, status="running", read_version=1, started_at="2026-11-01T00:00:00+00:00")
    )
    dead.add_part(StagedPart(key="k", fragments=orphan, ids=["x"]))
    # a run against the current version that can still be resumed
    live = RunStaging(uri, "20261123T000000Z-00001111")
    live.write_record(
        StagingRecord(run_id=live.run_id, status="failed", read_version=2, started_at="2099-01-01T00:00:00+00:00")
    )
    files_before = len(list((tmp_path / "t.lance" / "data").iterdir()))

    report = collect_garbage(uri, older_than=timedelta(days=1))
    assert report.staging_removed == ["20261101T000000Z-0000dead"] and report.staging_kept == [
        "20261123T000000Z-00001111"
    ]
    assert len(list((tmp_path / "t.lance" / "data").iterdir())) == files_before  # a kept run: files stay

    live.remove()
    report = collect_garbage(uri, older_than=timedelta(0))
    assert report.versions_removed["table"] == 1  # version 1 (the newest always stays)
    assert len(list((tmp_path / "t.lance" / "data").iterdir())) == files_before - 1  # the orphan fragment
    assert [v["version"] for v in lance.dataset(uri).versions()] == [2]
    assert lance.dataset(uri).count_rows() == 4
    assert staged_runs(uri) == [] and not (tmp_path / "t_staging" / "LOCK.json").exists()
    assert staging_dir(uri) == str(tmp_path / "t_staging")


def test_append_rows_grows_an_older_tables_columns(tmp_path):
    from storage import append_rows

    uri = str(tmp_path / "runs.lance")
    lance.write_dataset(pa.table({"run_id": ["old"], "rows": [1]}), uri)  # as an older embedjob wrote it
    append_rows(uri, pa.table({"run_id": ["new"], "rows": [2], "rows_deleted": [5]}))
    rows = sorted(lance.dataset(uri).to_table().to_pylist(), key=lambda r: r["run_id"])
    assert rows == [{"run_id": "new", "rows": 2, "rows_deleted": 5}, {"run_id": "old", "rows": 1, "rows_deleted": None}]
