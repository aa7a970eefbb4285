"""The second set of weights for migration tests (bench/finetune.py): a real fine-tune of all-MiniLM-L6-v2 that
loads like any model dir, gives different but sensible vectors, is cached, and is the same for the same seed."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bench.finetune import INFO, WEIGHTS, finetuned_model, sanity
from embedder import ElasticEncoder, Granularity, Pooling, read_model_dir, weight_files, weights_fingerprint

from .reference import row_cosines

FULL = Granularity(6, 384)


def _texts(lee_articles: tuple[str, ...]) -> list[str]:
    return [" ".join(a.split()[:60]) for a in lee_articles[:24]]


def test_finetune_loads_differs_and_is_cached(tmp_path, minilm_path, lee_articles):
    path = finetuned_model(4, seed=0, out_root=tmp_path)
    assert path.parent == tmp_path
    assert re.fullmatch(r"all-minilm-l6-v2-ft-s4-seed0-[0-9a-f]{8}", path.name), path.name

    # a full copy of the base's layout: every file but the weights byte for byte, and the same tensor names
    base_weights = weight_files(minilm_path)
    for file in minilm_path.rglob("*"):
        if file.is_file() and file not in base_weights:
            assert (path / file.relative_to(minilm_path)).read_bytes() == file.read_bytes(), file.name
    assert [p.relative_to(path) for p in weight_files(path)] == [Path(WEIGHTS)]
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS), "pt") as new, safe_open(str(minilm_path / WEIGHTS), "pt") as old:
        assert sorted(new.keys()) == sorted(old.keys())

    layout = read_model_dir(path)
    assert (layout.num_layers, layout.hidden_size, layout.pooling, layout.max_seq_length) == (6, 384, Pooling.MEAN, 256)
    assert weights_fingerprint(path) != weights_fingerprint(minilm_path)

    texts = _texts(lee_articles)
    tuned = ElasticEncoder.from_pretrained(path, [FULL]).encode(texts)[FULL]
    base = ElasticEncoder.from_pretrained(minilm_path, [FULL]).encode(texts)[FULL]
    cosines = row_cosines(tuned, base)
    assert 0.5 < cosines.mean() < 0.999, cosines.mean()

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    assert row_cosines(st, tuned).min() >= 0.9999

    # the second call finds the finished dir: no training, nothing rewritten, no temporary dir left
    stamps = [(path / name).stat().st_mtime_ns for name in (WEIGHTS, INFO)]
    t0 = time.perf_counter()
    again = finetuned_model(4, seed=0, out_root=tmp_path)
    took = time.perf_counter() - t0
    assert again == path
    assert [(path / name).stat().st_mtime_ns for name in (WEIGHTS, INFO)] == stamps
    assert took < 3.0, f"cached call took {took:.1f} s"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_same_seed_gives_the_same_weights(tmp_path):
    a = finetuned_model(2, seed=3, out_root=tmp_path / "a")
    b = finetuned_model(2, seed=3, out_root=tmp_path / "b")
    assert a.name == b.name
    assert (a / WEIGHTS).read_bytes() == (b / WEIGHTS).read_bytes()


@pytest.mark.parametrize("steps", [0, -5, 2.5, True])
def test_rejects_bad_steps(tmp_path, steps):
    with pytest.raises(ValueError, match=f"steps must be a positive int; got {re.escape(repr(steps))}"):
        finetuned_model(steps, out_root=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_shared_fixture_is_a_different_working_model(finetuned_minilm, minilm_path):
    figures = sanity(finetuned_minilm, minilm_path, n=200)
    assert figures.mean_cosine < 0.99, figures
    assert figures.mean_cosine > 0.5, figures
    assert figures.recall_at_1_tuned >= figures.recall_at_1_base - 0.1, figures
