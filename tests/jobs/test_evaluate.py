"""The quality map end to end: a tiny random BERT, real Lee text, a real table with a real calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedder import ElasticEncoder, Granularity, fit_calibration
from jobs.cli import app
from jobs.quality import (
    PairsFileError,
    QualityMap,
    evaluate_job,
    evaluate_table,
    quality_grid,
    read_pairs,
    sample_job_texts,
    write_heatmap,
)
from storage import (
    NoStoredTextError,
    sample_texts,
)
from tests.jobfiles import write_embedded_table, write_job

runner = CliRunner()
FAST = dict(timing_texts=16, repeats=1)  # the cost figures are beside the point here


def _job(tmp_path: Path, model: Path, corpus: Path, granularities=("l2_d16", "l4_d64"), calibration=None) -> Path:
    path = write_job(
        tmp_path / "job.toml",
        granularities=list(granularities),
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(tmp_path / "out" / "lee.lance")},
    )
    if calibration is not None:  # a top-level key: before the first [section]
        path.write_text(f"calibration = {json.dumps(calibration)}\n" + path.read_text())
    return path


def _table(tmp_path: Path, model: Path, texts, *, store_text=True, calibration=None) -> str:
    """A real embedjob table of ``texts`` (float16 vectors from the model, through ``calibration`` if given)."""
    uri = str(tmp_path / "tables" / "t.lance")
    write_embedded_table(uri, model, texts, store_text=store_text, calibration=calibration, vector_dtype="float16")
    return uri


# ----------------------------------------------------------------- the grid and the sample


def test_full_grid_is_every_layer_by_the_standard_and_the_jobs_dims():
    job = (Granularity(2, 48), Granularity(3, 64))
    grid = quality_grid(3, 64, job)
    assert grid == tuple(Granularity(layer, d) for layer in (1, 2, 3) for d in (32, 48, 64))
    assert quality_grid(3, 64, job, grid="job") == job  # the reference l3_d64 is a job granularity here
    assert quality_grid(3, 64, job[:1], grid="job") == (Granularity(2, 48), Granularity(3, 64))
    with pytest.raises(ValueError, match="grid 'some' is not one of full, job"):
        quality_grid(3, 64, job, grid="some")


def test_job_sample_is_deterministic_distinct_and_from_the_corpus(tmp_path, tiny_bert_dir, lee_jsonl, lee_articles):
    from jobs import check_job, load_job

    resolved = check_job(load_job(_job(tmp_path, tiny_bert_dir, lee_jsonl)), purpose="calibrate")
    a = sample_job_texts(resolved, 50, seed=1)
    assert a == sample_job_texts(resolved, 50, seed=1)
    assert a != sample_job_texts(resolved, 50, seed=2)
    assert len(a) == 50 == len(set(a)) and set(a) <= set(lee_articles)
    assert len(sample_job_texts(resolved, 10_000)) == len(set(lee_articles))  # a small corpus is read whole


# ----------------------------------------------------------------- end to end


def test_evaluate_job_measures_every_cell_with_full_recall_at_the_reference(
    tmp_path, tiny_bert_dir, lee_jsonl, lee_articles
):
    qmap = evaluate_job(_job(tmp_path, tiny_bert_dir, lee_jsonl), sample=120, seed=0, **FAST)
    # tiny BERT: 4 layers x hidden 64; dims 32, 64 and the job's 16
    assert [r.granularity for r in qmap.rows] == [f"l{k}_d{d}" for k in range(1, 5) for d in (16, 32, 64)]
    assert qmap.sample_size == 120 and qmap.reference == "l4_d64" and qmap.calibration is None
    ref = qmap.row("l4_d64")
    assert ref.recall_raw == 1.0 and ref.relative_cost == 1.0
    assert {r.granularity for r in qmap.rows if r.in_job} == {"l2_d16", "l4_d64"}
    assert all(r.recall_calibrated is None and r.lee_calibrated is None for r in qmap.rows)
    assert all(0.0 <= r.recall_raw <= 1.0 for r in qmap.rows)
    # a random model's layer 1 at 16 dims does not agree with its own full vector
    assert qmap.row("l1_d16").recall_raw < 0.9
    assert qmap.row("l2_d16").bytes_per_vector == 16 * 4  # float32 output by default
    # the tiny model's timings are too noisy to order (the real model's: test_layer_costs_grow_with_depth)
    assert all(r.relative_cost > 0 and r.tokens_per_second > 0 for r in qmap.rows)
    assert len({r.relative_cost for r in qmap.rows if r.layer == 2}) == 1  # a cost per layer
    assert qmap.lee_pairs == 1225 and all(-1.0 <= r.lee_raw <= 1.0 for r in qmap.rows)

    path = qmap.write_json(tmp_path / "qm.json")
    data = json.loads(path.read_text())
    assert len(data["rows"]) == 12 and data["rows"][-1]["recall_raw"] == 1.0
    assert QualityMap.from_dict(data) == qmap

    png = write_heatmap(qmap, tmp_path / "qm.png")
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_evaluate_table_gives_raw_and_calibrated_side_by_side(tmp_path, tiny_bert_dir, lee_articles):
    texts = list(dict.fromkeys(lee_articles))
    fitter = ElasticEncoder.for_calibration(tiny_bert_dir, layers=[2])
    cal = fit_calibration(fitter, texts[:200], corpus="lee")  # maps for layer 2 only
    uri = _table(tmp_path, tiny_bert_dir, texts, calibration=cal)

    qmap = evaluate_table(uri, sample=100, seed=3, use_lee=False, **FAST)
    assert qmap.calibration == cal.fingerprint and qmap.vector_dtype == "float16"
    assert qmap.row("l4_d64").recall_calibrated == 1.0  # full depth, full width: the model's own vector
    for r in qmap.rows:
        if r.layer in (1, 3):  # no map: n/a, not a silent raw figure
            assert r.recall_calibrated is None, r
        else:
            assert r.recall_calibrated is not None, r
    assert qmap.row("l2_d16").bytes_per_vector == 16 * 2
    assert any("no map for layer(s) 1, 3" in note for note in qmap.notes)
    # the calibration's rotation puts the most variance first: 16 rotated dims at full depth beat 16 raw ones
    assert qmap.row("l4_d16").recall_calibrated > qmap.row("l4_d16").recall_raw
    assert qmap.lee_pairs is None and all(r.lee_raw is None for r in qmap.rows)

    import matplotlib.image

    both = matplotlib.image.imread(write_heatmap(qmap, tmp_path / "both.png"))
    raw_only = QualityMap.from_dict({**qmap.to_dict(), "calibration": None})
    one = matplotlib.image.imread(write_heatmap(raw_only, tmp_path / "one.png"))
    assert both.shape[0] == one.shape[0] and both.shape[1] > 1.6 * one.shape[1]  # two panels, raw | calibrated

    # the sample is the stored text, deterministic by seed
    assert sample_texts(uri, 100, seed=3) == sample_texts(uri, 100, seed=3)
    assert set(sample_texts(uri, 100, seed=3)) <= set(texts)


def test_a_table_without_stored_text_cannot_be_sampled(tmp_path, tiny_bert_dir, lee_articles):
    uri = _table(tmp_path, tiny_bert_dir, lee_articles[:20], store_text=False)
    with pytest.raises(NoStoredTextError, match=r"does not store its text \(store_text = false\)"):
        evaluate_table(uri, sample=10, **FAST)
    result = runner.invoke(app, ["evaluate", uri, "--out", str(tmp_path / "qm")])
    assert result.exit_code == 2
    assert "store_text = false" in result.output and "embedjob evaluate job.toml" in result.output


# ----------------------------------------------------------------- pairs files


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_pairs_files_in_csv_tsv_and_jsonl(tmp_path):
    csv = _write(tmp_path / "p.csv", 'text_a,text_b,score,note\ncat,"a dog, barking",0.5,x\ncat,kitten,0.9,\nsun,tax,0')
    tsv = _write(tmp_path / "p.tsv", "score\ttext_a\ttext_b\n0.5\tcat\ta dog, barking\n0.9\tcat\tkitten\n0\tsun\ttax\n")
    rows = [("cat", "a dog, barking", 0.5), ("cat", "kitten", 0.9), ("sun", "tax", 0)]
    jsonl = _write(
        tmp_path / "p.jsonl",
        "\n".join(json.dumps({"text_a": a, "text_b": b, "score": s}) for a, b, s in rows) + "\n\n",
    )
    for path in (csv, tsv, jsonl):
        pairs = read_pairs(path)
        assert pairs.texts == ("cat", "a dog, barking", "kitten", "sun", "tax"), path
        assert pairs.pairs.tolist() == [[0, 1], [0, 2], [3, 4]]
        assert pairs.scores.tolist() == [0.5, 0.9, 0.0]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("h.csv", "a,b,score\nx,y,1\n", r"header \(a, b, score\) lacks text_a, text_b; the header must name"),
        ("e.csv", "text_a,text_b,score\nx,y,1\nx,,2\n", r"line 3: text_b is ''; texts must be non-empty"),
        ("s.tsv", "text_a\ttext_b\tscore\nx\ty\thigh\n", r"line 2: score 'high' is not a number"),
        ("n.csv", "text_a,text_b,score\nx,y,nan\n", r"line 2: score 'nan' is not a number"),
        ("m.jsonl", '{"text_a": "x", "score": 1}\n', r"line 1: no text_b; every row needs text_a, text_b, score"),
        ("j.jsonl", '{"text_a": "x", "text_b": "y", "score": 1}\n{oops\n', r"line 2: not valid JSON"),
        ("b.jsonl", '{"text_a": "x", "text_b": "y", "score": true}\n', r"line 1: score True is not a number"),
        ("f.csv", "text_a,text_b,score\nx,y,1\n", r"has 1 scored pair\(s\); a rank correlation needs at least 3"),
    ],
)
def test_bad_pairs_files_name_the_file_the_line_and_what_is_allowed(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(PairsFileError, match=message) as info:
        read_pairs(path)
    assert name in str(info.value)


def test_missing_pairs_file_is_a_clear_error(tmp_path):
    with pytest.raises(PairsFileError, match=r"nope.csv.*cannot read it"):
        read_pairs(tmp_path / "nope.csv")


# ----------------------------------------------------------------- the command


def test_embedjob_evaluate_writes_the_map_and_recommends(tmp_path, tiny_bert_dir, lee_jsonl, lee_articles):
    job = _job(tmp_path, tiny_bert_dir, lee_jsonl)
    docs = list(dict.fromkeys(lee_articles))
    pairs = tmp_path / "pairs.jsonl"
    with pairs.open("w") as fh:
        for i in range(12):
            fh.write(json.dumps({"text_a": docs[i], "text_b": docs[i + 1], "score": i % 5}) + "\n")
    out = tmp_path / "qm"
    args = ["evaluate", str(job), "--sample", "80", "--timing", "8", "--no-lee", "--pairs", str(pairs)]
    result = runner.invoke(app, [*args, "--out", str(out), "--recommend", "0.5", "--metric", "recall"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "quality_map.json").read_text())
    assert len(data["rows"]) == 12 and data["sample_size"] == 80 and data["pairs_count"] == 12
    assert all(r["pairs_raw"] is not None for r in data["rows"])
    import matplotlib.image

    assert matplotlib.image.imread(out / "quality_map.png").ndim == 3
    qmap = QualityMap.from_dict(data)
    chosen = qmap.recommend(0.5)
    assert f"recommended: {chosen.granularity} (recall raw" in result.output
    assert chosen.recall_raw >= 0.5
    assert "l4_d64" in result.output and "pairs.jsonl ρ raw" in result.output
    assert not chosen.in_job  # the job has l4_d64 only: the output says how to add the one chosen, whole
    assert f"embedjob run {job} --add-granularity {chosen.granularity}" in result.output.replace("\n", "")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recommend", "1.5"], "--recommend 1.5: the budget is a share of full quality in (0, 1]"),
        (["--recommend", "0"], "--recommend 0.0: the budget"),
        (["--metric", "ndcg"], "--metric 'ndcg': allowed: recall, lee, pairs"),
        (["--metric", "pairs"], "--metric pairs needs a --pairs file"),
        (["--grid", "half"], "--grid 'half': allowed: full, job"),
        (["--dims", "32,x"], "--dims '32,x': expected whole numbers"),
    ],
)
def test_embedjob_evaluate_refuses_bad_options_before_any_work(tmp_path, extra, message):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing.lance"), *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_embedjob_evaluate_names_a_missing_table(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing.lance"), "--out", str(tmp_path / "qm")])
    assert result.exit_code == 2 and "no table at" in result.output
    assert not (tmp_path / "qm").exists()


def test_recommend_follows_the_map_and_refuses_a_metric_it_lacks(tmp_path, tiny_bert_dir, lee_jsonl):
    qmap = evaluate_job(_job(tmp_path, tiny_bert_dir, lee_jsonl), sample=60, use_lee=False, grid="job", **FAST)
    assert [r.granularity for r in qmap.rows] == ["l2_d16", "l4_d64"]
    assert qmap.recommend(1.0).granularity == "l4_d64"
    low = qmap.row("l2_d16")
    # within budget, l2_d16 wins unless (noise on a tiny model) its layer measured dearer than full depth
    assert qmap.recommend(max(low.recall_raw, 0.01)).granularity == ("l2_d16" if low.relative_cost <= 1 else "l4_d64")
    with pytest.raises(ValueError, match="no lee figures to recommend from: the built-in Lee set was not used"):
        qmap.recommend(0.9, "lee")
    with pytest.raises(ValueError, match=r"in \(0, 1\], e.g. 0.95; got 1.2"):
        qmap.recommend(1.2)
    assert np.isfinite(qmap.seconds)


# ----------------------------------------------------------------- the real model


def test_real_model_correlates_with_the_lee_ratings_as_published(tmp_path, minilm_path, lee_jsonl):
    """all-MiniLM-L6-v2's full vector against the 1,225 Lee human ratings: Spearman 0.508 (bench/RESULTS.md,
    computed there with scipy)."""
    job = _job(tmp_path, minilm_path, lee_jsonl, ["l3_d64"])
    qmap = evaluate_job(job, sample=40, grid="job", timing_texts=8, repeats=1)
    assert [r.granularity for r in qmap.rows] == ["l3_d64", "l6_d384"]
    assert qmap.row("l6_d384").lee_raw == pytest.approx(0.508, abs=0.0015)
    assert qmap.row("l6_d384").recall_raw == 1.0


@pytest.mark.slow
def test_layer_costs_grow_with_depth(tmp_path, minilm_path, lee_jsonl):
    """Early exit is real: on all-MiniLM-L6-v2, stopping at layer 1 costs well under half of full depth."""
    job = _job(tmp_path, minilm_path, lee_jsonl, ["l1_d384", "l3_d384"])
    qmap = evaluate_job(job, sample=64, grid="job", use_lee=False, timing_texts=64, repeats=3)
    cost = qmap.layer_cost()
    assert cost[6] == 1.0 and cost[1] < 0.5 and cost[1] < cost[3] < 1.0, cost


def test_a_jobs_calibration_is_found_as_a_run_would_and_auto_without_one_is_raw(
    tmp_path, tiny_bert_dir, lee_jsonl, lee_articles
):
    pending = evaluate_job(
        _job(tmp_path, tiny_bert_dir, lee_jsonl, calibration="auto"), sample=40, use_lee=False, **FAST
    )
    assert pending.calibration is None and all(r.recall_calibrated is None for r in pending.rows)
    assert any("calibration = 'auto' has none fitted yet" in note for note in pending.notes)

    fitter = ElasticEncoder.for_calibration(tiny_bert_dir)  # maps for every layer
    cal = fit_calibration(fitter, list(dict.fromkeys(lee_articles))[:150])
    path = cal.save(tmp_path / "cal.safetensors")
    qmap = evaluate_job(
        _job(tmp_path, tiny_bert_dir, lee_jsonl, calibration=str(path)), sample=40, use_lee=False, **FAST
    )
    assert qmap.calibration == cal.fingerprint
    assert all(r.recall_calibrated is not None for r in qmap.rows) and not qmap.notes
    assert qmap.row("l4_d64").recall_calibrated == 1.0
