"""Calibration: known-answer tests of the solve, save/load, and the encoder applying it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from embedder import (
    DEFAULT_ALPHAS,
    Calibration,
    CalibrationError,
    CalibrationStats,
    ElasticEncoder,
    Granularity,
    fit_calibration,
    heldout_mask,
)


def _solve(stats: CalibrationStats, **kw) -> Calibration:
    return stats.solve(model_fingerprint="f" * 16, pooling="mean", max_length=128, **kw)


def _pca_ordered(n: int, h: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose covariance is exactly diagonal with decreasing variances (plus a mean)."""
    z = rng.standard_normal((n, h))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # orthonormal columns, each summing to 0
    spread = np.linspace(3.0, 0.5, h)
    return q * spread * np.sqrt(n) + rng.standard_normal(h), spread


def test_rotation_of_pca_ordered_data_is_the_identity():
    rng = np.random.default_rng(0)
    y, spread = _pca_ordered(400, 8, rng)
    stats = CalibrationStats.empty(num_layers=3, hidden_size=8, layers=[1])
    stats.add({1: y}, y, heldout_mask(range(400), 0.25))
    cal = _solve(stats)
    np.testing.assert_allclose(cal.rotation, np.eye(8), atol=1e-6)
    np.testing.assert_allclose(cal.variance, spread**2, rtol=1e-6)
    # prefixes of already-ordered data are the data's own first columns
    np.testing.assert_allclose(cal.project(3, y, 3), y[:, :3], atol=1e-4)
    np.testing.assert_array_equal(cal.project(3, y, 8), y.astype(np.float32))  # full width: untouched


def test_rotation_orders_axes_by_variance_and_is_orthogonal():
    rng = np.random.default_rng(1)
    y, spread = _pca_ordered(500, 6, rng)
    perm = np.array([3, 0, 5, 1, 4, 2])  # shuffle the axes: the rotation must put them back in order
    stats = CalibrationStats.empty(num_layers=2, hidden_size=6, layers=[])
    stats.add({}, y[:, perm], heldout_mask(range(500), 0.2))
    cal = _solve(stats)
    np.testing.assert_allclose(cal.rotation.T @ cal.rotation, np.eye(6), atol=1e-6)
    np.testing.assert_allclose(np.abs(cal.rotation[np.argsort(perm), :]), np.eye(6), atol=1e-6)
    np.testing.assert_allclose(cal.variance, spread**2, rtol=1e-6)


def test_maps_recover_an_exact_linear_function_of_the_target():
    rng = np.random.default_rng(2)
    n, h = 600, 8
    y = rng.standard_normal((n, h)) @ np.diag(np.linspace(2, 0.3, h))
    a = np.linalg.qr(rng.standard_normal((h, h)))[0] @ np.diag(np.linspace(1.0, 2.5, h))  # invertible
    b = rng.standard_normal(h)
    x = y @ a + b  # layer 1 is an exact affine function of the target
    x2 = rng.standard_normal((n, h))  # layer 2 is pure noise
    stats = CalibrationStats.empty(num_layers=3, hidden_size=h, layers=[1, 2])
    stats.add({1: x, 2: x2}, y, heldout_mask(range(n), 0.2, seed=3))
    cal = _solve(stats)
    target = y @ cal.rotation
    np.testing.assert_allclose(cal.project(1, x), target, atol=1e-4)
    inv = np.linalg.inv(a) @ cal.rotation
    np.testing.assert_allclose(cal.maps[1][:h], inv, atol=1e-4)
    np.testing.assert_allclose(cal.maps[1][h], -b @ inv, atol=1e-4)
    fits = {f.layer: f for f in cal.info.fits}
    assert fits[1].alpha == min(DEFAULT_ALPHAS)  # exact data: the weakest ridge wins on held-out rows
    assert fits[1].heldout_r2 > 0.9999
    # noise explains nothing: the held-out choice is a strong ridge, and R^2 is about 0
    assert fits[2].alpha >= 1.0
    assert abs(fits[2].heldout_r2) < 0.05


