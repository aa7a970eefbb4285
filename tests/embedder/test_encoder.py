from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.models.bert.modeling_bert import BertLayer

from embedder import (
    ElasticEncoder,
    EncoderConfigError,
    Granularity,
    GranularityError,
    InvalidTextError,
    ModelError,
    Pooling,
    TextTokenizer,
    UnsupportedModelError,
    find_blocks,
    tokenized_from_flat,
)

from .reference import reference_vectors, row_cosines

TEXTS = [
    "Bushfires forced hundreds of residents to leave their homes in New South Wales.",
    "The central bank kept interest rates unchanged.",
    "A short one.",
    "Cricket: Australia won the final test by an innings and 40 runs at the SCG on Sunday.",
    "Rain is expected across the south-east over the weekend, easing the fire danger.",
]


def _assert_matches(out, ref, minimum=0.99999):
    for (layer, dim), expected in ref.items():
        got = out[Granularity(layer, dim)]
        assert got.dtype == np.float32
        assert got.shape == expected.shape
        cos = row_cosines(got.astype(np.float64), expected)
        assert cos.min() >= minimum, f"l{layer}_d{dim}: min cosine {cos.min()}"


def test_matches_reference_on_tiny_random_bert(tiny_bert_dir):
    pairs = [(1, 16), (2, 64), (3, 8), (4, 32), (4, 64)]
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, pairs, max_length=128)
    out = enc.encode(TEXTS)
    assert set(out) == {Granularity(*p) for p in pairs}
    _assert_matches(out, reference_vectors(tiny_bert_dir, TEXTS, pairs, max_length=128))
    for g, vecs in out.items():
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5, err_msg=str(g))


def test_matches_reference_on_real_minilm(minilm_path, lee_articles):
    texts = list(lee_articles[:24]) + TEXTS  # many Lee articles exceed 256 tokens: truncation is exercised
    pairs = [(1, 32), (3, 64), (3, 128), (6, 128), (6, 384)]
    enc = ElasticEncoder.from_pretrained(minilm_path, pairs)
    assert enc.max_length == 256  # read from sentence_bert_config.json
    assert enc.pooling is Pooling.MEAN  # read from 1_Pooling/config.json
    result = enc.encode_with_stats(texts)
    _assert_matches(result.vectors, reference_vectors(minilm_path, texts, pairs, max_length=256))
    assert result.stats.truncated > 0
    assert result.stats.texts == len(texts)


def test_full_depth_matches_sentence_transformers(minilm_path, lee_articles):
    from sentence_transformers import SentenceTransformer

    texts = list(lee_articles[:16])
    st = SentenceTransformer(str(minilm_path), device="cpu")
    expected = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    out = ElasticEncoder.from_pretrained(minilm_path, ["l6_d384"]).encode(texts)
    assert row_cosines(out[Granularity(6, 384)], expected).min() >= 0.99999


def test_finds_blocks_generically_on_other_architectures(tiny_other_arch):
    pairs = [(1, 32), (2, 16), (3, 32)]
    enc = ElasticEncoder.from_pretrained(tiny_other_arch, pairs, max_length=128)
    expected_path = {"tiny-distilbert": "transformer.layer", "tiny-modernbert": "layers"}[tiny_other_arch.name]
    assert enc._exits.blocks_path == expected_path
    assert len(enc._exits.blocks) == 3
    _assert_matches(enc.encode(TEXTS), reference_vectors(tiny_other_arch, TEXTS, pairs, max_length=128))


def test_attention_runs_through_sdpa(tiny_bert_dir, tiny_other_arch):
    """PyTorch's fused attention (flash / memory-efficient kernels on CUDA) is asked for explicitly."""
    for path in (tiny_bert_dir, tiny_other_arch):
        enc = ElasticEncoder.from_pretrained(path, [(2, 16)], max_length=64)
        assert enc.model.config._attn_implementation == "sdpa", path.name


def test_unknown_block_layout_is_a_clear_error():
    with pytest.raises(UnsupportedModelError) as info:
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)), num_layers=4)
    assert "cannot find its list of 4 transformer blocks" in str(info.value)


@pytest.fixture
def count_block_calls(monkeypatch):
    """Counts BertLayer forward calls by layer index, through the real transformers class."""
    calls: dict[int, int] = {}
    original = BertLayer.forward

    def counting(self, *args, **kwargs):
        idx = self.attention.self.layer_idx
        calls[idx] = calls.get(idx, 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertLayer, "forward", counting)
    return calls


