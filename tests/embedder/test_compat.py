"""Compatibility maps: known-answer tests of the solve, shards, save/load, two real (tiny) models, the quality
report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from embedder import (
    DEFAULT_ALPHAS,
    CompatMapError,
    CompatMaps,
    CompatSpace,
    CompatStats,
    ElasticEncoder,
    Granularity,
    compat_recall,
    heldout_mask,
    retrieval_recall,
)

OLD_SPACE = CompatSpace(settings="o" * 16, weights_fingerprint="a" * 16, model_path="old-model")
NEW_SPACE = CompatSpace(settings="n" * 16, weights_fingerprint="b" * 16, calibration="c" * 16, model_path="new")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _solve(stats: CompatStats, **kw) -> CompatMaps:
    return stats.solve(old_space=OLD_SPACE, new_space=NEW_SPACE, **kw)


def _related(n: int, rng: np.random.Generator, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Old (n, 16) and new (n, 8) rows, both functions of one hidden (n, 8) signal, plus noise on the new side."""
    z = rng.standard_normal((n, 8))
    old = z @ rng.standard_normal((8, 16)) + 0.3
    new = z @ rng.standard_normal((8, 8)) - 0.1 + noise * rng.standard_normal((n, 8))
    return old, new


def test_maps_recover_an_exact_affine_relation_and_shun_noise():
    rng = np.random.default_rng(0)
    n = 600
    old, new = _related(n, rng)
    unrelated = rng.standard_normal((n, 4))
    stats = CompatStats.empty(old=["l6_d16"], new=["l3_d8", "l1_d4"])
    stats.add({"l6_d16": old}, {"l3_d8": new, "l1_d4": unrelated}, heldout_mask(range(n), 0.2))
    maps = _solve(stats)
    assert maps.pairs == ((Granularity(6, 16), Granularity(1, 4)), (Granularity(6, 16), Granularity(3, 8)))
    # old is an exact affine function of new: recovered (unnormalized spaces leave the output as it is)
    raw = replace(maps, info=replace(maps.info, old=replace(OLD_SPACE, normalize=False)))
    np.testing.assert_allclose(raw.to_old_space(new, new="l3_d8", old="l6_d16"), old, atol=1e-3)
    exact = maps.fit("to_old", "l3_d8", "l6_d16")
    assert exact.alpha == min(DEFAULT_ALPHAS) and exact.heldout_r2 > 0.9999 and exact.heldout_rmse < 1e-3
    # pure noise explains nothing: a strong ridge wins, R^2 about 0
    noise = maps.fit("to_old", "l1_d4", "l6_d16")
    assert noise.alpha >= 1.0 and abs(noise.heldout_r2) < 0.05
    # normalized spaces: the mapped rows are unit vectors pointing where the old rows point
    out = maps.to_old_space(new[:5], new="l3_d8", old="l6_d16")
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, _unit(old[:5]), atol=1e-3)
    one = maps.to_old_space(new[0], new="l3_d8", old="l6_d16")  # a single vector works as well
    np.testing.assert_allclose(one, out[0], atol=1e-6)


def test_statistics_summed_over_shards_equal_one_pass():
    rng = np.random.default_rng(1)
    n = 700
    old, new = _related(n, rng, noise=0.5)
    mask = heldout_mask([f"row-{i}" for i in range(n)], 0.25)
    one = CompatStats.empty(old=["l6_d16"], new=["l3_d8"])
    one.add({"l6_d16": old}, {"l3_d8": new}, mask)
    shards = []
    for rows in (slice(0, 1), slice(1, 300), slice(300, n)):
        s = CompatStats.empty(old=["l6_d16"], new=["l3_d8"])
        s.add({Granularity(6, 16): old[rows]}, {"l3_d8": new[rows]}, mask[rows])
        shards.append(CompatStats.from_bytes(s.to_bytes()))  # as they travel from workers
    summed = sum(shards)
    assert summed.rows == one.rows == n and summed.heldout_rows == one.heldout_rows == int(mask.sum())
    np.testing.assert_allclose(summed.gram, one.gram, rtol=1e-12, atol=1e-9)
    a, b = _solve(one), _solve(summed)
    for key in a.to_old:
        np.testing.assert_allclose(a.to_old[key], b.to_old[key], atol=1e-5)
    assert [f.alpha for f in a.info.fits] == [f.alpha for f in b.info.fits]
    with pytest.raises(CompatMapError, match="cannot add statistics"):
        one + CompatStats.empty(old=["l6_d16"], new=["l2_d8"])