def test_statistics_summed_over_shards_equal_one_pass():
    rng = np.random.default_rng(4)
    n, h = 900, 10
    y = rng.standard_normal((n, h))
    x = {1: y @ rng.standard_normal((h, h)) + rng.standard_normal((n, h)), 2: rng.standard_normal((n, h)) + y}
    mask = heldout_mask(range(n), 0.2)
    one = CalibrationStats.empty(num_layers=4, hidden_size=h, layers=[1, 2])
    one.add(x, y, mask)
    shards = []
    for rows in (slice(0, 250), slice(250, 251), slice(251, 700), slice(700, n)):
        s = CalibrationStats.empty(num_layers=4, hidden_size=h, layers=[2, 1])
        s.add({k: v[rows] for k, v in x.items()}, y[rows], mask[rows])
        shards.append(CalibrationStats.from_bytes(s.to_bytes()))  # as they travel from actors
    summed = sum(shards)
    assert summed.rows == one.rows == n and summed.heldout_rows == one.heldout_rows == int(mask.sum())
    np.testing.assert_allclose(summed.target_gram, one.target_gram, rtol=1e-12)
    for k in (1, 2):
        np.testing.assert_allclose(summed.input_gram[k], one.input_gram[k], rtol=1e-12)
        np.testing.assert_allclose(summed.cross[k], one.cross[k], rtol=1e-12, atol=1e-12)
    a, b = _solve(one), _solve(summed)
    np.testing.assert_allclose(a.rotation, b.rotation, atol=1e-6)
    for k in (1, 2):
        np.testing.assert_allclose(a.maps[k], b.maps[k], atol=1e-6)
    assert [f.alpha for f in a.info.fits] == [f.alpha for f in b.info.fits]


def test_ridge_strength_follows_the_data_not_a_constant():
    rng = np.random.default_rng(5)
    h = 16
    chosen = []
    for noise, n in ((0.0, 400), (2.0, 60)):
        y = rng.standard_normal((n, h))
        x = y @ rng.standard_normal((h, h)) + noise * rng.standard_normal((n, h))
        stats = CalibrationStats.empty(num_layers=2, hidden_size=h, layers=[1])
        stats.add({1: x}, y, heldout_mask(range(n), 0.3))
        chosen.append(_solve(stats).info.fits[0].alpha)
    assert chosen[0] < chosen[1]
    y = rng.standard_normal((100, h))
    stats = CalibrationStats.empty(num_layers=2, hidden_size=h, layers=[1])
    stats.add({1: y}, y, heldout_mask(range(100), 0.3))
    assert _solve(stats, alphas=[0.5]).info.fits[0].alpha == 0.5


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    y = rng.standard_normal((200, 8))
    stats = CalibrationStats.empty(num_layers=3, hidden_size=8, layers=[1, 2])
    stats.add({1: y + 0.1, 2: y * 2}, y, heldout_mask(range(200), 0.2))
    cal = _solve(stats, corpus="unit-test corpus", seed=7)
    path = cal.save(tmp_path / "cal")  # suffix added
    assert path.name == "cal.safetensors"
    back = Calibration.load(path)
    assert back.fingerprint == cal.fingerprint and back.layers == (1, 2)
    np.testing.assert_array_equal(back.rotation, cal.rotation)
    np.testing.assert_array_equal(back.maps[2], cal.maps[2])
    assert back.info == cal.info and back.info.corpus == "unit-test corpus" and back.info.sample_size == 200
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["fingerprint"] == cal.fingerprint and sidecar["fits"][0]["layer"] == 1
    assert sidecar["model_fingerprint"] == "f" * 16 and "variance_kept" in sidecar
    # damaged and foreign files are refused by name
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match="damaged"):
        Calibration.load(tmp_path / "bad.safetensors")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CalibrationError, match="not an embedjob calibration"):
        Calibration.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello")
    with pytest.raises(CalibrationError, match="not a safetensors file"):
        Calibration.load(tmp_path / "junk.safetensors")
    with pytest.raises(CalibrationError, match="does not exist"):
        Calibration.load(tmp_path / "missing.safetensors")


