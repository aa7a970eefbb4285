"""Calibration through real jobs: fitted by Ray actors on the job's corpus, stored next to the table,
applied to its vectors and its queries, and treated as part of the table's config."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from embedder import Calibration, ElasticEncoder, Granularity, fit_calibration, heldout_mask
from jobs import JobSpecError, run_job
from jobs.cli import app
from storage import calibration_dir, list_calibrations, open_table

from ..jobfiles import write_job

GRANS = ["l2_d16", "l3_d32", "l4_d16", "l4_d64"]


def _job(tmp_path, corpus, model, *, calibration="auto", name="job.toml", **overrides):
    sections = {
        "input": {"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        "model": {"path": str(model), "max_length": 64},
        "output": {"uri": str(tmp_path / "tables" / "lee.lance"), "mode": "overwrite"},
        "calibrate": {"sample": 1000},  # more than the corpus: every row
    }
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values}
    path = write_job(tmp_path / name, granularities=GRANS, **sections)
    if calibration is not None:
        path.write_text(f"calibration = {calibration!r}\n".replace("'", '"') + path.read_text())
    return path


@pytest.fixture(scope="module")
def auto_first(ray_local, tmp_path_factory, lee_parquet, _tiny_models):
    """The first run of a job with ``calibration = "auto"``: its calibration fitted by the actors on every row
    (the sample is larger than the corpus), then the vectors. Shared by the module: a test that runs the job
    again copies the tables (``_copy_tables``); the model is the session's tiny BERT, read only."""
    folder = tmp_path_factory.mktemp("calibration-auto")
    model = _tiny_models["bert"]
    first = run_job(_job(folder, lee_parquet, model), progress=False)
    return {"folder": folder, "first": first, "model": model}


def _copy_tables(auto_first, tmp_path) -> None:
    shutil.copytree(auto_first["folder"] / "tables", tmp_path / "tables")


def _vectors(tbl, ids, g):
    data = tbl.to_arrow(["id", g.column])
    pos = {v: i for i, v in enumerate(data["id"].to_pylist())}
    return np.stack([np.asarray(data[g.column][pos[i]].as_py()) for i in ids])


def test_calibrate_then_auto_run_uses_it_for_vectors_and_queries(
    ray_local, tmp_path, lee_parquet, lee_articles, tiny_bert_dir
):
    job = _job(tmp_path, lee_parquet, tiny_bert_dir)
    out = CliRunner().invoke(app, ["calibrate", str(job), "--sample", "150", "--layers", "all", "--no-progress"])
    assert out.exit_code == 0, out.output
    (cal,) = list_calibrations(str(tmp_path / "tables" / "lee.lance"))
    assert f"calibration {cal.fingerprint}" in out.output and "held-out R²" in out.output
    assert cal.layers == (1, 2, 3)  # --layers all: every layer below full depth (4)
    assert 120 <= cal.info.sample_size <= 180 and cal.info.heldout_size > 10  # about 150 of 300, by id hash
    assert "lee.parquet" in cal.info.corpus and cal.info.max_length == 64
    assert (tmp_path / "tables" / "lee_calibration" / f"{cal.fingerprint}.json").is_file()

    summary = run_job(job, progress=False)
    assert summary.calibration == cal.fingerprint and summary.seconds_calibration == 0.0
    assert summary.calibration_origin.startswith("stored next to the output")
    tbl = open_table(summary.table_uri)
    assert tbl.provenance.calibration == cal.fingerprint and tbl.calibration.fingerprint == cal.fingerprint
    # stored vectors are the calibrated encoder's; full depth at full width is the raw model's
    ids = [f"lee-{i:03d}" for i in (1, 50, 120, 299)]
    texts = [lee_articles[int(i[4:])] for i in ids]
    calibrated = ElasticEncoder.from_pretrained(tiny_bert_dir, GRANS, max_length=64, calibration=cal).encode(texts)
    raw = ElasticEncoder.from_pretrained(tiny_bert_dir, GRANS, max_length=64).encode(texts)
    for g in calibrated:
        cos = (_vectors(tbl, ids, g) * calibrated[g]).sum(axis=1)
        assert cos.min() >= 0.9999, (g, cos)
    np.testing.assert_allclose(_vectors(tbl, ids, Granularity(4, 64)), raw[Granularity(4, 64)], atol=1e-5)
    assert not np.allclose(_vectors(tbl, ids, Granularity(2, 16)), raw[Granularity(2, 16)], atol=1e-2)
    # queries go through the same maps: a stored row's own text finds it with score 1
    hits = tbl.search(lee_articles[121], "l2_d16", k=1)  # (120 has a twin in the corpus; 121 is unique)
    assert hits["id"][0].as_py() == "lee-121" and hits["score"][0].as_py() == pytest.approx(1.0, abs=1e-3)
    inspect = CliRunner().invoke(app, ["inspect", summary.table_uri])
    assert inspect.exit_code == 0 and cal.fingerprint in inspect.output


def test_auto_fits_on_the_first_run_then_reuses_the_tables_own(auto_first, tmp_path, lee_parquet):
    first, model = auto_first["first"], auto_first["model"]
    assert first.calibration and first.seconds_calibration > 0
    assert re.fullmatch(r"fitted now on \d+ rows", first.calibration_origin), first.calibration_origin
    _copy_tables(auto_first, tmp_path)
    second = run_job(_job(tmp_path, lee_parquet, model), progress=False)
    assert (second.calibration, second.calibration_origin) == (first.calibration, "the table's own")
    assert second.seconds_calibration == 0.0 and second.table_version == first.table_version + 1
    assert len(list_calibrations(second.table_uri)) == 1
    # plain LanceDB, after one import, embeds a text query as embedjob does: calibration included
    import lancedb

    import storage.lancedb  # noqa: F401  (registers embedjob's query embedding with LanceDB)

    tbl = open_table(second.table_uri)
    query = tbl.to_arrow(["text"])["text"][5].as_py()
    plain = lancedb.connect(str(tmp_path / "tables")).open_table("lee")
    for g in ("l2_d16", "l4_d64"):
        hits = plain.search(query, vector_column_name=f"vec_{g}").distance_type("cosine").limit(5).to_arrow()
        assert hits["id"].to_pylist() == tbl.search(query, g, k=5)["id"].to_pylist()
    # (a job file without calibration: test_jobs_e2e.py::test_parquet_job_end_to_end, provenance says none)


