"""`embedjob plan --json` counts what the run then does: rows, rejects, new / changed / unchanged / deleted,
tokens and truncated texts, on a create run and on an incremental night (real Ray, Lance, tokenizer)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from bench.corpora import passages
from jobs import run_job
from jobs.cli import app

from ..jobfiles import write_job


def _corpus(path, rows: dict) -> None:
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), path)


def _plan(job) -> dict:
    result = CliRunner().invoke(app, ["plan", str(job), "--json", "--no-measure"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_plan_counts_what_the_run_then_does(ray_local, tmp_path, tiny_bert_dir):
    texts = passages(120, words=30)
    rows = {f"d{i:03d}": t for i, t in enumerate(texts)}
    rows.update({"long1": " ".join(texts[:6]), "long2": " ".join(texts[6:12])})  # past max_length: truncated
    corpus = tmp_path / "docs.parquet"
    bad = pa.table({"doc_id": ["null", "empty", "d000"], "body": [None, "  ", "a second d000"]})
    pq.write_table(pa.concat_tables([pa.table({"doc_id": list(rows), "body": list(rows.values())}), bad]), corpus)
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32", "l4_d64"],
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir), "max_length": 64},
        output={"uri": str(tmp_path / "out" / "docs.lance"), "max_reject_fraction": 0.1},
    )
    plan = _plan(job)
    run = run_job(job, progress=False)
    assert plan["mode"] == run.mode == "create"
    assert (plan["rows"], plan["rejected"], plan["new"]) == (run.rows_read, run.rows_rejected, run.rows_new)
    assert (plan["tokens"], plan["truncated"]) == (run.tokens, run.truncated)
    assert plan["truncated"] >= 2 and plan["tokens_counted"] == "exact"
    assert plan["bytes_per_row"] == (32 + 64) * 4 and plan["estimated_seconds"] is None  # --no-measure, no runs

    # a night: 3 changed, 2 new, 1 removed
    for key in ("d001", "d002", "d003"):
        rows[key] += " (revised)"
    del rows["d010"]
    rows.update({"n1": "a new passage about tides", "n2": "another about glaciers"})
    _corpus(corpus, rows)
    plan = _plan(job)
    night = run_job(job, progress=False)
    assert plan["mode"] == night.mode == "incremental"
    got = [plan[k] for k in ("new", "changed", "unchanged", "deleted", "tokens", "truncated")]
    assert got == [
        night.rows_new,
        night.rows_changed,
        night.rows_unchanged,
        night.rows_deleted,
        night.tokens,
        night.truncated,
    ]
    assert got[:4] == [2, 3, len(rows) - 5, 1]
    assert _plan(job)["estimated_seconds"] == 0.0  # nothing left to embed
    # the table's recorded runs give the throughput: an estimate without measuring
    rows["d004"] += " (revised again)"
    _corpus(corpus, rows)
    plan = _plan(job)
    assert plan["changed"] == 1 and plan["throughput_from"] == "the table's recorded runs"
    assert plan["estimated_seconds"] == plan["tokens"] / plan["tokens_per_second"] > 0
