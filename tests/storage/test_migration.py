"""A staged migration's state in a real Lance table, without Ray: begin, fill, switch, abort; the one-commit
paths and the ones a table with a dropped column needs; abort and status as the CLI and inspect use them."""

from __future__ import annotations

import dataclasses

import lance
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from bench.corpora import passages
from jobs import abort_migration_of, migration_status
from jobs.cli import app
from storage import (
    MigrationError,
    MigrationState,
    abort_migration,
    begin_migration,
    commit_changes,
    migrated_rows,
    open_table,
    read_migration,
    read_provenance,
    switch_migration,
    unmigrated_keys,
    vector_array,
    write_fragments,
)

from ..jobfiles import write_embedded_table

NEW = ("l4_d32",)


def _table(tmp_path, model, n=12, *, gap=False):
    uri = str(tmp_path / "t.lance")
    write_embedded_table(uri, model, passages(n, words=20))
    if gap:  # a column dropped once (not the last): field ids no longer 0..n-1
        lance.dataset(uri).add_columns({"extra": "'x'"})
        lance.dataset(uri).add_columns({"note": "'y'"})
        lance.dataset(uri).drop_columns(["extra"])
    return uri


def _state(uri, **kw):
    old = read_provenance(uri)
    to = dataclasses.replace(old, weights_fingerprint="other", granularities=NEW, vector_dtype="float16")
    return MigrationState(to=to, started_by="r1", started_at="2026-12-06T00:00:00+00:00", rows_at_start=12, **kw)


def _fill(uri, ids, value=1.0):
    """Rewrite rows ``ids`` with new vectors, as a migration step's commit does (delete + add)."""
    ds = lance.dataset(uri)
    rows = ds.to_table(filter=f"id IN ({', '.join(repr(i) for i in ids)})")
    col = f"next_vec_{NEW[0]}"
    vecs = vector_array(np.full((rows.num_rows, 32), value, np.float32), "float16")
    rows = rows.set_column(rows.schema.get_field_index(col), col, vecs)
    frags = write_fragments(rows, uri, ds.schema)
    return commit_changes(uri, new_fragments=frags, delete_ids=ids, read_version=ds.version)


@pytest.mark.parametrize("gap", [False, True], ids=["one-commit", "dropped-column"])
def test_begin_fill_switch(tmp_path, tiny_bert_dir, gap):
    uri = _table(tmp_path, tiny_bert_dir, gap=gap)
    before = lance.dataset(uri)
    old_vectors = before.to_table(columns=["id", "vec_l4_d64"]).sort_by("id")
    state = _state(uri)
    v1 = begin_migration(uri, state, read_version=before.version)
    assert v1 == before.version + (2 if gap else 1)  # the record lands with the columns, or right after them
    assert read_migration(uri) == state and read_provenance(uri) == read_provenance(uri)
    assert migrated_rows(uri, v1, state) == (0, 12)
    ids = sorted(unmigrated_keys(uri, v1, state))
    with pytest.raises(MigrationError, match="migrating already"):
        begin_migration(uri, state, read_version=v1)
    v2 = _fill(uri, ids[:5])
    assert migrated_rows(uri, v2, state) == (5, 12) and sorted(unmigrated_keys(uri, v2, state)) == ids[5:]
    with pytest.raises(MigrationError, match="7 of 12 rows have no new vectors"):
        switch_migration(uri, read_version=v2)
    v3 = _fill(uri, ids[5:], 2.0)
    v4 = switch_migration(uri, read_version=v3)
    ds = lance.dataset(uri)
    assert ds.version == v4 and read_migration(uri) is None and read_provenance(uri) == state.to
    assert [n for n in ds.schema.names if "vec_" in n] == [f"vec_{NEW[0]}"]
    data = ds.to_table(columns=["id", "text", f"vec_{NEW[0]}"]).sort_by("id")
    assert data.column("id").to_pylist() == ids and None not in data.column("text").to_pylist()
    assert ds.schema.field(f"vec_{NEW[0]}").type == pa.list_(pa.field("item", pa.float16()), 32)
    # the old vectors are still in the versions before the switch
    assert lance.dataset(uri, version=v1).to_table(columns=["id", "vec_l4_d64"]).sort_by("id").equals(old_vectors)