def test_blocks_after_the_deepest_layer_never_run(tiny_bert_dir, count_block_calls):
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l1_d32", "l2_d64"], batch_tokens=64, max_length=128)
    assert len(enc._exits.blocks) == 2  # blocks 3 and 4 were dropped at load time
    result = enc.encode_with_stats(TEXTS)
    assert result.stats.batches > 1
    # zero-based layer_idx: blocks 0 and 1 ran once per batch, 2 and 3 never
    assert count_block_calls == {0: result.stats.batches, 1: result.stats.batches}


def test_a_subset_runs_only_to_its_own_deepest_layer(tiny_bert_dir, count_block_calls):
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l1_d32", "l4_d64"], max_length=128)
    full = enc.encode(TEXTS)
    count_block_calls.clear()
    part = enc.encode(TEXTS, granularities=["l1_d32"])
    assert set(count_block_calls) == {0}
    assert list(part) == [Granularity(1, 32)]
    np.testing.assert_allclose(part[Granularity(1, 32)], full[Granularity(1, 32)], atol=1e-6)
    # and the encoder is whole again afterwards
    count_block_calls.clear()
    enc.encode(TEXTS)
    assert set(count_block_calls) == {0, 1, 2, 3}
    with pytest.raises(GranularityError, match="l2_d8 are not served by this encoder; it serves l1_d32, l4_d64"):
        enc.encode(TEXTS, granularities=["l2_d8"])


def test_input_order_survives_length_sorting_and_batching(tiny_bert_dir, lee_articles):
    texts = [a[: 40 + 37 * i] for i, a in enumerate(lee_articles[:40])]  # lengths all differ
    one_batch = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l4_d64"], batch_tokens=1_000_000)
    many = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l4_d64"], batch_tokens=300)
    a = one_batch.encode(texts)[Granularity(4, 64)]
    res = many.encode_with_stats(texts)
    assert res.stats.batches >= 10
    np.testing.assert_allclose(res.vectors[Granularity(4, 64)], a, atol=1e-5)
    # each row is its own text's vector: compare with one-at-a-time encoding
    for i in (0, 17, 39):
        single = one_batch.encode([texts[i]])[Granularity(4, 64)][0]
        np.testing.assert_allclose(a[i], single, atol=1e-5)
    reversed_rows = one_batch.encode(texts[::-1])[Granularity(4, 64)]
    np.testing.assert_allclose(reversed_rows[::-1], a, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "max", "lasttoken", "mean"])
def test_pooling_modes_match_reference(tiny_bert_dir, pooling):
    pairs = [(2, 32), (4, 64)]
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, pairs, pooling=pooling, max_length=128)
    assert enc.pooling is Pooling.parse(pooling)
    _assert_matches(enc.encode(TEXTS), reference_vectors(tiny_bert_dir, TEXTS, pairs, pooling=pooling))


def _write_st_layout(model_dir: Path, pooling_cfg: dict, extra_modules: tuple[dict, ...] = ()) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        *extra_modules,
    ]
    (model_dir / "modules.json").write_text(json.dumps(modules))
    (model_dir / "1_Pooling").mkdir()
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **pooling_cfg}))
    (model_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))


