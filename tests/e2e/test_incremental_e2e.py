"""Incremental runs, exactly-once under an actor kill, the table lock: real Ray, real Lance, tiny BERT."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.corpora import passages
from jobs import JobSpecError, run_job
from storage import TableLock, TableLocked, open_table, staged_runs, staging_dir

from ..jobfiles import write_job
from ..processes import kill_once
from .audit import audit_table

GRANS = ["l2_d32", "l4_d64"]


def _corpus(path, rows: dict) -> None:
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), path)


def _job(tmp_path, corpus, model, **output):
    return write_job(
        tmp_path / "job.toml",
        granularities=GRANS,
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(tmp_path / "out" / "docs.lance"), **output},
        cluster={"rows_per_block": 50},
    )


AB = {"a": "alpha text", "b": "beta text"}


@pytest.fixture(scope="module")
def ab_table(ray_local, _tiny_models, tmp_path_factory):
    """A real first run of the job over AB (version 1) with the session's tiny BERT (read only), shared: a
    test that runs on it copies it (``_copy_ab``)."""
    folder = tmp_path_factory.mktemp("incremental-ab")
    model = _tiny_models["bert"]
    _corpus(folder / "docs.parquet", AB)
    first = run_job(_job(folder, folder / "docs.parquet", model), progress=False)
    assert (first.mode, first.rows_new, first.table_version) == ("create", 2, 1)
    return {"folder": folder, "model": model}


def _copy_ab(ab_table, tmp_path):
    """This test's copy of the AB table (and its runs table), its corpus (AB) and the model; -> (corpus, model)."""
    shutil.copytree(ab_table["folder"] / "out", tmp_path / "out")
    _corpus(tmp_path / "docs.parquet", AB)
    return tmp_path / "docs.parquet", ab_table["model"]


def test_incremental_run_touches_exactly_the_changed_rows(ray_local, tmp_path, tiny_bert_dir):
    """Fault test 3: 1% changed, 0.5% added, 0.5% removed; untouched rows keep their run_id and time."""
    texts = passages(400, words=40)
    rows = {f"d{i:04d}": t for i, t in enumerate(texts)}
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, rows)
    job = _job(tmp_path, corpus, tiny_bert_dir)
    first = run_job(job, progress=False)
    assert (first.mode, first.rows_new, first.table_version) == ("create", 400, 1)
    before = {r["id"]: r for r in open_table(first.table_uri).to_arrow(["id", "run_id", "embedded_at"]).to_pylist()}

    changed = [f"d{i:04d}" for i in (3, 50, 150, 399)]
    removed = ["d0010", "d0200"]
    added = {"n0001": "A completely new passage about river boats.", "n0002": "Another new one, on glaciers."}
    for i in changed:
        rows[i] = rows[i] + " (revised)"
    for i in removed:
        del rows[i]
    rows.update(added)
    _corpus(corpus, rows)
    second = run_job(job, progress=False)
    assert second.mode == "incremental"
    assert (second.rows_new, second.rows_changed, second.rows_unchanged, second.rows_deleted) == (2, 4, 394, 2)
    assert second.rows_embedded == 6 and second.table_version == 2 and second.read_version == 1

    tbl = open_table(second.table_uri)
    after = {r["id"]: r for r in tbl.to_arrow(["id", "run_id", "embedded_at"]).to_pylist()}
    touched = {i for i, r in after.items() if r["run_id"] == second.run_id}
    assert touched == set(changed) | set(added)
    for i, r in after.items():
        if i not in touched:
            assert (r["run_id"], r["embedded_at"]) == (before[i]["run_id"], before[i]["embedded_at"])
    audit = audit_table(second.table_uri, rows, tiny_bert_dir)
    assert audit.clean, audit
    assert lance.dataset(second.table_uri, version=1).count_rows() == 400  # the old version stays readable

    # nothing changed: no new version, every row unchanged
    third = run_job(job, progress=False)
    assert (third.rows_unchanged, third.rows_embedded, third.table_version) == (400, 0, 2)
    assert [r["status"] for r in tbl.runs()] == ["committed"] * 3
    assert staged_runs(second.table_uri) == []  # committed runs leave no staging behind

    # delete_missing = false keeps rows whose ids left the input
    del rows["d0001"]
    _corpus(corpus, rows)
    kept = run_job(_job(tmp_path, corpus, tiny_bert_dir, delete_missing=False), progress=False)
    assert kept.rows_deleted == 0 and kept.table_version == 2  # nothing to do at all
    assert "d0001" in set(open_table(kept.table_uri).to_arrow(["id"])["id"].to_pylist())


