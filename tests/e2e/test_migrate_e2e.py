"""Staged migrations on a real Ray runtime and real Lance tables: several steps, each audited exactly once,
the switch, abort. Two tiny random BERTs of other weights are the old and the new settings."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.corpora import passages
from embedder import ElasticEncoder, Granularity
from jobs import JobSpecError, run_job
from jobs.cli import app
from storage import open_table, read_migration, read_provenance

from ..jobfiles import write_job

OLD_GRANS = ["l2_d16", "l4_d64"]
NEW_GRANS = ["l4_d32"]


@pytest.fixture
def second_bert(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    """The tiny BERT with other weights (every tensor nudged, seeded): a second set of weights, offline."""
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(tiny_bert_dir)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    dst = tmp_path / "tiny-bert-2"
    model.save_pretrained(dst)
    for f in tiny_bert_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            shutil.copy(f, dst / f.name)
    return dst


def _corpus(path: Path, rows: dict) -> None:
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), path)


def _job(tmp_path: Path, corpus: Path, model: Path, grans, name: str, **extra) -> Path:
    return write_job(
        tmp_path / name,
        granularities=grans,
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(tmp_path / "out" / "docs.lance"), **extra.pop("output", {})},
        cluster={"rows_per_block": 16},
        **extra,
    )


def _fresh(model: Path, grans, texts: list[str]) -> dict[Granularity, np.ndarray]:
    return ElasticEncoder.from_pretrained(model, list(grans), device="cpu").encode(texts)


def audit_migration(uri: str, rows: dict, old: Path, new: Path) -> dict:
    """Every id once; every row's old vectors equal the old model's, and a migrated row's new vectors the new
    model's, embedded again here from the input's text. Returns counts."""
    data = open_table(uri).dataset.to_table()
    ids = data.column("id").to_pylist()
    counts = Counter(ids)
    assert set(counts) == set(rows) and max(counts.values()) == 1, "every id exactly once"
    texts = [rows[i] for i in ids]
    for g, fresh in _fresh(old, OLD_GRANS, texts).items():
        stored = np.asarray(data.column(f"vec_{g}").to_pylist(), dtype=np.float32)
        assert np.min(np.sum(stored * fresh, axis=1)) > 0.999, f"old vectors {g}"
    col = data.column(f"next_vec_{NEW_GRANS[0]}").to_pylist()
    migrated = [k for k, v in enumerate(col) if v is not None]
    if migrated:
        fresh = _fresh(new, NEW_GRANS, [texts[k] for k in migrated])[Granularity.parse(NEW_GRANS[0])]
        stored = np.asarray([col[k] for k in migrated], dtype=np.float32)
        assert np.min(np.sum(stored * fresh, axis=1)) > 0.999, "new vectors"
    return {"rows": len(ids), "migrated": len(migrated), "ids": {ids[k] for k in migrated}}


def test_a_migration_over_several_runs_then_the_switch(ray_local, tmp_path, tiny_bert_dir, second_bert):
    rows = {f"d{i:03d}": t for i, t in enumerate(passages(60, words=30))}
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, rows)
    old_job = _job(tmp_path, corpus, tiny_bert_dir, OLD_GRANS, "old.toml")
    first = run_job(old_job, progress=False)
    uri = first.table_uri
    tbl = open_table(uri)
    assert first.rows_embedded == 60 and read_migration(uri) is None

    new_job = _job(tmp_path, corpus, second_bert, NEW_GRANS, "new.toml")
    step = {"output.mode": "migrate", "migrate.max_rows_per_run": 25}
    with pytest.raises(JobSpecError, match="--migrate"):  # other settings: refused, pointing at a migration
        run_job(new_job, progress=False)
    # the night's changes come with the first step: changed, added and removed rows
    rows["d003"] += " (revised)"
    rows["n001"] = "A new passage about the river boats of the delta."
    del rows["d010"]
    _corpus(corpus, rows)
    step1 = run_job(new_job, progress=False, overrides=step)
    assert step1.mode == "migrate" and step1.status == "committed"
    assert (step1.rows_new, step1.rows_changed, step1.rows_deleted, step1.rows_migrated) == (1, 1, 1, 25)
    assert step1.rows_embedded == 27
    state = read_migration(uri)
    assert state is not None and state.to.granularities == tuple(NEW_GRANS)
    assert read_provenance(uri).granularities == tuple(OLD_GRANS)  # the table's settings until the switch
    audit = audit_migration(uri, rows, tiny_bert_dir, second_bert)
    assert audit["migrated"] == 27 and {"d003", "n001"} <= audit["ids"]
    assert step1.migration == {"to": step1.migration["to"], "done": 27, "total": 60}
    # the table stays searchable the old way throughout: every row, by the old model
    hits = tbl.refresh().search(rows["d020"], k=1)
    assert hits.column("id").to_pylist() == ["d020"]

    result = CliRunner().invoke(app, ["run", str(new_job), "--migrate", "--max-rows", "25", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "25 old rows re-embedded; 52 of 60 rows have the new vectors" in " ".join(result.output.split())
    audit = audit_migration(uri, rows, tiny_bert_dir, second_bert)
    assert audit["migrated"] == 52
    runs = [r for r in open_table(uri).runs() if r["mode"] == "migrate"]
    assert [(r["rows_migrated"], r["rows_unchanged"], r["rows_embedded"]) for r in runs] == [(25, 33, 27), (25, 35, 25)]
    shown = " ".join(CliRunner().invoke(app, ["inspect", uri]).output.split())
    assert "52 of 60 rows (87%); 25 old rows per run over the last 2: 1 run(s) left" in shown

    step3 = run_job(new_job, progress=False, overrides=step)  # the last 8 old rows, then the switch
    assert step3.rows_migrated == 8 and step3.migration["switched"] > step3.table_version
    assert read_migration(uri) is None
    prov = read_provenance(uri)
    assert prov.granularities == tuple(NEW_GRANS) and prov.model_path == str(second_bert)
    names = open_table(uri).dataset.schema.names
    assert [n for n in names if "vec_" in n] == [f"vec_{NEW_GRANS[0]}"]  # the old columns are dropped
    data = open_table(uri).dataset.to_table(columns=["id", f"vec_{NEW_GRANS[0]}"])
    ids = data.column("id").to_pylist()
    assert sorted(ids) == sorted(rows)
    fresh = _fresh(second_bert, NEW_GRANS, [rows[i] for i in ids])[Granularity.parse(NEW_GRANS[0])]
    stored = np.asarray(data.column(f"vec_{NEW_GRANS[0]}").to_pylist(), dtype=np.float32)
    assert np.min(np.sum(stored * fresh, axis=1)) > 0.999
    assert open_table(uri).tags()["latest-good"] == step3.migration["switched"]
    hits = open_table(uri).search(rows["d020"], k=1)  # the new model now
    assert hits.column("id").to_pylist() == ["d020"]


@pytest.mark.slow  # ~60 s: a driver killed mid-slice, then the step resumed
def test_a_step_killed_mid_slice_resumes_without_losing_or_doubling_a_row(
    ray_local, tmp_path, tiny_bert_dir, second_bert
):
    """Parts of 5 rows: the driver dies with some of the slice staged; the next run finishes exactly that slice."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from storage import staged_runs, staging_dir

    rows = {f"d{i:03d}": t for i, t in enumerate(passages(80, words=30))}
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, rows)
    uri = run_job(_job(tmp_path, corpus, tiny_bert_dir, OLD_GRANS, "old.toml"), progress=False).table_uri
    new_job = _job(tmp_path, corpus, second_bert, NEW_GRANS, "new.toml", migrate={"max_rows_per_run": 50}, output={})
    new_job.write_text(new_job.read_text().replace("rows_per_block = 16", "rows_per_block = 4\nrows_per_part = 5"))
    ray_tmp = tempfile.mkdtemp(prefix="rd", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "EMBEDJOB_STATE_DIR": str(tmp_path / "state"), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "driver.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", str(new_job), "--migrate", "--no-progress"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while len(list(Path(staging_dir(uri)).glob("*/parts/*.json"))) < 3:
            assert time.time() < deadline and proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    (staging,) = staged_runs(uri)
    staged = {i for p in staging.parts() for i in p.ids}
    assert 0 < len(staged) < 50 and read_migration(uri) is not None  # begun, part of the slice staged
    resumed = run_job(new_job, progress=False, overrides={"output.mode": "migrate"})
    assert resumed.run_id == staging.run_id and resumed.rows_resumed == len(staged)
    assert resumed.rows_migrated == 50 and resumed.rows_embedded == 50
    audit = audit_migration(uri, rows, tiny_bert_dir, second_bert)
    assert audit["migrated"] == 50 and staged <= audit["ids"]


@pytest.mark.slow  # ~3 min: the real model, three runs per pair of settings
@pytest.mark.parametrize("to", ["finetuned", "calibrated"])
def test_the_real_model_migrates_to_other_weights_or_a_calibration(
    ray_local, tmp_path, minilm_path, finetuned_minilm, lee_articles, to
):
    """Raw all-MiniLM-L6-v2 to a second set of weights (fine-tuned offline) or to itself with a calibration
    (``calibration = "auto"``, fitted by the first step): 2 steps and the switch, audited after each on real
    text, every row's vectors equal to a fresh embedding with the settings they claim."""
    grans, new_grans = ["l3_d64", "l6_d384"], ["l6_d128"]
    rows = {f"lee-{i:03d}": a for i, a in enumerate(lee_articles[:60])}
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, rows)
    uri = run_job(_job(tmp_path, corpus, minilm_path, grans, "old.toml"), progress=False).table_uri
    new_model = finetuned_minilm if to == "finetuned" else minilm_path
    extra = {} if to == "finetuned" else {"calibrate": {"sample": 60, "heldout": 0.2}}
    new_job = _job(tmp_path, corpus, new_model, new_grans, "new.toml", migrate={"max_rows_per_run": 30}, **extra)
    if to == "calibrated":
        new_job.write_text('calibration = "auto"\n' + new_job.read_text())
    step = {"output.mode": "migrate"}

    def audit(table, column: str, encoder, grans_: list[str], expected_rows: int) -> None:
        ids = table.column("id").to_pylist()
        assert sorted(ids) == sorted(rows)  # every id once
        values = table.column(column).to_pylist()
        done = [k for k, v in enumerate(values) if v is not None]
        assert len(done) == expected_rows
        fresh = encoder.encode([rows[ids[k]] for k in done])[Granularity.parse(grans_[-1])]
        stored = np.asarray([values[k] for k in done], dtype=np.float32)
        assert np.min(np.sum(stored * fresh, axis=1)) > 0.999, column

    first = run_job(new_job, progress=False, overrides=step)
    assert first.rows_migrated == 30 and first.migration["done"] == 30
    cal = _table_calibration(uri, read_migration(uri).to.calibration) if to == "calibrated" else None
    assert (cal is not None) == (to == "calibrated")
    old = ElasticEncoder.from_pretrained(minilm_path, grans, device="cpu")
    new = ElasticEncoder.from_pretrained(new_model, new_grans, device="cpu", calibration=cal)
    table = open_table(uri).dataset.to_table()
    audit(table, f"vec_{grans[-1]}", old, grans, 60)  # every row keeps its old vectors
    audit(table, f"next_vec_{new_grans[0]}", new, new_grans, 30)  # half has the new ones too
    second = run_job(new_job, progress=False, overrides=step)
    assert second.rows_migrated == 30 and second.migration["switched"]
    assert read_provenance(uri).granularities == tuple(new_grans) and read_migration(uri) is None
    audit(open_table(uri).dataset.to_table(), f"vec_{new_grans[0]}", new, new_grans, 60)
    assert open_table(uri).search(rows["lee-007"], k=1).column("id").to_pylist() == ["lee-007"]