def test_pooling_and_max_length_are_read_from_the_sentence_transformers_config(tiny_bert_dir):
    _write_st_layout(tiny_bert_dir, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d48"])
    assert enc.pooling is Pooling.CLS
    assert enc.max_length == 32
    ref = reference_vectors(tiny_bert_dir, TEXTS, [(3, 48)], pooling="cls", max_length=32)
    _assert_matches(enc.encode(TEXTS), ref)
    # an explicit argument wins over the file
    assert ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d48"], pooling="max").pooling is Pooling.MAX


def test_unsupported_sentence_transformers_pieces_are_refused(tiny_bert_dir):
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    _write_st_layout(tiny_bert_dir, {"pooling_mode_mean_tokens": True}, (dense,))
    with pytest.raises(UnsupportedModelError, match="module 'sentence_transformers.models.Dense'"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d48"])


def test_weighted_mean_pooling_config_is_refused(tiny_bert_dir):
    _write_st_layout(tiny_bert_dir, {"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(UnsupportedModelError, match="exactly one of mean / cls / max / lasttoken"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d48"])


def test_without_normalize_vectors_are_raw_pooled_prefixes(tiny_bert_dir):
    pairs = [(2, 16), (4, 64)]
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, pairs, normalize=False, max_length=128)
    out = enc.encode(TEXTS)
    ref = reference_vectors(tiny_bert_dir, TEXTS, pairs, normalize=False)
    for pair, expected in ref.items():
        np.testing.assert_allclose(out[Granularity(*pair)], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.linalg.norm(out[Granularity(4, 64)], axis=1), 1.0)


def test_validation_happens_up_front_and_names_the_value(tiny_bert_dir, tmp_path):
    with pytest.raises(GranularityError, match="layer 5 is out of range; tiny-bert has layers 1..4"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l5_d8"])
    with pytest.raises(GranularityError, match="dim 65 is out of range; tiny-bert has dims 1..64"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, [(2, 65)])
    with pytest.raises(GranularityError, match="at least one granularity"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, [])
    with pytest.raises(EncoderConfigError, match="max_length 4096 is out of range; tiny-bert allows 2..128 tokens"):
        ElasticEncoder.from_pretrained(tiny_bert_dir, ["l1_d8"], max_length=4096)
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError) as info:
        ElasticEncoder.from_pretrained(missing, ["l1_d8"])
    assert str(info.value) == f"model '{missing}': directory does not exist (models are loaded from local dirs only)"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.json in .*is this a Hugging Face model dir"):
        ElasticEncoder.from_pretrained(empty, ["l1_d8"])
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file; expected a model directory"):
        ElasticEncoder.from_pretrained(a_file, ["l1_d8"])


def test_bad_texts_are_rejected_with_their_positions(tiny_bert_dir):
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l1_d8"])
    with pytest.raises(InvalidTextError) as info:
        enc.encode(["fine", None, "", "  ", 3, "also fine"])  # type: ignore[list-item]
    err = info.value
    assert err.positions == [1, 2, 3, 4]
    assert err.reasons == ["null text", "empty text", "whitespace-only text", "text is not a string (int)"]
    assert "4 of 6 inputs are not embeddable text" in str(err)


def test_truncation_is_counted_and_padding_reported(tiny_bert_dir):
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d16"], max_length=12)
    res = enc.encode_with_stats(TEXTS)
    assert res.stats.truncated_positions == (0, 3, 4)
    full_lengths = [len(ids) for ids in enc.tokenizer(TEXTS)["input_ids"]]
    assert [i for i, n in enumerate(full_lengths) if n > 12] == [0, 3, 4]
    assert res.stats.real_tokens == sum(min(n, 12) for n in full_lengths)
    assert res.stats.padded_tokens >= res.stats.real_tokens
    assert res.stats.padding_overhead == pytest.approx(res.stats.padded_tokens / res.stats.real_tokens - 1)


def test_empty_input_gives_empty_arrays(tiny_bert_dir):
    out = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l1_d8", "l2_d16"]).encode([])
    assert out[Granularity(1, 8)].shape == (0, 8)
    assert out[Granularity(2, 16)].shape == (0, 16)


def test_fingerprint_tells_weights_apart(tiny_bert_dir, tmp_path):
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l1_d8"])
    other_dir = tmp_path / "other"
    shutil.copytree(tiny_bert_dir, other_dir)
    torch.manual_seed(1)
    from transformers import BertModel

    BertModel(enc.model.config).save_pretrained(other_dir)
    other = ElasticEncoder.from_pretrained(other_dir, ["l1_d8"])
    assert enc.fingerprint != other.fingerprint
    assert enc.fingerprint == ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d8"]).fingerprint
    info = enc.describe()
    assert info["granularities"] == ["l1_d8"]
    assert info["weights_fingerprint"] == enc.fingerprint
    assert info["pooling"] == "mean" and info["normalize"] is True


def test_ids_tokenized_elsewhere_give_the_same_vectors(tiny_bert_dir, lee_articles):
    """What the pipeline's CPU tasks do for GPU actors: tokenize with a TextTokenizer, hand over flat ids."""
    texts = list(lee_articles[:30])
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l2_d16", "l4_d64"], max_length=64)
    direct = enc.encode_with_stats(texts)
    tokenizer = TextTokenizer.from_model(tiny_bert_dir, 64)
    values, offsets, cut = tokenizer.tokenize_flat(texts)
    assert values.dtype == np.int32 and offsets.shape == (31,)
    res = enc.encode_tokenized(tokenized_from_flat(values, offsets, cut))
    for g in enc.granularities:
        np.testing.assert_allclose(res.vectors[g], direct.vectors[g], atol=1e-6)
    assert res.stats.truncated_positions == direct.stats.truncated_positions
    assert res.stats.truncated > 0 and res.stats.real_tokens == direct.stats.real_tokens
    assert res.stats.seconds_tokenize == 0
    # ids made for a longer max_length are refused, naming both
    longer = TextTokenizer.from_model(tiny_bert_dir, 128)(texts)
    with pytest.raises(EncoderConfigError, match=r"up to 128 tokens .* max_length is 64"):
        enc.encode_tokenized(longer)


def test_text_tokenizer_resolves_max_length_as_the_encoder_does(minilm_path):
    assert TextTokenizer.from_model(minilm_path).max_length == 256  # sentence_bert_config.json
    assert TextTokenizer.from_model(minilm_path, 40).max_length == 40
    with pytest.raises(EncoderConfigError, match="max_length 9999 is out of range"):
        TextTokenizer.from_model(minilm_path, 9999)


def _small_device(enc, monkeypatch, tokens: int) -> list[int]:
    """Inject the fault a CPU cannot produce: batches over ``tokens`` computed tokens raise CUDA's
    out-of-memory error; the rows of each batch that ran are recorded."""
    real_run = enc._forward.run
    rows: list[int] = []

    def forward(batch, layers, depth):
        if batch.padded_tokens > tokens:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        rows.append(len(batch.positions))
        return real_run(batch, layers, depth)

    monkeypatch.setattr(enc._forward, "run", forward)
    return rows


def test_a_batch_that_runs_out_of_device_memory_is_split(tiny_bert_dir, lee_articles, monkeypatch, caplog):
    """Out of device memory, a batch is halved until it fits and the token budget follows. The fault is
    injected (a CPU cannot run out of CUDA memory): a device that holds 640 padded tokens."""
    texts = list(lee_articles[:40])
    g = Granularity(4, 64)
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, [str(g)], batch_tokens=1_000_000, max_length=64)
    expected = enc.encode(texts)[g]
    rows = _small_device(enc, monkeypatch, 640)
    with caplog.at_level("WARNING", logger="embedder"):
        got = enc.encode(texts)[g]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sum(rows) == 40 and max(rows) <= 10
    assert enc.batch_tokens == 640
    assert "out of device memory on a batch of 40 texts x 64 tokens" in caplog.text
    # one text that does not fit on its own is the error
    enc.batch_tokens = 1_000_000
    monkeypatch.setattr(enc._forward, "run", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("full")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        enc.encode(texts[:1])


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "lasttoken"])
def test_packed_batches_match_padded_ones(tiny_bert_family, lee_articles, pooling):
    """The packed path (CUDA's default for BERT, RoBERTa and XLM-R) gives the padded path's vectors, with no
    padding. RoBERTa's positions start at pad_token_id + 1: counted from 0, its vectors were off."""
    texts = [a[: 30 + 41 * i] for i, a in enumerate(lee_articles[:24])]
    grans = ["l2_d16", "l4_d64"]
    padded = ElasticEncoder.from_pretrained(tiny_bert_family, grans, pooling=pooling, max_length=96)
    packed = ElasticEncoder.from_pretrained(
        tiny_bert_family, grans, pooling=pooling, max_length=96, packed=True, batch_tokens=500
    )
    assert packed.packed and not padded.packed  # on a CPU the default is padded
    expected, res = padded.encode(texts), packed.encode_with_stats(texts)
    assert res.stats.batches > 1 and res.stats.padding_overhead == 0
    for g, vectors in expected.items():
        assert row_cosines(res.vectors[g], vectors).min() >= 0.99999, str(g)


