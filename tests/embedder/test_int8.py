"""The int8 CPU backend (``backend="int8"``): quality against float32 at every granularity, early exit in the
exported graph, the graph cache and its key, and the settings it refuses."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder import ElasticEncoder, EncoderConfigError, Granularity, weights_fingerprint
from embedder._int8 import graph_path, int8_cache_dir

pytest.importorskip("onnxruntime")

#: what the backend promises against the float32 vectors, at every granularity (issue 20)
MEAN_COS, MIN_COS = 0.995, 0.98


def _cosines(ref: dict, got: dict) -> dict[Granularity, np.ndarray]:
    return {g: (ref[g] * got[g]).sum(axis=1) for g in ref}


def _assert_close(ref: dict, got: dict) -> None:
    for g, cos in _cosines(ref, got).items():
        assert cos.mean() >= MEAN_COS and cos.min() >= MIN_COS, (str(g), float(cos.mean()), float(cos.min()))


def _graph_layers(path: Path) -> set[int]:
    """The block numbers the exported graph's nodes belong to (``.../layer.N/...``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {int(m.group(1)) for node in model.graph.node if (m := re.search(r"layer\.(\d+)/", node.name))}


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """The int8 graphs of this test in a folder of its own (the bundled model's folder is left alone)."""
    monkeypatch.setenv("EMBEDJOB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "int8"


def test_int8_holds_the_bounds_on_the_real_model_at_every_granularity(minilm_path, lee_articles, own_cache):
    texts = [p for article in lee_articles[:60] for p in article.split("\n") if p.strip()][:240]
    grans = ["l1_d32", "l2_d64", "l3_d64", "l3_d384", "l4_d128", "l5_d256", "l6_d64", "l6_d384"]
    ref = ElasticEncoder.from_pretrained(minilm_path, grans).encode(texts)
    enc8 = ElasticEncoder.from_pretrained(minilm_path, grans, backend="int8")
    got = enc8.encode(texts)
    _assert_close(ref, got)
    # int8 is not float32 under another name: the vectors differ (by quantization, not by a bug)
    assert min(float(c.mean()) for c in _cosines(ref, got).values()) < 0.9999
    assert enc8.describe()["backend"] == "int8" and "backend=int8" in repr(enc8)
    assert enc8.batch_tokens == 2048  # int8's own default on CPU (INT8_BATCH_TOKENS): it ran fastest there
    assert [p.name for p in own_cache.iterdir()] == [
        graph_path(
            own_cache, fingerprint=enc8.fingerprint, depth=6, layers=[1, 2, 3, 4, 5, 6], pooling=enc8.pooling
        ).name
    ]


def test_int8_on_a_tiny_random_bert_with_early_exit_and_a_calibration(tiny_bert_dir, lee_articles):
    from embedder import fit_calibration

    texts = [p for article in lee_articles[:40] for p in article.split("\n") if p.strip()][:160]
    grans = ["l1_d16", "l2_d32", "l2_d64"]
    torch.manual_seed(0)
    calibration = fit_calibration(ElasticEncoder.for_calibration(tiny_bert_dir), texts[:120], layers=[1, 2])
    ref = ElasticEncoder.from_pretrained(tiny_bert_dir, grans, calibration=calibration).encode(texts)
    enc8 = ElasticEncoder.from_pretrained(tiny_bert_dir, grans, backend="int8", calibration=calibration)
    assert enc8.calibration is not None
    _assert_close(ref, enc8.encode(texts))
    # the graph stops at the deepest requested layer: blocks 3 and 4 of 4 were never exported, so never run
    cache = int8_cache_dir(tiny_bert_dir)
    (graph,) = cache.glob("*.onnx")
    assert "depth2" in graph.name and _graph_layers(graph) == {0, 1}
    # a subset that needs layer 1 only runs a graph that stops at layer 1 (exported on first use)
    one = enc8.encode(texts[:8], ["l1_d16"])
    assert np.allclose(one[Granularity(1, 16)], enc8.encode(texts[:8])[Granularity(1, 16)], atol=1e-2)
    shallow = [p for p in cache.glob("*.onnx") if "depth1" in p.name]
    assert len(shallow) == 1 and _graph_layers(shallow[0]) == {0}


def test_the_graph_is_cached_by_weights_and_exit_layers(tiny_bert_dir, caplog):
    caplog.set_level(logging.INFO, logger="embedder")
    texts = ["The central bank kept interest rates unchanged.", "Bushfires forced residents to leave."]
    first = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d32", "l4_d64"], backend="int8")
    cache = int8_cache_dir(tiny_bert_dir)
    (graph,) = cache.glob("*.onnx")
    assert cache == tiny_bert_dir / ".embedjob" / "int8" and first.fingerprint in graph.name
    stamp = graph.stat().st_mtime_ns
    before = first.encode(texts)
    assert sum("exported the int8 graph" in r.getMessage() for r in caplog.records) == 1

    caplog.clear()
    again = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d32", "l4_d64"], backend="int8")
    assert not [r for r in caplog.records if "exported the int8 graph" in r.getMessage()]
    assert graph.stat().st_mtime_ns == stamp
    assert np.array_equal(again.encode(texts)[Granularity(4, 64)], before[Granularity(4, 64)])

    # other exit layers are another graph
    ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d32", "l4_d64"], backend="int8")
    assert len(list(cache.glob("*.onnx"))) == 2

    # a changed weight file changes the fingerprint: the graph is exported again, from the new weights
    from safetensors.torch import load_file, save_file

    (weights,) = tiny_bert_dir.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(k for k in tensors if "layer.3.output.dense.weight" in k)
    tensors[name] = tensors[name] * 3.0
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights_fingerprint(tiny_bert_dir) != first.fingerprint
    caplog.clear()
    changed = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d32", "l4_d64"], backend="int8")
    assert [r for r in caplog.records if "exported the int8 graph" in r.getMessage()]
    assert len(list(cache.glob("*.onnx"))) == 3 and changed.fingerprint != first.fingerprint
    after = changed.encode(texts)
    assert np.array_equal(after[Granularity(2, 32)], before[Granularity(2, 32)])  # blocks 1-2 untouched
    assert not np.allclose(after[Granularity(4, 64)], before[Granularity(4, 64)], atol=1e-3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "int4"}, r"backend 'int4' is not supported; allowed: torch, int8"),
        ({"backend": "int8", "device": "cuda"}, r"backend 'int8' runs on CPU; device 'cuda'"),
        ({"backend": "int8", "dtype": "bfloat16"}, r"dtype 'bfloat16' is not allowed with it"),
        ({"backend": "int8", "packed": True}, r"packed = true is not allowed"),
    ],
)
def test_settings_the_int8_backend_refuses(tiny_bert_dir, options, message):
    with pytest.raises(EncoderConfigError, match=message):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d32"], **options)