def test_ridge_strength_is_chosen_on_the_heldout_rows():
    rng = np.random.default_rng(2)
    chosen = []
    for noise, n in ((0.0, 400), (3.0, 50)):
        old, new = _related(n, rng, noise)
        stats = CompatStats.empty(old=["l6_d16"], new=["l3_d8"])
        stats.add({"l6_d16": old}, {"l3_d8": new}, heldout_mask(range(n), 0.3))
        chosen.append(_solve(stats).fit("to_old", "l3_d8", "l6_d16").alpha)
    assert chosen[0] < chosen[1]
    assert _solve(stats, alphas=[0.5]).fit("to_new", "l6_d16", "l3_d8").alpha == 0.5
    with pytest.raises(CompatMapError, match="ridge alphas must be finite and > 0"):
        _solve(stats, alphas=[0.0])


def test_bad_input_is_named():
    stats = CompatStats.empty(old=["l6_d16"], new=["l3_d8"])
    with pytest.raises(CompatMapError, match=r"no new vectors for l3_d8; the stats collect new \['l3_d8'\]"):
        stats.add({"l6_d16": np.zeros((3, 16))}, {})
    with pytest.raises(CompatMapError, match=r"new l3_d8 vectors have shape \(2, 8\); expected \(3, 8\)"):
        stats.add({"l6_d16": np.zeros((3, 16))}, {"l3_d8": np.zeros((2, 8))})
    stats.add({"l6_d16": np.ones((6, 16))}, {"l3_d8": np.ones((6, 8))}, [True] + [False] * 5)
    with pytest.raises(CompatMapError, match="the sample has 5 and 1: migrate or sample more rows"):
        _solve(stats)
    with pytest.raises(CompatMapError, match="needs old and new granularities"):
        CompatStats.empty(old=[], new=["l3_d8"])


