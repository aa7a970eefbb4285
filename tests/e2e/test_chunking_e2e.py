"""Documents in chunks through real runs: create, an incremental night (a changed document replaces all its
chunks, an unchanged one is not touched, a removed one loses every chunk), `plan --json` counting the chunks
the run makes, and search returning the best chunk per document (real Ray, Lance, tokenizer, text)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embedder import Chunking, cached_tokenizer, chunk_spans
from jobs import JobSpecError, run_job
from jobs.cli import app
from storage import open_table

from ..jobfiles import write_job
from .audit import audit_table

HOW = Chunking(tokens=40, overlap=5, sentences=True)


def _write(path, docs: dict[int, str]) -> None:
    pq.write_table(pa.table({"doc": list(docs), "body": list(docs.values())}), path)


def _expected(model, docs: dict[int, str]) -> dict[str, str]:
    """chunk id -> chunk text, cut here with the job's settings."""
    tok = cached_tokenizer(str(model), None).tokenizer
    spans = chunk_spans(tok, list(docs.values()), HOW)
    return {
        f"{d}#{n}": text[a:b] for (d, text), s in zip(docs.items(), spans, strict=True) for n, (a, b) in enumerate(s)
    }


def _job(tmp_path, model, corpus, **chunking):
    how = {"tokens": HOW.tokens, "overlap": HOW.overlap, "sentences": HOW.sentences, **chunking}
    return write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32", "l4_d64"],
        input={"uri": str(corpus), "id_column": "doc", "text_column": "body"},
        model={"path": str(model)},
        chunking={k: v for k, v in how.items() if v is not None},  # None: the default
        output={"uri": str(tmp_path / "out" / "docs.lance")},
    )