def test_bad_input_is_named():
    with pytest.raises(CalibrationError, match=r"layer\(s\) 4 out of range; maps exist for layers 1..3"):
        CalibrationStats.empty(num_layers=4, hidden_size=8, layers=[4])
    stats = CalibrationStats.empty(num_layers=4, hidden_size=8, layers=[1])
    with pytest.raises(CalibrationError, match=r"targets have shape \(3, 5\); expected \(n, 8\)"):
        stats.add({1: np.zeros((3, 8))}, np.zeros((3, 5)))
    with pytest.raises(CalibrationError, match="no pooled states for layer 1"):
        stats.add({}, np.zeros((3, 8)))
    stats.add({1: np.ones((5, 8))}, np.ones((5, 8)), [True, False, False, False, False])
    with pytest.raises(CalibrationError, match="the sample has 4 and 1: sample more rows"):
        _solve(stats)
    with pytest.raises(CalibrationError, match="cannot add statistics"):
        stats + CalibrationStats.empty(num_layers=4, hidden_size=8, layers=[2])
    with pytest.raises(CalibrationError, match=r"held-out fraction must be in \(0, 1\)"):
        heldout_mask([1, 2], 1.5)
    err = CalibrationError("calibration abc does not fit: it was fitted for weights x")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_heldout_mask_is_deterministic_and_near_its_fraction():
    keys = [f"doc-{i}" for i in range(5000)]
    a, b = heldout_mask(keys, 0.2, seed=1), heldout_mask(keys, 0.2, seed=1)
    np.testing.assert_array_equal(a, b)
    assert 0.18 < a.mean() < 0.22
    assert (a != heldout_mask(keys, 0.2, seed=2)).any()


# ------------------------------------------------------------------ the encoder applies it


@pytest.fixture
def tiny_fit(tiny_bert_dir, lee_articles):
    """A calibration of the tiny random BERT (4 layers, hidden 64), fitted on 120 real articles."""
    enc = ElasticEncoder.for_calibration(tiny_bert_dir, max_length=64)
    return fit_calibration(enc, list(lee_articles[:120]), corpus="lee[:120]")


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_encoder_applies_the_calibration(tiny_bert_dir, tiny_fit, lee_articles):
    cal = tiny_fit
    assert cal.layers == (1, 2, 3) and cal.info.sample_size == 120 and cal.info.max_length == 64
    texts = list(lee_articles[200:216])
    grans = ["l2_d16", "l2_d64", "l4_d16", "l4_d64"]
    raw = ElasticEncoder.from_pretrained(tiny_bert_dir, grans, max_length=64)
    calibrated = ElasticEncoder.from_pretrained(tiny_bert_dir, grans, max_length=64, calibration=cal)
    assert calibrated.calibration is cal and calibrated.describe()["calibration"] == cal.fingerprint
    assert cal.fingerprint in repr(calibrated)
    got, before = calibrated.encode(texts), raw.encode(texts)
    states = raw.pooled_states(texts)
    # full depth, full width: exactly the model's vector
    np.testing.assert_allclose(got[Granularity(4, 64)], before[Granularity(4, 64)], atol=1e-6)
    # everything else: the calibration's projection, cut and re-normalized
    np.testing.assert_allclose(got[Granularity(2, 16)], _norm(cal.project(2, states[2], 16)), atol=1e-5)
    np.testing.assert_allclose(got[Granularity(2, 64)], _norm(cal.project(2, states[2], 64)), atol=1e-5)
    np.testing.assert_allclose(got[Granularity(4, 16)], _norm(states[4] @ cal.rotation[:, :16]), atol=1e-5)
    assert not np.allclose(got[Granularity(2, 16)], before[Granularity(2, 16)], atol=1e-2)
    # a subset still runs only to its own depth, through the same maps
    sub = calibrated.encode(texts, ["l2_d16"])
    np.testing.assert_allclose(sub[Granularity(2, 16)], got[Granularity(2, 16)], atol=1e-6)


