"""Indexes through jobs and the CLI: a job's [index] section on real runs, `embedjob index`, funnel queries."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs import JobSpecError, run_job
from jobs.cli import app
from storage import open_table

from ..jobfiles import write_embedded_table, write_job

GRANS = ["l2_d16", "l4_d32", "l4_d64"]


def _corpus(path, articles, changed=(), added=()):
    ids = [f"lee-{i:03d}" for i in range(len(articles))]
    texts = [a + " (revised)" if i in changed else a for i, a in enumerate(articles)]
    for j, text in enumerate(added):
        ids.append(f"new-{j:03d}")
        texts.append(text)
    pq.write_table(pa.table({"doc_id": ids, "body": texts}), path)
    return path


def _job(tmp_path, corpus, model, **index):
    return write_job(
        tmp_path / "job.toml",
        granularities=GRANS,
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(tmp_path / "tables" / "lee.lance")},
        cluster={"rows_per_part": 128},
        index={"granularities": ["l4_d32"], **index},
    )


def test_index_section_builds_after_each_run_that_changes_the_table(ray_local, tmp_path, tiny_bert_dir, lee_articles):
    corpus = _corpus(tmp_path / "lee.parquet", lee_articles)
    job = _job(tmp_path, corpus, tiny_bert_dir)
    first = run_job(job, progress=False)
    (built,) = first.indexes
    assert built["action"] == "built" and built["column"] == "vec_l4_d32" and built["rows"] == 300
    assert built["version"] == first.table_version + 1
    tbl = open_table(first.table_uri)
    (idx,) = tbl.indexes()
    assert (idx["column"], idx["type"], idx["indexed_rows"], idx["unindexed_rows"]) == ("vec_l4_d32", "ivf_pq", 300, 0)

    # a nightly run with 2 changed rows and 1 new one: committed, then the index is rebuilt over every row
    _corpus(corpus, lee_articles, changed={3, 9}, added=["Penguins nest on the Antarctic ice shelf through winter."])
    second = run_job(job, progress=False)
    assert (second.rows_new, second.rows_changed, second.read_version) == (1, 2, built["version"])
    (rebuilt,) = second.indexes
    assert rebuilt["action"] == "built" and rebuilt["version"] == second.table_version + 1
    tbl.refresh()
    (idx,) = tbl.indexes()
    assert idx["unindexed_rows"] == 0 and idx["indexed_rows"] >= 301
    assert tbl.funnel_search(lee_articles[9] + " (revised)", "l4_d32:50,l4_d64:3")["id"][0].as_py() == "lee-009"

    # nothing changed: no new table version, the index is kept
    third = run_job(job, progress=False)
    assert third.table_version == third.read_version == rebuilt["version"]
    assert third.indexes == [{"column": "vec_l4_d32", "action": "kept", "reason": "the run changed nothing"}]
    assert open_table(first.table_uri).version == rebuilt["version"]


def test_index_section_is_checked_before_ray_starts(tmp_path, tiny_bert_dir, lee_parquet):
    job = _job(tmp_path, lee_parquet, tiny_bert_dir)
    text = job.read_text().replace('granularities = ["l4_d32"]', 'granularities = ["l3_d32", "l4_d64"]')
    job.write_text(text + "num_sub_vectors = 3\n")
    with pytest.raises(JobSpecError) as err:
        run_job(job, progress=False)
    msg = str(err.value)
    assert "index.granularities: 'l3_d32' is not one of the job's granularities (l2_d16, l4_d32, l4_d64)" in msg
    job.write_text(job.read_text().replace('"l3_d32", ', "").replace('type = "ivf_pq"\n', ""))
    with pytest.raises(JobSpecError, match="index.num_sub_vectors = 3 does not divide the dim of l4_d64"):
        run_job(job, progress=False)
    job.write_text(job.read_text() + 'type = "hnsw"\n')
    with pytest.raises(JobSpecError, match="index.type = 'hnsw'"):
        run_job(job, progress=False)


def test_cli_index_query_funnel_and_inspect(ray_local, tmp_path, tiny_bert_dir, lee_articles):
    cli = CliRunner()
    # a table too small to index (written here, no Ray: the CLI reads any embedjob table)
    few = str(tmp_path / "tables" / "few.lance")
    write_embedded_table(few, tiny_bert_dir, lee_articles[:200], granularities=GRANS)
    too_small = cli.invoke(app, ["index", few, "-g", "l4_d32"])
    assert too_small.exit_code == 2
    assert "has 200 rows; an ivf_pq index needs at least 256" in " ".join(too_small.output.split())
    # a job's table past the minimum: index two columns
    corpus = _corpus(tmp_path / "lee.parquet", lee_articles)
    job = write_job(
        tmp_path / "small.toml",
        granularities=GRANS,
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir)},
        output={"uri": str(tmp_path / "tables" / "small.lance")},
    )
    uri = run_job(job, progress=False).table_uri
    done = cli.invoke(app, ["index", uri, "-g", "l2_d16", "-g", "l4_d64", "--type", "ivf_flat", "--partitions", "1"])
    assert done.exit_code == 0, done.output
    assert done.output.count("ivf_flat (1 partitions, cosine)") == 2
    assert {i["column"] for i in open_table(uri).indexes()} == {"vec_l2_d16", "vec_l4_d64"}
    for args, message in (
        ([], "name the columns to index (--granularity l6_d128, repeatable) or --all"),
        (["--all", "-g", "l4_d32"], "or --all, not both"),
        (["-g", "l4_d64", "--sub-vectors", "7"], "num_sub_vectors = 7 for a 64-dim column: must divide 64"),
        (["-g", "l5_d64"], "l5_d64 is not in this table"),
        (["--all", "--type", "annoy"], "index type 'annoy' is not supported"),
    ):
        bad = cli.invoke(app, ["index", uri, *args])
        assert bad.exit_code == 2 and message in " ".join(bad.output.split()), (args, bad.output)

    hits = cli.invoke(app, ["query", uri, lee_articles[17], "--funnel", "l2_d16:60,l4_d64:3", "--json"])
    assert hits.exit_code == 0, hits.output
    rows = [json.loads(line) for line in hits.stdout.splitlines()]  # stderr has the weight loading bar
    assert len(rows) == 3 and rows[0]["id"] == "lee-017"
    assert {"score", "score_l2_d16", "score_l4_d64"} <= set(rows[0])
    shown = cli.invoke(app, ["query", uri, lee_articles[17], "--funnel", "l2_d16:60,l4_d64:3"])
    assert shown.exit_code == 0 and "funnel l2_d16:60,l4_d64:3" in shown.output and "lee-017" in shown.output
    clash = cli.invoke(app, ["query", uri, "x", "--funnel", "l2_d16:60,l4_d64:3", "-k", "5"])
    assert clash.exit_code == 2 and "-k 5 differs from the funnel's last stage (l4_d64:3)" in clash.output
    grow = cli.invoke(app, ["query", uri, "x", "--funnel", "l2_d16:6,l4_d64:30"])
    assert grow.exit_code == 2 and "k must not grow" in grow.output

    inspected = cli.invoke(app, ["inspect", uri])
    assert inspected.exit_code == 0 and "vector indexes" in inspected.output
    assert "vec_l2_d16" in inspected.output and "ivf_flat" in inspected.output