def test_chunked_documents_through_create_a_night_and_search(ray_local, tmp_path, tiny_bert_dir, lee_articles):
    docs = {i: lee_articles[i] for i in range(30)}
    corpus = tmp_path / "docs.parquet"
    _write(corpus, docs)
    job = _job(tmp_path, tiny_bert_dir, corpus)
    planned = CliRunner().invoke(app, ["plan", str(job), "--json", "--no-measure"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.output.strip().splitlines()[-1])

    first = run_job(job, progress=False)
    expected = _expected(tiny_bert_dir, docs)
    assert first.chunked and (first.rows_read, first.rows_new) == (30, 30)
    assert first.rows_embedded == len(expected) == plan["chunks"] > 60 and first.truncated == plan["truncated"] == 0
    assert plan["tokens"] == first.tokens
    uri = str(tmp_path / "out" / "docs.lance")
    audit = audit_table(uri, expected, tiny_bert_dir)
    assert audit.clean, audit  # every chunk once, its vector that of its own text
    table = open_table(uri).to_arrow(["id", "doc_id", "chunk", "char_start", "char_end", "text", "run_id"])
    for row in table.to_pylist():
        assert docs[row["doc_id"]][row["char_start"] : row["char_end"]] == row["text"]
    before = {r["id"]: r["run_id"] for r in table.to_pylist()}

    # a night: doc 1 rewritten shorter, doc 2 removed, doc 100 added
    docs[1] = docs[1][: len(docs[1]) // 3].rsplit(" ", 1)[0] + " (revised)"
    del docs[2]
    docs[100] = "A new and short document about tides."
    _write(corpus, docs)
    night = run_job(job, progress=False)
    assert (night.rows_new, night.rows_changed, night.rows_unchanged, night.rows_deleted) == (1, 1, 28, 1)
    expected = _expected(tiny_bert_dir, docs)
    assert night.rows_embedded == sum(1 for k in expected if k.split("#")[0] in ("1", "100"))
    audit = audit_table(uri, expected, tiny_bert_dir)
    assert audit.clean, audit  # doc 1's old chunks all gone, doc 2's too, nothing doubled
    after = {r["id"]: r["run_id"] for r in open_table(uri).to_arrow(["id", "run_id"]).to_pylist()}
    untouched = [k for k in after if k.split("#")[0] not in ("1", "100")]
    assert untouched and all(after[k] == before[k] for k in untouched)  # unchanged documents not rewritten
    assert {after[k] for k in after if k.split("#")[0] in ("1", "100")} == {night.run_id}

    # search: the best chunk of each of the top documents, as a scan of every chunk ranks them
    tbl = open_table(uri)
    query = "bushfires burning near Sydney"
    hits = tbl.search(query, "l4_d64", k=4, per_document=True)
    docs_hit = hits.column("doc_id").to_pylist()
    assert len(docs_hit) == len(set(docs_hit)) == 4
    everything = tbl.to_arrow(["id", "doc_id", "vec_l4_d64"]).to_pylist()
    q = tbl.embed_query(query, "l4_d64")
    best: dict[int, tuple[float, str]] = {}
    for r in everything:
        score = float(np.dot(q, np.asarray(r["vec_l4_d64"], dtype=np.float32)))
        best[r["doc_id"]] = max(best.get(r["doc_id"], (-2.0, "")), (score, r["id"]))
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:4]
    assert docs_hit == [d for d, _ in ranked]
    assert hits.column("id").to_pylist() == [chunk for _, (_, chunk) in ranked]
    plain = tbl.search(query, "l4_d64", k=4)
    assert plain.column("id").to_pylist()[0] == hits.column("id").to_pylist()[0]

    # other chunking settings make other vectors: refused for an incremental run, like a model change
    with pytest.raises(JobSpecError, match=r"chunking: tokens=40.* -> tokens=30"):
        run_job(_job(tmp_path, tiny_bert_dir, corpus, tokens=30), progress=False)


def test_chunking_settings_are_checked_against_the_model(tmp_path, tiny_bert_dir):
    from jobs import check_job, load_job

    corpus = tmp_path / "docs.parquet"
    _write(corpus, {1: "text"})
    job = _job(tmp_path, tiny_bert_dir, corpus, tokens=500)
    with pytest.raises(JobSpecError, match=r"chunking.tokens = 500: above what the model takes \(128 tokens, less 2"):
        check_job(load_job(job))
    job = _job(tmp_path, tiny_bert_dir, corpus, tokens=20, overlap=20)
    with pytest.raises(JobSpecError, match=r"chunking.overlap = 20: must be below chunking.tokens \(20\)"):
        check_job(load_job(job))
    resolved = check_job(load_job(_job(tmp_path, tiny_bert_dir, corpus, tokens=None, overlap=None)))
    assert resolved.chunking == Chunking(126, 15, True)  # the model's room, an eighth of it overlapping


@pytest.mark.slow  # ~60 s: a driver killed mid-run; the default suite covers the resume's parts in test_chunks
def test_a_chunked_run_killed_mid_run_resumes_without_losing_or_doubling_a_chunk(
    ray_local, tmp_path, tiny_bert_dir, lee_articles
):
    """Parts of 7 rows split documents between parts: the resume embeds exactly the chunks not yet staged."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from storage import staged_runs, staging_dir

    docs = {i: lee_articles[i] for i in range(120)}
    corpus = tmp_path / "docs.parquet"
    _write(corpus, docs)
    job = _job(tmp_path, tiny_bert_dir, corpus)
    # on the embedded Ray (this machine's pool would be one actor: by default the run would stay in its process)
    text = job.read_text() + "[cluster]\nrows_per_block = 4\nrows_per_part = 7\nin_process_below = 0\n"
    job.write_text(text)
    out = tmp_path / "out" / "docs.lance"
    ray_tmp = tempfile.mkdtemp(prefix="rd", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "EMBEDJOB_STATE_DIR": str(tmp_path / "state"), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "driver.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", str(job), "--no-progress"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while len(list(Path(staging_dir(str(out))).glob("*/parts/*.json"))) < 6:
            assert time.time() < deadline and proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    (staging,) = staged_runs(str(out))
    staged = [i for p in staging.parts() for i in p.ids]
    expected = _expected(tiny_bert_dir, docs)
    assert 0 < len(staged) < len(expected)
    result = CliRunner().invoke(app, ["resume", staging.run_id, "--table", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    audit = audit_table(str(out), expected, tiny_bert_dir)
    assert audit.clean, audit
    (last,) = open_table(str(out)).runs()
    assert last["rows_embedded"] == len(expected)