def test_ray_statistics_equal_one_in_process_pass(auto_first, lee_articles):
    """Actors each sum their batches' statistics; the driver's sum solves to what one pass over the same rows gives."""
    first, model = auto_first["first"], auto_first["model"]
    assert first.calibration_origin == "fitted now on 300 rows"  # a sample larger than the corpus takes every row
    got = open_table(first.table_uri).calibration
    assert got.fingerprint == first.calibration and got.layers == (2, 3)  # the job's exits below full depth
    ids = [f"lee-{i:03d}" for i in range(300)]
    enc = ElasticEncoder.for_calibration(model, layers=[2, 3], max_length=64)
    stats = enc.calibration_stats([2, 3])
    enc.add_calibration_rows(stats, list(lee_articles), heldout_mask(ids, 0.2, seed=0))
    one = stats.solve(model_fingerprint=enc.fingerprint, pooling="mean", max_length=64)
    assert got.info.heldout_size == one.info.heldout_size
    np.testing.assert_allclose(np.abs(got.rotation[:, :16]), np.abs(one.rotation[:, :16]), atol=1e-3)
    for k in (2, 3):
        assert got.info.fits[(2, 3).index(k)].alpha == one.info.fits[(2, 3).index(k)].alpha
        x = enc.pooled_states(list(lee_articles[:20]), [k])[k]
        np.testing.assert_allclose(got.project(k, x, 16), one.project(k, x, 16), atol=1e-3)


def test_a_different_calibration_is_a_config_change(auto_first, tmp_path, lee_parquet, lee_articles):
    base, model = auto_first["first"], auto_first["model"]
    _copy_tables(auto_first, tmp_path)
    enc = ElasticEncoder.for_calibration(model, max_length=64)
    other = fit_calibration(enc, list(lee_articles[:80]), corpus="first 80 articles")
    path = other.save(tmp_path / "other.safetensors")
    with pytest.raises(JobSpecError, match=f"calibration: {base.calibration} -> {other.fingerprint}"):
        run_job(_job(tmp_path, lee_parquet, model, calibration=str(path), output={"mode": "append"}))
    with pytest.raises(JobSpecError, match=f"calibration: {base.calibration} -> None"):
        run_job(_job(tmp_path, lee_parquet, model, calibration=None, output={"mode": "append"}))
    # overwrite with a named file: one new version, and the file is copied next to the table
    named = run_job(_job(tmp_path, lee_parquet, model, calibration="other.safetensors"), progress=False)
    assert named.calibration == other.fingerprint and named.calibration_origin == f"file {path}"
    assert named.table_version == base.table_version + 1
    stored = {c.fingerprint for c in list_calibrations(named.table_uri)}
    assert stored == {base.calibration, other.fingerprint}
    assert open_table(named.table_uri).calibration.fingerprint == other.fingerprint
    # the old version still reads, with its own calibration still stored
    assert (tmp_path / "tables" / "lee_calibration" / f"{base.calibration}.safetensors").is_file()


def test_calibration_errors_are_named_before_ray_starts(tmp_path, lee_parquet, tiny_bert_dir, minilm_path):
    with pytest.raises(JobSpecError, match="calibration file .*missing.safetensors' does not exist"):
        run_job(_job(tmp_path, lee_parquet, tiny_bert_dir, calibration="missing.safetensors"))
    with pytest.raises(JobSpecError, match="must be 'auto', 'none' or a calibration file ending in .safetensors"):
        run_job(_job(tmp_path, lee_parquet, tiny_bert_dir, calibration="yes"))
    with pytest.raises(JobSpecError, match=r"calibrate.layers: \[9\] out of range; allowed: 1..4"):
        run_job(_job(tmp_path, lee_parquet, tiny_bert_dir, calibrate={"layers": [9]}))
    # a calibration of another model: the weights fingerprints differ
    enc = ElasticEncoder.for_calibration(tiny_bert_dir, max_length=64)
    fit_calibration(enc, ["one text", "two texts"] * 20).save(tmp_path / "tiny.safetensors")
    with pytest.raises(JobSpecError, match="does not fit: it was fitted for weights .* has"):
        run_job(_job(tmp_path, lee_parquet, minilm_path, calibration="tiny.safetensors"))
    assert not (tmp_path / "tables").exists()  # nothing was written
    # validate says what a run would use, without starting Ray
    out = CliRunner().invoke(app, ["validate", str(_job(tmp_path, lee_parquet, tiny_bert_dir))])
    assert out.exit_code == 0 and "to be fitted on a sample" in out.output, out.output
    out = CliRunner().invoke(app, ["validate", str(_job(tmp_path, lee_parquet, tiny_bert_dir, calibration=None))])
    assert out.exit_code == 0 and re.search(r"calibration\s+│\s+none", out.output), out.output
    assert isinstance(Calibration.load(tmp_path / "tiny.safetensors"), Calibration)
    assert calibration_dir(str(tmp_path / "t.lance")) == str(tmp_path / "t_calibration")
