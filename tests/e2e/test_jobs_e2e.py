"""Real jobs on a real local Ray, real Lance tables, the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embedder import ElasticEncoder, Granularity
from jobs import JobSpecError, RejectLimitExceeded, run_job
from jobs.cli import app
from storage import METADATA_KEY, open_table, split_table_uri

from ..jobfiles import write_job

GRANS = ["l3_d64", "l3_d128", "l6_d128", "l6_d384"]


def _job(tmp_path, uri, model, *, granularities=GRANS, name="job.toml", **overrides):
    sections = {
        "input": {"uri": str(uri), "id_column": "doc_id", "text_column": "body", "columns": ["title"]},
        "model": {"path": str(model)},
        "output": {"uri": str(tmp_path / "tables" / "lee.lance")},
    }
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values}
    return write_job(tmp_path / name, granularities=granularities, **sections)


def _unique_rows(articles, n):
    counts: dict[str, int] = {}
    for a in articles:
        counts[a] = counts.get(a, 0) + 1
    return [i for i, a in enumerate(articles) if counts[a] == 1][:n]


def _check_table(uri, articles, minilm_path):
    tbl = open_table(uri)
    data = tbl.to_arrow()
    ids = data["id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(articles)  # every id exactly once
    assert set(ids) == {f"lee-{i:03d}" for i in range(len(articles))}
    # provenance in the schema metadata
    meta = tbl.dataset.schema.metadata[METADATA_KEY].decode()
    for key in ("weights_fingerprint", "l6_d384", "embedjob_version", '"pooling": "mean"'):
        assert key in meta
    assert tbl.provenance.max_length == 256
    # vectors equal what the encoder gives in-process, for sampled rows
    rows = _unique_rows(articles, 300)[::37]
    enc = ElasticEncoder.from_pretrained(minilm_path, GRANS)
    expected = enc.encode([articles[i] for i in rows])
    by_id = {row_id: k for k, row_id in enumerate(ids)}
    for g in enc.granularities:
        stored = np.stack([np.asarray(data[g.column][by_id[f"lee-{i:03d}"]].as_py()) for i in rows])
        cos = (stored * expected[g]).sum(axis=1)
        assert cos.min() >= 0.9999, f"{g}: {cos.min()}"
    # a row's own text finds that row first
    for i in _unique_rows(articles, 300)[:3]:
        for g in ("l6_d384", "l3_d64"):
            hits = tbl.search(articles[i], g, k=3)
            assert hits["id"][0].as_py() == f"lee-{i:03d}", g
            assert hits["score"][0].as_py() == pytest.approx(1.0, abs=1e-3)
    return tbl


def test_parquet_job_end_to_end(ray_local, tmp_path, lee_parquet, lee_articles, minilm_path):
    summary = run_job(_job(tmp_path, lee_parquet, minilm_path), progress=False)
    assert (summary.rows_read, summary.rows_embedded, summary.rows_rejected) == (300, 300, 0)
    assert summary.tokens > 50_000 and summary.truncated > 0
    assert summary.table_version == 1 and summary.status == "committed"
    tbl = _check_table(summary.table_uri, lee_articles, minilm_path)
    # the job file names no calibration: the raw model's vectors (checked above), provenance says none
    assert summary.calibration is None and tbl.provenance.calibration is None
    assert tbl.to_arrow(["title"])["title"].to_pylist()[0] is not None  # passthrough kept
    assert [v["version"] for v in tbl.versions()] == [1]
    (run,) = tbl.runs()
    assert run["run_id"] == summary.run_id and run["table_version"] == 1 and run["rows_embedded"] == 300
    # the same table opens without embedjob: plain lancedb and lance -> pyarrow
    db, name = split_table_uri(summary.table_uri)
    plain = lancedb.connect(db).open_table(name)
    vec = tbl.dataset.to_table(columns=["vec_l6_d128"], limit=1)["vec_l6_d128"][0].as_py()
    hit = plain.search(vec, vector_column_name="vec_l6_d128").distance_type("cosine").limit(1).to_arrow()
    assert hit.num_rows == 1 and hit["_distance"][0].as_py() == pytest.approx(0.0, abs=1e-4)
    assert isinstance(lance.dataset(summary.table_uri).to_table(), pa.Table)
    assert pa.types.is_fixed_size_list(plain.schema.field("vec_l3_d64").type)
    # inspect and query commands
    runner = CliRunner()
    out = runner.invoke(app, ["inspect", summary.table_uri])
    assert out.exit_code == 0, out.output
    assert summary.run_id in out.output and "l3_d64, l3_d128, l6_d128, l6_d384" in out.output
    first = _unique_rows(lee_articles, 1)[0]
    out = runner.invoke(app, ["query", summary.table_uri, lee_articles[first], "-g", "l6_d128", "-k", "2", "--json"])
    assert out.exit_code == 0, out.output
    hits = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(hits) == 2 and hits[0]["id"] == f"lee-{first:03d}"
    assert hits[0]["score"] >= hits[1]["score"]


def test_jsonl_job_end_to_end(ray_local, tmp_path, lee_jsonl, lee_articles, minilm_path):
    """Tokenized in the CPU prepare tasks (what GPU pools do by default): the same vectors, tokens and
    truncation counts as tokenizing inside the actor (the parquet test's default on CPU)."""
    job = _job(tmp_path, lee_jsonl, minilm_path, cluster={"rows_per_block": 40, "tokenize": "tasks"})
    summary = run_job(job, progress=False)
    assert (summary.rows_read, summary.rows_embedded, summary.rows_rejected) == (300, 300, 0)
    assert "tokenizing in the tasks" in summary.pool
    enc = ElasticEncoder.from_pretrained(minilm_path, ["l1_d32"])
    stats = enc.encode_with_stats(list(lee_articles)).stats
    assert (summary.tokens, summary.truncated) == (stats.real_tokens, stats.truncated)
    _check_table(summary.table_uri, lee_articles, minilm_path)


def _bad_corpus(path, n_good=60):
    """A binary text column (as some exports have) with every kind of bad row."""
    ids = [f"g{i}" for i in range(n_good)] + ["n1", "e1", "w1", "g3", "g4", None, "u1"]
    texts = [f"document number {i} about topic {i % 7}".encode() for i in range(n_good)]
    texts += [None, b"", b"  \t ", b"another row with id g3", f"document number 4 about topic {4 % 7}".encode()]
    texts += [b"no id", b"caf\xe9 latin-1, not UTF-8"]
    table = pa.table({"doc_id": ids, "body": pa.array(texts, pa.binary()), "title": ["t"] * len(ids)})
    pq.write_table(table, path)


def test_rejects_over_the_limit_commit_nothing(ray_local, tmp_path, tiny_bert_dir):
    corpus = tmp_path / "bad.parquet"
    _bad_corpus(corpus)
    # 7 of 67 rows are bad (10%): over the default 1% limit, nothing is committed
    job = _job(tmp_path, corpus, tiny_bert_dir, granularities=["l2_d32", "l4_d64"])
    with pytest.raises(RejectLimitExceeded) as info:
        run_job(job, progress=False)
    assert info.value.rejected == 7 and info.value.read == 67
    assert "nothing was committed" in str(info.value)
    assert not (tmp_path / "tables" / "lee.lance" / "_versions").exists()


@pytest.mark.parametrize("tokenize", ["actor", "tasks"])
def test_rejects_are_counted_kept_and_limited(ray_local, tmp_path, tiny_bert_dir, tokenize):
    corpus = tmp_path / "bad.parquet"
    _bad_corpus(corpus)
    # under a limit that allows them (7 of 67 rows are bad), the run commits and keeps them with their reasons;
    # over it nothing is committed (test_rejects_over_the_limit_commit_nothing, the same rows)
    job = _job(
        tmp_path,
        corpus,
        tiny_bert_dir,
        granularities=["l2_d32", "l4_d64"],
        output={"max_reject_fraction": 0.15},
        cluster={"tokenize": tokenize},
    )
    summary = run_job(job, progress=False)
    assert (summary.rows_read, summary.rows_embedded, summary.rows_rejected) == (67, 60, 7)
    assert f"tokenizing in the {tokenize}" in summary.pool
    tbl = open_table(summary.table_uri)
    kept = tbl.to_arrow(["id"])["id"].to_pylist()
    assert sorted(kept) == sorted(f"g{i}" for i in range(60))  # each id once
    rejects = {(r["id"], r["reason"]) for r in tbl.rejects().to_pylist()}
    assert ("n1", "null text") in rejects
    assert ("e1", "empty text") in rejects
    assert ("w1", "whitespace-only text") in rejects
    assert (None, "null id") in rejects
    assert ("u1", "undecodable text (not UTF-8)") in rejects
    (undecodable,) = [r for r in tbl.rejects().to_pylist() if r["id"] == "u1"]
    assert undecodable["text"] == "caf\\xe9 latin-1, not UTF-8"  # escaped, not lost
    assert sum(1 for _, reason in rejects if reason.startswith("duplicate id")) == 2
    assert {r["run_id"] for r in tbl.rejects().to_pylist()} == {summary.run_id}
    assert summary.reject_reasons["null text"] == 1


def test_modes_create_overwrite_append(ray_local, tmp_path, tiny_bert_dir):
    corpus = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "body": ["alpha text", "beta text"], "title": ["A", "B"]}), corpus)
    grans = ["l1_d16", "l4_d64"]
    first = run_job(_job(tmp_path, corpus, tiny_bert_dir, granularities=grans), progress=False)
    assert first.table_version == 1
    with pytest.raises(JobSpecError, match="already exists and output.mode is 'create'"):
        run_job(_job(tmp_path, corpus, tiny_bert_dir, granularities=grans, output={"mode": "create"}), progress=False)
    more = tmp_path / "more.parquet"
    pq.write_table(pa.table({"doc_id": ["c"], "body": ["gamma text"], "title": ["C"]}), more)
    appended = run_job(
        _job(tmp_path, more, tiny_bert_dir, granularities=grans, output={"mode": "append"}), progress=False
    )
    assert appended.table_version == 2
    assert sorted(open_table(appended.table_uri).to_arrow(["id"])["id"].to_pylist()) == ["a", "b", "c"]
    replaced = run_job(
        _job(tmp_path, more, tiny_bert_dir, granularities=grans, output={"mode": "overwrite"}), progress=False
    )
    tbl = open_table(replaced.table_uri)
    assert replaced.table_version == 3 and tbl.to_arrow(["id"])["id"].to_pylist() == ["c"]
    # older versions stay readable
    assert lance.dataset(replaced.table_uri, version=2).count_rows() == 3
    assert [r["table_version"] for r in tbl.runs()] == [1, 2, 3]
    with pytest.raises(JobSpecError, match="granularities: l1_d16,l4_d64 -> l2_d16"):
        run_job(_job(tmp_path, more, tiny_bert_dir, granularities=["l2_d16"], output={"mode": "append"}))


def test_two_actors_on_two_cpus_finish(ray_local, tmp_path, lee_parquet, tiny_bert_dir):
    """The pool sizing leaves room for read and write tasks even when asked for an actor per core."""
    job = _job(
        tmp_path, lee_parquet, tiny_bert_dir, granularities=["l2_d32"], cluster={"actors": 2, "rows_per_block": 25}
    )
    summary = run_job(job, progress=False)
    assert summary.rows_embedded == 300
    assert summary.pool.startswith("2 CPU actor(s)")
    assert open_table(summary.table_uri).count_rows() == 300


def test_search_errors_name_what_is_allowed(ray_local, tmp_path, tiny_bert_dir):
    corpus = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"doc_id": ["a"], "body": ["alpha"], "title": ["A"]}), corpus)
    summary = run_job(_job(tmp_path, corpus, tiny_bert_dir, granularities=["l1_d16"]), progress=False)
    tbl = open_table(summary.table_uri)
    with pytest.raises(ValueError, match="granularity l2_d16 is not in this table; it has l1_d16"):
        tbl.search("alpha", "l2_d16")
    assert tbl.search("alpha", k=1)["id"].to_pylist() == ["a"]  # default: the richest granularity
    assert Granularity(1, 16) in tbl.granularities