def test_a_config_change_is_not_incremental(ab_table, tmp_path):
    corpus, model = _copy_ab(ab_table, tmp_path)
    job = write_job(
        tmp_path / "other.toml",
        granularities=["l3_d32"],
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(tmp_path / "out" / "docs.lance")},
    )
    with pytest.raises(JobSpecError, match=r"granularities: l2_d32,l4_d64 -> l3_d32.*use mode = 'overwrite'"):
        run_job(job, progress=False)
    rebuilt = run_job(job, progress=False, overrides={"output.mode": "overwrite"})
    assert rebuilt.table_version == 2 and open_table(rebuilt.table_uri).provenance.granularities == ("l3_d32",)
    assert lance.dataset(rebuilt.table_uri, version=1).count_rows() == 2


def test_append_refuses_ids_the_table_has(ab_table, tmp_path):
    corpus, model = _copy_ab(ab_table, tmp_path)
    _corpus(corpus, {"b": "beta again", "c": "gamma text"})
    out = run_job(_job(tmp_path, corpus, model, mode="append", max_reject_fraction=0.5), progress=False)
    assert (out.rows_embedded, out.rows_rejected) == (1, 1)
    assert sorted(open_table(out.table_uri).to_arrow(["id"])["id"].to_pylist()) == ["a", "b", "c"]
    (reject,) = open_table(out.table_uri).rejects().to_pylist()
    assert reject["id"] == "b" and reject["reason"].startswith("id already in the table")


def test_actor_killed_mid_batch_still_commits_every_id_once(ray_local, tmp_path, tiny_bert_dir):
    """Fault test 1: an encoder actor is SIGKILLed once the run has staged a part; Ray restarts it and retries."""
    rows = {f"d{i:04d}": t for i, t in enumerate(passages(1500, words=40))}
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, rows)
    out = tmp_path / "out" / "docs.lance"
    job = write_job(
        tmp_path / "job.toml",
        granularities=GRANS,
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir)},
        output={"uri": str(out)},
        cluster={"rows_per_block": 25, "rows_per_part": 25},
    )

    def staged_a_part() -> bool:
        return any(Path(staging_dir(str(out))).glob("*/parts/*.json"))

    with kill_once("EncodeActor", when=staged_a_part) as kill:
        summary = run_job(job, progress=False)
    assert kill.pid is not None, "the encoder actor was not killed while the run went on"
    assert summary.rows_embedded == 1500
    audit = audit_table(summary.table_uri, rows, tiny_bert_dir)
    print("actor kill:", audit, kill.command)
    assert audit.clean, audit


def test_a_second_run_on_a_locked_table_is_refused_or_waits(ray_local, tmp_path, tiny_bert_dir):
    """Fault test 4 (in one process): a live holder refuses a second run with who holds it."""
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, {"a": "alpha text"})
    job = _job(tmp_path, corpus, tiny_bert_dir)
    uri = str(tmp_path / "out" / "docs.lance")
    holder = TableLock(uri, run_id="other-run")
    holder.acquire()
    try:
        with pytest.raises(TableLocked, match=r"is being written by run other-run \(host .*, pid \d+"):
            run_job(job, progress=False)
        with pytest.raises(TableLocked):
            run_job(job, progress=False, wait_s=1.5)
    finally:
        holder.release()
    assert run_job(job, progress=False).rows_embedded == 1


