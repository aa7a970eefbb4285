"""The CUDA path: half precision by default, same vectors as the CPU up to half-precision error.

Runs only where torch sees a GPU (`make test-all` on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from embedder import ElasticEncoder

from .reference import row_cosines

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GRANS = ["l2_d32", "l3_d64", "l6_d128", "l6_d384"]


def test_cuda_defaults_to_half_precision_and_agrees_with_cpu(minilm_path, lee_articles):
    texts = list(lee_articles[:64])
    gpu = ElasticEncoder.from_pretrained(minilm_path, GRANS)
    assert gpu.device.type == "cuda"
    assert gpu.dtype in (torch.bfloat16, torch.float16)
    cpu = ElasticEncoder.from_pretrained(minilm_path, GRANS, device="cpu")
    a, b = gpu.encode(texts), cpu.encode(texts)
    for g in a:
        assert row_cosines(a[g], b[g]).min() >= 0.99, str(g)


def test_cuda_float32_matches_cpu_closely(minilm_path, lee_articles):
    texts = list(lee_articles[:32])
    gpu = ElasticEncoder.from_pretrained(minilm_path, GRANS, device="cuda", dtype="float32")
    cpu = ElasticEncoder.from_pretrained(minilm_path, GRANS, device="cpu")
    a, b = gpu.encode(texts), cpu.encode(texts)
    for g in a:
        assert row_cosines(a[g], b[g]).min() >= 0.9999, str(g)


def test_cuda_async_host_copies_keep_input_order(minilm_path, lee_articles):
    """Many small batches: more than HostSink keeps in flight, each copied back asynchronously."""
    texts = list(lee_articles[:200])
    small = ElasticEncoder.from_pretrained(minilm_path, GRANS, batch_tokens=2048)
    res = small.encode_with_stats(texts)
    assert res.stats.batches > 8
    big = ElasticEncoder.from_pretrained(minilm_path, GRANS)
    assert 8192 <= big.batch_tokens <= 262144  # sized to the device's free memory
    expected = big.encode(texts)
    tokenized = small.encode_tokenized(small.tokenize(texts)).vectors
    for g in expected:
        assert row_cosines(res.vectors[g], expected[g]).min() >= 0.99, str(g)
        assert row_cosines(tokenized[g], expected[g]).min() >= 0.99, str(g)
