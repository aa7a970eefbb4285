"""Unattended nights: the deletion guard, and a commit that stays the truth whatever fails after it.

Real Ray (the session's), real Lance tables, the tiny random BERT.
"""

from __future__ import annotations

import shutil

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs import DeletionRefused, run_job
from jobs.cli import app
from storage import RunStaging, open_table, staged_runs

from ..jobfiles import write_job
from .audit import audit_table

GRANS = ["l2_d32", "l4_d64"]


def _corpus(path, rows: dict) -> None:
    table = pa.table({"doc_id": pa.array(list(rows), pa.string()), "body": pa.array(list(rows.values()), pa.string())})
    pq.write_table(table, path)


def _job(tmp_path, corpus, model, name="job.toml", **output):
    return write_job(
        tmp_path / name,
        granularities=GRANS,
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(tmp_path / "out" / "docs.lance"), **output},
        cluster={"rows_per_block": 10},
    )


ROWS = {f"d{i:02d}": f"Passage number {i} about rivers, trains and the weather in spring." for i in range(20)}


@pytest.fixture(scope="module")
def model(_tiny_models):
    """The session's tiny BERT, read only: every table of the module (the shared one too) names this path."""
    return _tiny_models["bert"]


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory, model):
    """A real run of the job over ROWS (version 1), shared: a test that needs the table copies it (``_night``)."""
    folder = tmp_path_factory.mktemp("guards-first")
    corpus = folder / "docs.parquet"
    _corpus(corpus, ROWS)
    first = run_job(_job(folder, corpus, model), progress=False)
    assert (first.table_version, open_table(first.table_uri).count_rows()) == (1, 20)
    return {"folder": folder, "summary": first}


def _night(first_run, tmp_path, model):
    """This test's copy of the first run's table and runs table, its job and its corpus (ROWS until rewritten)."""
    shutil.copytree(first_run["folder"] / "out", tmp_path / "out")
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, ROWS)
    return _job(tmp_path, corpus, model), corpus, str(tmp_path / "out" / "docs.lance")


def test_an_empty_input_or_most_ids_gone_is_refused_before_the_commit(first_run, tmp_path, model):
    job, corpus, uri = _night(first_run, tmp_path, model)
    assert (lance.dataset(uri).version, lance.dataset(uri).count_rows()) == (1, 20)

    # a broken upstream export: the input file is empty
    _corpus(corpus, {})
    with pytest.raises(DeletionRefused) as info:
        run_job(job, progress=False)
    message = str(info.value)
    assert "would delete 20 of the 20 rows" in message and "(100%)" in message
    assert "the input has no rows" in message and "max_delete_fraction = 0.1" in message
    assert f"embedjob run {job} --allow-deletes" in message and "stays at version 1" in message
    assert lance.dataset(uri).version == 1 and lance.dataset(uri).count_rows() == 20  # untouched
    failed = open_table(uri).runs()[-1]
    assert failed["status"] == "failed" and failed["table_version"] is None
    assert (failed["rows_read"], failed["rows_deleted"]) == (0, 20)
    assert "DeletionRefused" in failed["error"] and "--allow-deletes" in failed["error"]

    # an input that lost 60% of its ids (and changed one row): refused the same way, through the CLI
    kept = dict(list(ROWS.items())[:8])
    kept["d00"] += " (revised)"
    _corpus(corpus, kept)
    refused = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    assert refused.exit_code == 2, refused.output
    assert "would delete 12 of the 20 rows" in refused.output and "(60%)" in refused.output
    assert "their ids are not in the input (8 rows read)" in refused.output
    assert lance.dataset(uri).version == 1 and lance.dataset(uri).count_rows() == 20
    failed = open_table(uri).runs()[-1]
    assert (failed["status"], failed["rows_read"], failed["rows_deleted"], failed["rows_changed"]) == (
        "failed",
        8,
        12,
        1,
    )
    (staged,) = [s for s in staged_runs(uri) if s.run_id == failed["run_id"]]
    assert sum(len(p.ids) for p in staged.parts()) == 1  # the changed row was embedded, and is kept

    # the operator says the input is right: the same run is finished, nothing embedded again
    allowed = CliRunner().invoke(app, ["run", str(job), "--no-progress", "--allow-deletes"])
    assert allowed.exit_code == 0, allowed.output
    last = open_table(uri).runs()[-1]
    assert (last["run_id"], last["status"], last["table_version"]) == (failed["run_id"], "committed", 2)
    assert (last["rows_deleted"], last["rows_resumed"], last["rows_embedded"]) == (12, 1, 1)
    audit = audit_table(uri, kept, model)
    assert audit.clean, audit
    assert staged_runs(uri) == []

    # below the limit nothing is asked: 1 of 8 rows (12.5%) with the limit raised to 0.2
    fewer = dict(list(kept.items())[:7])
    _corpus(corpus, fewer)
    job2 = _job(tmp_path, corpus, model, name="job2.toml", max_delete_fraction=0.2)
    assert run_job(job2, progress=False).rows_deleted == 1