def test_add_granularity_backfills_only_the_new_column(ray_local, tmp_path, tiny_bert_dir):
    from typer.testing import CliRunner

    from embedder import ElasticEncoder, Granularity
    from jobs.cli import app

    rows = {f"d{i:03d}": t for i, t in enumerate(passages(300, words=30))}
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, rows)
    first = run_job(_job(tmp_path, corpus, tiny_bert_dir), progress=False)
    before = open_table(first.table_uri).to_arrow(["id", "vec_l2_d32", "run_id"])
    # a plain run with one more granularity is refused, with the backfill as the hint
    grown = write_job(
        tmp_path / "grown.toml",
        granularities=[*GRANS, "l3_d16"],
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir)},
        output={"uri": first.table_uri},
        cluster={"rows_per_block": 50},
        index={"granularities": ["l3_d16"]},  # built once the column is there, by the backfill
    )
    with pytest.raises(JobSpecError, match=r"backfill: embedjob run JOB --add-granularity l3_d16"):
        run_job(grown, progress=False)
    bad = CliRunner().invoke(app, ["run", str(grown), "--add-granularity", "l2_d32", "--no-progress"])
    assert bad.exit_code == 2 and "the table already has l2_d32" in bad.output

    result = CliRunner().invoke(app, ["run", str(grown), "--add-granularity", "l3_d16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "index vec_l3_d16" in result.output and "on 300 rows" in result.output
    tbl = open_table(first.table_uri)
    assert tbl.version == 3 and tbl.provenance.granularities == ("l2_d32", "l3_d16", "l4_d64")  # + the index
    assert [(i["column"], i["indexed_rows"]) for i in tbl.indexes()] == [("vec_l3_d16", 300)]
    after = tbl.to_arrow(["id", "vec_l2_d32", "vec_l3_d16", "run_id"])
    assert after.select(["id", "vec_l2_d32", "run_id"]).equals(before)  # old columns and rows untouched
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d16"], device="cpu")
    fresh = enc.encode([rows[i] for i in after["id"].to_pylist()])[Granularity(3, 16)]
    import numpy as np

    stored = np.asarray(after["vec_l3_d16"].to_pylist(), dtype=np.float32)
    assert float(np.min(np.sum(fresh * stored, axis=1))) > 0.999
    assert tbl.search(rows["d007"], "l3_d16", k=1)["id"].to_pylist() == ["d007"]
    last = tbl.runs()[-1]
    assert last["mode"] == "backfill l3_d16"
    assert last["rows_embedded"] == 300  # each row once (Lance gets the schema, not a sample call)
    # the grown job now runs incrementally with nothing to do, and keeps its index
    again = run_job(grown, progress=False)
    assert again.rows_unchanged == 300 and [i["action"] for i in again.indexes] == ["kept"]


def test_a_run_that_can_no_longer_be_resumed_is_recorded_abandoned_and_cleaned(ab_table, tmp_path):
    from storage import RunStaging, StagingRecord

    corpus, model = _copy_ab(ab_table, tmp_path)
    job = _job(tmp_path, corpus, model)
    table_uri = str(tmp_path / "out" / "docs.lance")
    # an interrupted run that planned against a version the table has moved past
    dead = RunStaging(table_uri, "20261101T000000Z-deadbeef")
    dead.write_record(
        StagingRecord(run_id=dead.run_id, status="running", read_version=0, mode="incremental", job=str(job))
    )
    _corpus(corpus, {"a": "alpha text", "b": "beta text", "c": "gamma text"})
    second = run_job(job, progress=False)
    assert second.rows_resumed == 0 and second.rows_new == 1
    assert staged_runs(table_uri) == []
    runs = open_table(table_uri).runs()
    (abandoned,) = [r for r in runs if r["run_id"] == dead.run_id]
    assert abandoned["status"] == "abandoned" and "table is at 1 now" in abandoned["error"]