def _table_calibration(uri: str, fingerprint: str):
    from storage import calibration_uri, load_calibration

    return load_calibration(calibration_uri(uri, fingerprint))


def test_a_step_reads_the_old_rows_vectors_back_instead_of_embedding_them(
    ray_local, tmp_path, tiny_bert_dir, second_bert
):
    """Every stored old vector is made a marker the model would never produce: after a step that takes every old
    row, the markers are still there (read back by row address), and the new vectors are the new model's."""
    import lance

    from storage import commit_changes, vector_array, write_fragments

    from ..jobfiles import write_embedded_table

    texts = passages(20, words=30)
    rows = {f"t{i}": t for i, t in enumerate(texts)}
    corpus = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": list(rows), "text": list(rows.values())}), corpus)
    uri = str(tmp_path / "out" / "docs.lance")
    write_embedded_table(uri, tiny_bert_dir, texts, granularities=OLD_GRANS)
    ds = lance.dataset(uri)
    marked = ds.to_table()
    for g in OLD_GRANS:
        dim = Granularity.parse(g).dim
        col = f"vec_{g}"
        marked = marked.set_column(
            marked.schema.get_field_index(col), col, vector_array(np.full((20, dim), 0.125), "float32")
        )
    commit_changes(
        uri, new_fragments=write_fragments(marked, uri, ds.schema), delete_ids=list(rows), read_version=ds.version
    )
    job = write_job(
        tmp_path / "new.toml",
        granularities=NEW_GRANS,
        input={"uri": str(corpus)},
        model={"path": str(second_bert)},
        output={"uri": uri, "mode": "migrate"},
        cluster={"rows_per_block": 8},
    )
    step = run_job(job, progress=False)
    assert step.rows_migrated == 20 and step.migration["switched"]
    table = lance.dataset(uri, version=step.table_version).to_table()  # the step's version, before the switch
    for g in OLD_GRANS:
        assert np.all(np.asarray(table.column(f"vec_{g}").to_pylist()) == 0.125), g
    audit = {r["id"]: r[f"next_vec_{NEW_GRANS[0]}"] for r in table.to_pylist()}
    fresh = _fresh(second_bert, NEW_GRANS, [rows[i] for i in audit])[Granularity.parse(NEW_GRANS[0])]
    assert np.min(np.sum(np.asarray(list(audit.values()), dtype=np.float32) * fresh, axis=1)) > 0.999