def test_switch_keeps_the_old_columns_when_asked(tmp_path, tiny_bert_dir):
    uri = _table(tmp_path, tiny_bert_dir, n=4)
    state = _state(uri, keep_old=True)
    v = begin_migration(uri, state, read_version=lance.dataset(uri).version)
    v = _fill(uri, sorted(unmigrated_keys(uri, v, state)))
    switch_migration(uri, read_version=v)
    names = lance.dataset(uri).schema.names
    assert {"prev_vec_l2_d16", "prev_vec_l4_d64", "vec_l4_d32"} <= set(names)
    assert open_table(uri).granularities[0].dim == 32  # the table's columns are the new ones


@pytest.mark.parametrize("gap", [False, True], ids=["one-commit", "dropped-column"])
def test_abort_undoes_it_and_leaves_every_row(tmp_path, tiny_bert_dir, gap):
    uri = _table(tmp_path, tiny_bert_dir, gap=gap)
    before = lance.dataset(uri).to_table().sort_by("id")
    state = _state(uri)
    v = begin_migration(uri, state, read_version=lance.dataset(uri).version)
    v = _fill(uri, sorted(unmigrated_keys(uri, v, state))[:3])
    v_abort = abort_migration(uri, read_version=v)
    ds = lance.dataset(uri)
    assert ds.version == v_abort and read_migration(uri) is None
    after = ds.to_table().sort_by("id")
    assert after.schema.names == before.schema.names
    for col in ("id", "text", "vec_l2_d16", "vec_l4_d64"):
        assert after.column(col).equals(before.column(col))
    with pytest.raises(MigrationError, match="no migration to abort"):
        abort_migration(uri, read_version=v_abort)


def test_status_and_the_abort_command(tmp_path, tiny_bert_dir):
    uri = _table(tmp_path, tiny_bert_dir)
    assert migration_status(uri) is None
    state = _state(uri)
    v = begin_migration(uri, state, read_version=lance.dataset(uri).version)
    _fill(uri, sorted(unmigrated_keys(uri, v, state))[:4])
    hits = open_table(uri).search(passages(12, words=20)[3], k=2)  # searchable as it was, no next_vec_* shown
    assert hits.column("id").to_pylist()[0] == "t3" and not any("vec_" in n for n in hits.column_names)
    status = migration_status(uri)
    assert (status.done, status.total, status.steps, status.nights_left) == (4, 12, 0, None)
    assert "weights_fingerprint" in status.changes and "granularities" in status.changes
    shown = CliRunner().invoke(app, ["inspect", uri])
    assert shown.exit_code == 0, shown.output
    assert "4 of 12 rows (33%); no step committed yet" in " ".join(shown.output.split())
    result = CliRunner().invoke(app, ["migrate", "abort", uri])
    assert result.exit_code == 0, result.output
    assert read_migration(uri) is None
    (row,) = [r for r in open_table(uri).runs() if r["mode"] == "migrate abort"]
    assert row["status"] == "committed" and row["table_version"] == lance.dataset(uri).version
    again = CliRunner().invoke(app, ["migrate", "abort", uri])
    assert again.exit_code == 2 and "no migration in progress" in again.output
    report = None
    with pytest.raises(MigrationError):
        report = abort_migration_of(uri)
    assert report is None


def test_a_backfill_is_refused_while_the_table_migrates(tmp_path, tiny_bert_dir):
    import pyarrow.parquet as pq

    from jobs import JobSpecError, backfill_job

    from ..jobfiles import write_job

    uri = _table(tmp_path, tiny_bert_dir, n=4)
    begin_migration(uri, _state(uri), read_version=lance.dataset(uri).version)
    corpus = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(4)], "text": passages(4, words=20)}), corpus)
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d16", "l4_d64", "l3_d32"],
        input={"uri": str(corpus)},
        model={"path": str(tiny_bert_dir)},
        output={"uri": uri},
    )
    with pytest.raises(JobSpecError, match="is migrating to other settings"):
        backfill_job(job, ["l3_d32"], progress=False)


def test_gc_keeps_the_calibration_a_migration_moves_to(tmp_path, tiny_bert_dir):
    from storage._gc import _calibrations_in_use

    uri = _table(tmp_path, tiny_bert_dir, n=4)
    state = _state(uri)
    state = dataclasses.replace(state, to=dataclasses.replace(state.to, calibration="c0ffee"))
    assert "c0ffee" not in _calibrations_in_use(uri, None)
    begin_migration(uri, state, read_version=lance.dataset(uri).version)
    assert "c0ffee" in _calibrations_in_use(uri, None)
