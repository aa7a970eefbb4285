"""The id registry's answers (a plain class here; in a run it is one Ray actor)."""

from __future__ import annotations

import lance
import pyarrow as pa

from cluster import IdRegistry
from storage import RunStaging, StagedPart


def _claim(reg, batch, rows):
    ids = [r[0] for r in rows]
    keys = [None if r[1] is None else batch + bytes([k]) for k, r in enumerate(rows)]
    return reg.classify(batch, len(rows), ids, keys, [r[1] for r in rows])


def test_incremental_statuses_counts_and_deletions(tmp_path):
    uri = str(tmp_path / "t.lance")
    lance.write_dataset(pa.table({"id": ["a", "b", "c", "d"], "content_hash": ["ha", "hb", "hc", "hd"]}), uri)
    reg = IdRegistry(mode="incremental", table_uri=uri, read_version=1)
    rows = [("a", "ha"), ("b", "XX"), ("n", "hn"), ("a", "ha"), ("c", None)]  # c: rejected for its text
    assert _claim(reg, b"b1", rows) == ["unchanged", "changed", "new", "duplicate", None]
    assert _claim(reg, b"b1", rows) == ["unchanged", "changed", "new", "duplicate", None]  # a retry: same answers
    assert reg.counts() == {
        "read": 5,
        "new": 1,
        "changed": 1,
        "unchanged": 1,
        "staged": 0,
        "deleted": 0,
        "migrating": 0,
        "sliced": 0,
    }
    assert reg.deletions(delete_missing=True) == (["b"], ["d"])  # c was seen (rejected), so it stays
    assert reg.counts()["deleted"] == 1
    assert reg.deletions(delete_missing=False) == (["b"], [])


def test_append_refuses_ids_the_table_has_and_create_takes_all(tmp_path):
    uri = str(tmp_path / "t.lance")
    lance.write_dataset(pa.table({"id": ["a"], "content_hash": ["ha"]}), uri)
    append = IdRegistry(mode="append", table_uri=uri, read_version=1)
    assert _claim(append, b"b", [("a", "ha"), ("z", "hz")]) == ["exists", "new"]
    create = IdRegistry(mode="overwrite", table_uri=uri, read_version=1)
    assert _claim(create, b"b", [("a", "ha"), ("z", "hz")]) == ["new", "new"]
    assert create.deletions(True) == ([], [])


def test_a_resume_skips_what_the_earlier_attempt_staged(tmp_path):
    uri = str(tmp_path / "t.lance")
    lance.write_dataset(pa.table({"id": ["a", "b"], "content_hash": ["ha", "hb"]}), uri)
    RunStaging(uri, "20261101T000000Z-000000a1").add_part(StagedPart(key="k", fragments=[], ids=["b", "n1"]))
    reg = IdRegistry(mode="incremental", table_uri=uri, read_version=1, staging_uri=(uri, "20261101T000000Z-000000a1"))
    assert _claim(reg, b"b", [("a", "ha"), ("b", "XX"), ("n1", "h1"), ("n2", "h2")]) == [
        "unchanged",
        "staged",
        "staged",
        "new",
    ]
    replaced, missing = reg.deletions(True)
    assert replaced == ["b"] and missing == []  # b's old row goes: the staged one replaces it


def test_a_chunked_table_is_compared_by_document_and_loses_every_chunk(tmp_path):
    uri = str(tmp_path / "t.lance")
    table = {
        "id": ["a#0", "a#1", "b#0", "b#1", "b#2", "c#0", "d#0"],
        "doc_id": ["a", "a", "b", "b", "b", "c", "d"],
        "content_hash": ["ha", "ha", "hb", "hb", "hb", "hc", "hd"],
    }
    lance.write_dataset(pa.table(table), uri)
    reg = IdRegistry(mode="incremental", table_uri=uri, read_version=1)
    assert _claim(reg, b"b1", [("a", "ha"), ("b", "XX"), ("n", "hn"), ("d", None)]) == [
        "unchanged",
        "changed",
        "new",
        None,
    ]
    replaced, missing = reg.deletions(delete_missing=True)
    assert replaced == ["b#0", "b#1", "b#2"] and missing == ["c#0"]  # every chunk of b and c
    assert reg.counts()["deleted"] == 1  # one document


def test_a_resume_knows_which_chunks_of_a_document_are_staged(tmp_path):
    uri = str(tmp_path / "t.lance")
    run = "20261101T000000Z-000000c1"
    part = StagedPart(key="k", fragments=[], ids=["x#0", "x#2", "y#0", "7#1"], doc_ids=["x", "x", "y", 7])
    RunStaging(uri, run).add_part(part)
    reg = IdRegistry(mode="create", staging_uri=(uri, run))
    assert _claim(reg, b"b", [("x", "hx"), ("y", "hy"), (7, "h7"), ("z", "hz")]) == ["staged"] * 3 + ["new"]
    assert reg.staged_chunks(["x", "y", 7, "z"]) == {"x": [0, 2], "y": [0], 7: [1], "z": []}