def test_packed_matches_padded_on_real_minilm(minilm_path, lee_articles):
    texts = list(lee_articles[:40])
    grans = ["l3_d64", "l6_d384"]
    expected = ElasticEncoder.from_pretrained(minilm_path, grans).encode(texts)
    got = ElasticEncoder.from_pretrained(minilm_path, grans, packed=True).encode(texts)
    for g, vectors in expected.items():
        assert row_cosines(got[g], vectors).min() >= 0.99999, str(g)


def test_packed_is_refused_for_other_architectures(tiny_other_arch):
    with pytest.raises(EncoderConfigError, match="packed = true needs a BERT-architecture model"):
        ElasticEncoder.from_pretrained(tiny_other_arch, ["l1_d8"], packed=True)


def test_a_packed_batch_that_runs_out_of_device_memory_is_split(tiny_bert_dir, lee_articles, monkeypatch):
    """As for padded batches; the fault is injected: a device that holds 600 real tokens."""
    texts = list(lee_articles[:40])
    g = Granularity(4, 64)
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, [str(g)], packed=True, max_length=64)
    expected = enc.encode(texts)[g]
    sizes = _small_device(enc, monkeypatch, 600)
    np.testing.assert_allclose(enc.encode(texts)[g], expected, atol=1e-5)
    assert sum(sizes) == 40 and enc.batch_tokens <= 600
