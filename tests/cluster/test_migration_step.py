"""A migration step's parts without Ray: the registry's slice of old rows (by count, by time, resumed) and
where their old vectors are; the encoder actor reading those vectors back instead of embedding them again."""

from __future__ import annotations

import dataclasses

import lance
import numpy as np
import pyarrow as pa
import pytest

from bench.corpora import passages
from cluster import IdRegistry, NextEncoder
from cluster._pool import PoolPlan
from cluster._stages import REASON, ROWADDR, EncodeActor
from embedder import EncoderConfig, Granularity
from storage import (
    MigrationState,
    RunStaging,
    StagedPart,
    begin_migration,
    commit_changes,
    content_hash,
    read_provenance,
    vector_array,
    write_fragments,
)

from ..jobfiles import write_embedded_table

RUN = "20261206T000000Z-000000a1"


@pytest.fixture
def migrating(tmp_path, tiny_bert_dir):
    """A 10-row table (t0..t9) with a migration begun: no row has new vectors yet."""
    uri = str(tmp_path / "t.lance")
    texts = passages(10, words=20)
    write_embedded_table(uri, tiny_bert_dir, texts)
    old = read_provenance(uri)
    state = MigrationState(
        to=dataclasses.replace(old, weights_fingerprint="new", granularities=("l4_d32",)),
        started_by=RUN,
        started_at="2026-12-06T00:00:00+00:00",
        rows_at_start=10,
    )
    version = begin_migration(uri, state, read_version=lance.dataset(uri).version)
    return uri, version, texts


def _claim(reg, texts, ids, batch=b"b"):
    keys = [batch + bytes([k]) for k in range(len(ids))]
    return reg.classify(batch, len(ids), ids, keys, [content_hash(texts[int(i[1:])]) for i in ids])


def test_the_slice_takes_at_most_its_rows_and_knows_where_they_are(migrating):
    uri, version, texts = migrating
    reg = IdRegistry(mode="migrate", table_uri=uri, read_version=version, slice_rows=4)
    ids = [f"t{i}" for i in range(10)]
    statuses = _claim(reg, texts, ids)
    assert statuses == ["migrating"] * 4 + ["unchanged"] * 6
    assert reg.counts()["sliced"] == 4 and reg.counts()["migrating"] == 4
    assert reg.deletions(True) == (ids[:4], [])  # their old rows are replaced
    addresses = reg.addresses(["t0", "t5", "nope"])
    assert addresses[1:] == [None, None] and addresses[0] is not None
    got = lance.dataset(uri, version=version)._take_rows([addresses[0]], columns=["id"])
    assert got.column("id").to_pylist() == ["t0"]


def test_a_spent_budget_takes_nothing_and_a_resume_counts_what_it_staged(migrating):
    uri, version, texts = migrating
    ids = [f"t{i}" for i in range(10)]
    spent = IdRegistry(mode="migrate", table_uri=uri, read_version=version, slice_s=0.0)
    assert _claim(spent, texts, ids) == ["unchanged"] * 10
    RunStaging(uri, RUN).add_part(StagedPart(key="k", fragments=[], ids=["t7", "t8"]))
    resumed = IdRegistry(mode="migrate", table_uri=uri, read_version=version, staging_uri=(uri, RUN), slice_rows=4)
    statuses = _claim(resumed, texts, ids)
    assert statuses.count("migrating") == 2 and statuses[7:9] == ["staged", "staged"]
    assert resumed.counts()["sliced"] == 4


def test_the_actor_reads_old_vectors_back_for_the_old_rows_a_step_takes(migrating, tiny_bert_dir):
    """A marker in the stored old vectors survives the step: they were read back, not embedded again; the
    rows without an address are embedded (the same vectors the table holds for them)."""
    uri, version, texts = migrating
    # the marker: t0 and t1's stored old vectors are not what the model makes of their text
    ds = lance.dataset(uri, version=version)
    marked = ds.to_table(filter="id IN ('t0', 't1')")
    for col, dim in (("vec_l2_d16", 16), ("vec_l4_d64", 64)):
        marker = vector_array(np.full((2, dim), 0.125, np.float32), "float32")
        marked = marked.set_column(marked.schema.get_field_index(col), col, marker)
    frags = write_fragments(marked, uri, ds.schema)
    version = commit_changes(uri, new_fragments=frags, delete_ids=["t0", "t1"], read_version=version)
    table = lance.dataset(uri, version=version).to_table(columns=["id", "vec_l4_d64"], with_row_address=True)
    table = table.sort_by("id")
    pool = PoolPlan(actors=1, num_cpus=1, num_gpus=0, torch_threads=1)
    grans = (Granularity.parse("l2_d16"), Granularity.parse("l4_d64"))
    actor = EncodeActor(
        model_path=str(tiny_bert_dir),
        config=EncoderConfig(granularities=grans),
        pool=pool,
        vector_dtype="float32",
        run_id=RUN,
        next_encoder=NextEncoder(
            model_path=str(tiny_bert_dir),
            encoder=EncoderConfig(granularities=(Granularity.parse("l4_d32"),)),
            table_uri=uri,
            read_version=version,
        ),
    )
    # the table's rows t0..t3, the first two with their address (old rows the step takes)
    addresses = table.column("_rowaddr").to_pylist()
    batch = pa.table(
        {
            "id": ["t0", "t1", "t2", "t3"],
            "text": texts[:4],
            "content_hash": [content_hash(t) for t in texts[:4]],
            REASON: pa.array([None] * 4, pa.string()),
            ROWADDR: pa.array([addresses[0], addresses[1], None, None], pa.int64()),
        }
    )
    out = actor(batch)
    stored = np.asarray(table.column("vec_l4_d64").to_pylist()[:4], dtype=np.float32)
    got = np.asarray(out.column("vec_l4_d64").to_pylist(), dtype=np.float32)
    assert np.all(got[:2] == 0.125)  # read back: the marker
    assert np.allclose(got[2:], stored[2:], atol=1e-5)  # embedded again: the same model
    assert out.column("next_vec_l4_d32").null_count == 0 and ROWADDR not in out.column_names
    # a wrong address (another row's) is noticed: those rows are embedded instead
    wrong = pa.array([addresses[5]] * 4, pa.int64())
    again = actor(batch.set_column(batch.schema.get_field_index(ROWADDR), ROWADDR, wrong))
    assert not np.any(np.asarray(again.column("vec_l4_d64").to_pylist(), dtype=np.float32) == 0.125)