def test_encoder_loads_a_saved_calibration(tiny_bert_dir, tiny_fit, lee_articles, tmp_path):
    path = tiny_fit.save(tmp_path / "tiny.safetensors")
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d32"], max_length=64, calibration=str(path))
    assert enc.calibration is not None and enc.calibration.fingerprint == tiny_fit.fingerprint
    direct = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d32"], max_length=64, calibration=tiny_fit)
    texts = list(lee_articles[:4])
    np.testing.assert_array_equal(enc.encode(texts)[Granularity(3, 32)], direct.encode(texts)[Granularity(3, 32)])


def test_encoder_refuses_a_calibration_that_does_not_fit(tiny_bert_dir, tiny_fit, lee_articles, caplog):
    enc = ElasticEncoder.for_calibration(tiny_bert_dir, layers=[2], max_length=64)
    only_l2 = fit_calibration(enc, list(lee_articles[:60]), layers=[2])
    with pytest.raises(CalibrationError, match=r"no map for layer\(s\) 3; it has maps for layers 2"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d32"], max_length=64, calibration=only_l2)
    with pytest.raises(CalibrationError, match="fitted with mean pooling, the encoder uses cls"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d32"], pooling="cls", max_length=64, calibration=tiny_fit)
    with caplog.at_level("WARNING", logger="embedder"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d32"], max_length=32, calibration=tiny_fit)
    assert "was fitted with max_length 64; this encoder uses 32" in caplog.text
    # other weights: the fingerprint differs
    import torch
    from safetensors.torch import load_file, save_file

    weights = tiny_bert_dir / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[name] = tensors[name] + torch.randn_like(tensors[name])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(CalibrationError, match=f"fitted for weights {tiny_fit.info.model_fingerprint}"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d32"], max_length=64, calibration=tiny_fit)


def test_fitting_needs_full_depth_and_known_layers(tiny_bert_dir):
    shallow = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d64"])
    with pytest.raises(Exception, match="needs full depth"):
        shallow.calibration_stats()
    full = ElasticEncoder.for_calibration(tiny_bert_dir, layers=[1])
    with pytest.raises(Exception, match=r"layer\(s\) 3 are not exit layers"):
        full.pooled_states(["a text"], [3])


def test_calibration_makes_real_minilm_early_layers_agree_with_full_depth(minilm_path, lee_articles):
    """The real all-MiniLM-L6-v2: fitted on the Lee articles, evaluated on Wikipedia passages it never saw."""
    from bench.corpora import wiki_passages

    fit_texts = list(dict.fromkeys(lee_articles))
    eval_texts = list(dict.fromkeys(wiki_passages()))[:400]
    assert not set(fit_texts) & set(eval_texts)
    cal = fit_calibration(ElasticEncoder.for_calibration(minilm_path, layers=[2]), fit_texts)
    grans = ["l2_d64", "l6_d64", "l6_d384"]
    raw = ElasticEncoder.from_pretrained(minilm_path, grans).encode(eval_texts)
    got = ElasticEncoder.from_pretrained(minilm_path, grans, calibration=cal).encode(eval_texts)

    def recall(vectors: np.ndarray, truth: np.ndarray) -> float:
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        found = np.argsort(-sims, axis=1)[:, :10]
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))

    full = Granularity(6, 384)
    truth_sims = raw[full] @ raw[full].T
    np.fill_diagonal(truth_sims, -np.inf)
    truth = np.argsort(-truth_sims, axis=1)[:, :10]
    np.testing.assert_allclose(got[full], raw[full], atol=1e-6)
    l2 = Granularity(2, 64)
    assert recall(got[l2], truth) >= 1.3 * recall(raw[l2], truth)
    l6 = Granularity(6, 64)
    assert recall(got[l6], truth) > recall(raw[l6], truth)
