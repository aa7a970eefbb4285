"""Version tags and rollback with real runs: real Ray, real Lance, tiny BERT."""

from __future__ import annotations

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.corpora import passages
from jobs import check_job, finish_committed_runs, load_job, run_job
from jobs.cli import app
from storage import (
    AFTER_COMMIT,
    LATEST_GOOD,
    RunStaging,
    StagingRecord,
    commit_changes,
    commit_message,
    new_run_id,
    open_table,
)

from ..jobfiles import write_job
from .audit import audit_table


def _corpus(path, rows: dict) -> None:
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), path)


def _rows(uri: str, version: int | None = None) -> list[dict]:
    table = lance.dataset(uri, version=version).to_table(columns=["id", "content_hash", "run_id", "vec_l2_d32"])
    return sorted(table.to_pylist(), key=lambda r: r["id"])


@pytest.mark.slow  # ~65 s, three Ray runs; tests/storage/test_tags_rollback.py rolls back real tables
def test_runs_tag_their_versions_and_a_rollback_is_followed_by_a_normal_run(ray_local, tmp_path, tiny_bert_dir):
    """Two nights -> each run's id tags its version, latest-good the second -> `embedjob rollback --to` the
    first run's tag restores its rows as a new version -> the next night plans against that version and embeds
    exactly what differs. Last, a driver killed between its commit and its tag: the next run tags its version."""
    rows = {f"d{i:03d}": t for i, t in enumerate(passages(60, words=30))}
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, rows)
    uri = str(tmp_path / "out" / "docs.lance")
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32"],
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir)},
        output={"uri": uri},
    )
    first = run_job(job, progress=False)
    assert (first.table_version, first.tags) == (1, [first.run_id, LATEST_GOOD])

    for i in (3, 20, 41):
        rows[f"d{i:03d}"] += " (revised)"
    del rows["d059"]
    rows |= {"n001": "A new passage about river boats.", "n002": "Another new one, on glaciers."}
    _corpus(corpus, rows)
    second = run_job(job, progress=False)
    assert (second.table_version, second.rows_embedded) == (2, 5)
    assert open_table(uri).tags() == {LATEST_GOOD: 2, second.run_id: 2, first.run_id: 1}

    result = CliRunner().invoke(app, ["rollback", uri, "--to", first.run_id])
    assert result.exit_code == 0, result.output
    assert "version 2 (61 rows) -> version 3 (60 rows), the contents of version 1" in result.output
    assert _rows(uri) == _rows(uri, 1)  # the first night's rows, hashes, vectors and run ids
    assert lance.dataset(uri, version=2).count_rows() == 61  # the rolled-back night stays readable

    third = run_job(job, progress=False)  # the same input as the second night
    assert (third.mode, third.read_version, third.table_version) == ("incremental", 3, 4)
    assert (third.rows_new, third.rows_changed, third.rows_deleted, third.rows_embedded) == (2, 3, 1, 5)
    audit = audit_table(uri, rows, tiny_bert_dir)
    assert audit.clean, audit
    table = open_table(uri)
    rollback_id = next(r["run_id"] for r in table.runs() if r["mode"].startswith("rollback"))
    assert table.tags() == {LATEST_GOOD: 4, third.run_id: 4, rollback_id: 3, second.run_id: 2, first.run_id: 1}
    assert [(r["mode"], r["status"], r["table_version"]) for r in table.runs()] == [
        ("create", "committed", 1),
        ("incremental", "committed", 2),
        (f"rollback to {first.run_id} (version 1)", "committed", 3),
        ("incremental", "committed", 4),
    ]

    # a driver killed right after its commit (deleting d000): its record says committing, its tag is not there
    dead = RunStaging(uri, new_run_id())
    summary = third.to_json() | {"run_id": dead.run_id, "read_version": 4, "table_version": None, "tags": []}
    dead.write_record(
        StagingRecord(
            run_id=dead.run_id,
            status="committing",
            read_version=4,
            mode="incremental",
            summary=summary,
            pending=list(AFTER_COMMIT),
        )
    )
    commit_changes(uri, new_fragments=[], delete_ids=["d000"], read_version=4, message=commit_message(dead.run_id))
    done = finish_committed_runs(check_job(load_job(job), source_name=str(job)))  # what the next run does first
    assert done[dead.run_id].tags == [dead.run_id]
    tags = open_table(uri).tags()
    assert (tags[dead.run_id], tags[LATEST_GOOD]) == (5, 4)  # tagged; its checks never ran: latest-good stays