def test_an_empty_input_does_not_create_or_overwrite_unless_allowed(first_run, tmp_path, model):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _corpus(fresh / "docs.parquet", {})
    with pytest.raises(DeletionRefused, match=r"the input has no rows: this create run would make .* an empty"):
        run_job(_job(fresh, fresh / "docs.parquet", model), progress=False)
    assert not (fresh / "out" / "docs.lance").exists()

    _, corpus, uri = _night(first_run, tmp_path, model)  # the 20 rows of the first run, version 1
    _corpus(corpus, {})
    overwrite = _job(tmp_path, corpus, model, name="over.toml", mode="overwrite")
    with pytest.raises(DeletionRefused, match=r"this overwrite run would replace the 20 rows of .* with none.*"):
        run_job(overwrite, progress=False)
    assert lance.dataset(uri).count_rows() == 20
    allowed = _job(tmp_path, corpus, model, name="empty-ok.toml", mode="overwrite", allow_empty=True)
    summary = run_job(allowed, progress=False)
    assert summary.table_version == 2 and open_table(uri).count_rows() == 0
    assert open_table(uri).search("rivers", k=3).num_rows == 0  # an empty table is still a table


def test_bookkeeping_that_fails_after_the_commit_leaves_the_run_committed(ray_local, tmp_path, tiny_bert_dir):
    """The runs table cannot be written (something else sits at its path): the run is still committed, says
    so with a warning that names what to do, and the next run writes the missing record."""
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, ROWS)
    job = _job(tmp_path, corpus, tiny_bert_dir)
    runs_path = tmp_path / "out" / "docs_runs.lance"
    runs_path.parent.mkdir(parents=True)
    runs_path.write_text("not a Lance dataset")  # a real fault: a file where the runs table goes

    result = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "committed" in result.output and "version 1" in result.output
    assert "warning: run " in result.output and "could not be written" in result.output
    assert "the job's next run" in result.output
    uri = str(tmp_path / "out" / "docs.lance")
    assert lance.dataset(uri).version == 1 and lance.dataset(uri).count_rows() == 20
    (staging,) = staged_runs(uri)
    record = staging.read_record()
    assert (record.status, record.table_version, record.pending) == ("committed", 1, ["runs"])

    runs_path.unlink()  # the operator clears it; the next night finishes the bookkeeping first
    ROWS2 = {**ROWS, "new": "A new passage about glaciers."}
    _corpus(corpus, ROWS2)
    second = run_job(job, progress=False)
    assert (second.table_version, second.rows_new, second.read_version) == (2, 1, 1)
    runs = open_table(uri).runs()
    assert [(r["run_id"], r["status"], r["table_version"]) for r in runs] == [
        (staging.run_id, "committed", 1),
        (second.run_id, "committed", 2),
    ]
    assert staged_runs(uri) == []


def test_a_run_killed_between_its_commit_and_its_record_is_found_committed(first_run, tmp_path, model):
    """The staging record says "committing" (the driver died right after the commit): the table's commit
    message decides. With the commit in the table the run is recorded committed, never abandoned; without
    it, it failed and is resumed."""
    from jobs import check_job, finish_committed_runs, load_job
    from storage import StagingRecord, commit_changes, commit_message, new_run_id

    job, _, uri = _night(first_run, tmp_path, model)
    first = first_run["summary"]
    summary = first.to_json() | {
        "run_id": new_run_id(),
        "table_uri": uri,
        "read_version": 1,
        "rows_deleted": 1,
        "table_version": None,
    }
    # what the dead driver left: its record, and its commit (deleting d19) in the table
    landed = RunStaging(uri, summary["run_id"])
    landed.write_record(
        StagingRecord(
            run_id=landed.run_id,
            status="committing",
            read_version=1,
            mode="incremental",
            summary=summary,
            pending=["runs"],
        )
    )
    commit_changes(uri, new_fragments=[], delete_ids=["d19"], read_version=1, message=commit_message(landed.run_id))
    # and one whose commit never happened
    lost = RunStaging(uri, new_run_id())
    lost.write_record(
        StagingRecord(
            run_id=lost.run_id,
            status="committing",
            read_version=2,
            mode="incremental",
            summary=summary | {"run_id": lost.run_id, "read_version": 2},
        )
    )

    done = finish_committed_runs(check_job(load_job(job), source_name=str(job)))
    assert list(done) == [landed.run_id] and done[landed.run_id].table_version == 2
    assert landed.read_record() is None  # bookkeeping finished, staging removed
    assert lost.read_record().status == "failed"
    (row,) = [r for r in open_table(uri).runs() if r["run_id"] == landed.run_id]
    assert (row["status"], row["table_version"], row["rows_deleted"]) == ("committed", 2, 1)


def test_a_commit_call_that_fails_after_the_commit_landed_is_committed(first_run, tmp_path, model, monkeypatch):
    """The store took the commit but the answer was lost (a dropped connection): the table's commit message
    says the run committed, so it is committed, with a warning; it is not failed, and not committed twice.
    (A lost answer cannot be produced with a healthy local store: Lance's commit is wrapped to lose it.)"""
    job, corpus, _ = _night(first_run, tmp_path, model)
    _corpus(corpus, {**ROWS, "extra": "One more passage, about lighthouses."})
    real = lance.LanceDataset.commit

    def commit_then_lose_the_answer(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError("connection reset by peer (the answer to the commit was lost)")

    monkeypatch.setattr(lance.LanceDataset, "commit", staticmethod(commit_then_lose_the_answer))
    summary = run_job(job, progress=False)
    monkeypatch.undo()
    assert (summary.status, summary.table_version, summary.rows_new) == ("committed", 2, 1)
    assert any("the commit reported OSError" in w and "has this run's commit" in w for w in summary.warnings)
    uri = summary.table_uri
    assert lance.dataset(uri).version == 2 and lance.dataset(uri).count_rows() == 21
    runs = open_table(uri).runs()
    assert [(r["status"], r["table_version"]) for r in runs] == [("committed", 1), ("committed", 2)]
    assert staged_runs(uri) == []