def _fitted(seed: int = 3) -> tuple[CompatMaps, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    old, new = _related(500, rng, noise=0.2)
    old, new = _unit(old), _unit(new)
    mask = heldout_mask(range(500), 0.2)
    stats = CompatStats.empty(old=["l6_d16"], new=["l3_d8"])
    stats.add({"l6_d16": old}, {"l3_d8": new}, mask)
    return _solve(stats, source="unit test", seed=seed), old, new, mask


def test_checks_measure_heldout_rows_and_put_scores_on_the_new_scale():
    maps, old, new, mask = _fitted()
    assert maps.check("l6_d16", "l3_d8") is None
    before = maps.scores_to_new([0.1, 0.5], old="l6_d16", new="l3_d8")
    np.testing.assert_allclose(before, [0.1, 0.5])  # no measurements: cosines left as they are
    checked = maps.checked({"l6_d16": old[mask]}, {"l3_d8": new[mask]})
    c = checked.check("l6_d16", "l3_d8")
    assert c.rows == int(mask.sum())
    assert c.to_old_cosine > 0.9 and c.to_old_top1 > 0.8 and c.to_new_cosine > 0.9
    assert checked.fingerprint != maps.fingerprint  # the score scales change search results: part of the identity
    # equating: the mapped queries' cosines with other rows' old vectors get the new vectors' mean and spread
    mapped = checked.to_old_space(new[mask], new="l3_d8", old="l6_d16")
    off = ~np.eye(len(mapped), dtype=bool)
    scaled = checked.scores_to_new((mapped @ old[mask].T)[off], old="l6_d16", new="l3_d8")
    target = (new[mask] @ new[mask].T)[off]
    assert scaled.mean() == pytest.approx(target.mean(), abs=1e-3)
    assert scaled.std() == pytest.approx(target.std(), rel=1e-3)


def test_save_and_load_round_trip(tmp_path):
    maps, old, new, mask = _fitted()
    maps = maps.checked({"l6_d16": old[mask]}, {"l3_d8": new[mask]})
    path = maps.save(tmp_path / "maps")
    assert path.name == "maps.safetensors"
    back = CompatMaps.load(path)
    assert back.fingerprint == maps.fingerprint and back.info == maps.info
    for key, w in maps.to_new.items():
        np.testing.assert_array_equal(back.to_new[key], w)
    np.testing.assert_allclose(
        back.to_old_space(new[:3], new="l3_d8", old="l6_d16"), maps.to_old_space(new[:3], new="l3_d8", old="l6_d16")
    )
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["fingerprint"] == maps.fingerprint and sidecar["new"]["calibration"] == "c" * 16
    assert sidecar["rows"] == 500 and {f["direction"] for f in sidecar["fits"]} == {"to_old", "to_new"}
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(CompatMapError, match="damaged"):
        CompatMaps.load(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello")
    with pytest.raises(CompatMapError, match="not a safetensors file"):
        CompatMaps.load(tmp_path / "junk.safetensors")
    with pytest.raises(CompatMapError, match="does not exist"):
        CompatMaps.load(tmp_path / "missing.safetensors")
    with pytest.raises(CompatMapError, match=r"no compatibility map for old l6_d16 and new l4_d8; the maps have"):
        maps.to_old_space(new, new="l4_d8", old="l6_d16")


def test_retrieval_recall_and_the_four_ways_to_search():
    maps, old, new, mask = _fitted(4)
    maps = maps.checked({"l6_d16": old[mask]}, {"l3_d8": new[mask]})
    docs = np.flatnonzero(~mask)[:100]
    queries_new = new[docs] + 0.05 * np.random.default_rng(5).standard_normal((100, 8))
    queries_old = old[docs] + 0.05 * np.random.default_rng(6).standard_normal((100, 16))
    relevant = list(range(100))
    assert retrieval_recall(new[docs], new[docs], relevant, k=1) == 1.0
    assert retrieval_recall(new[docs], new[docs], [(i + 1) % 100 for i in relevant], k=1) == 0.0
    # two relevant documents, k = 1: finding one of them is all that k allows
    assert retrieval_recall(new[docs], new[docs], [[i, (i + 1) % 100] for i in relevant], k=1) == 1.0
    migrated = np.arange(100) < 50
    r = compat_recall(
        maps,
        old_queries=queries_old,
        new_queries=queries_new,
        old_docs=old[docs],
        new_docs=new[docs],
        relevant=relevant,
        old="l6_d16",
        new="l3_d8",
        k=5,
        migrated=migrated,
    )
    assert r["old->old"] == retrieval_recall(queries_old, old[docs], relevant, k=5)
    assert r["new->new"] == retrieval_recall(queries_new, new[docs], relevant, k=5)
    assert r["new->map->old"] > 0.5 * r["new->new"] and r["old->map->new"] > 0.5 * r["old->old"]
    assert 0.0 < r["merged"] <= 1.0 and r["merged_migrated"] is not None and r["merged_unmigrated"] is not None
    with pytest.raises(ValueError, match=r"relevant documents \[100\] must be row numbers in 0..99"):
        retrieval_recall(new[docs], new[docs], [100] * 100)


def test_a_map_between_two_real_models(_tiny_models, lee_articles):
    """Two different (tiny, random) BERT-block models on real text: the map does far better than no map."""
    from jobs.quality import halves, migration_quality

    texts = [" ".join(a.split()[:40]) for a in lee_articles]
    old_enc = ElasticEncoder.from_pretrained(_tiny_models["bert"], ["l4_d64"], max_length=64)
    new_enc = ElasticEncoder.from_pretrained(_tiny_models["roberta"], ["l2_d32", "l4_d64"], max_length=64)
    old_v, new_v = old_enc.encode(texts), new_enc.encode(texts)
    mask = heldout_mask(range(len(texts)), 0.25)
    stats = CompatStats.empty(old=old_enc.granularities, new=new_enc.granularities)
    stats.add(old_v, new_v, mask)
    maps = _solve(stats).checked({g: v[mask] for g, v in old_v.items()}, {g: v[mask] for g, v in new_v.items()})
    fit = maps.fit("to_old", "l4_d64", "l4_d64")
    # no map (the other model's vector as it is) is far worse than predicting the mean; the map is better than both
    assert fit.identity_r2 is not None and fit.identity_r2 < -1.0
    assert fit.heldout_r2 > 0.05 and maps.fit("to_new", "l4_d64", "l4_d64").heldout_r2 > 0.05
    # a held-out row's mapped vector finds the row's own old vector far more often than the unmapped one does
    held_old, held_new = old_v[Granularity(4, 64)][mask], new_v[Granularity(4, 64)][mask]
    rows = np.arange(len(held_old))
    unmapped_top1 = float(np.mean(np.argmax(held_new @ held_old.T, axis=1) == rows))
    check = maps.check("l4_d64", "l4_d64")
    assert check.rows == len(rows) and check.to_old_top1 > max(5 * unmapped_top1, 5 / len(rows))
    queries, docs, relevant = halves(texts[:80])
    report = migration_quality(maps, docs, queries, relevant, old=old_enc, new=new_enc, k=5)
    assert (report["old"], report["new"], report["queries"], report["migrated_fraction"]) == (
        "l4_d64",
        "l4_d64",
        80,
        0.5,
    )
    assert all(
        0.0 <= report[key] <= 1.0 for key in ("old->old", "new->new", "new->map->old", "old->map->new", "merged")
    )
    with pytest.raises(ValueError, match="has no pair for old l6_d384"):
        migration_quality(maps, docs, queries, relevant, old=old_enc, new=new_enc, old_granularity="l6_d384")
