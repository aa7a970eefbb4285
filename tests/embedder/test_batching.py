from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from embedder import Tokenized, plan_batches, tokenize


def _tok(lengths: list[int]) -> Tokenized:
    ids = [[7] * n for n in lengths]
    return Tokenized(ids=ids, lengths=np.array(lengths), truncated=np.zeros(len(lengths), dtype=bool))


def test_batches_respect_the_token_budget_and_cover_every_row_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=500).tolist()
    plan = plan_batches(_tok(lengths), batch_tokens=1000, max_batch_size=64, pad_token_id=0)
    seen = np.concatenate([b.positions for b in plan.batches])
    assert sorted(seen.tolist()) == list(range(500))
    for b in plan.batches:
        assert b.input_ids.size <= 1000
        assert b.input_ids.shape[0] <= 64
        # the batch is padded to its longest row, and rows are sorted longest first
        assert b.input_ids.shape[1] == max(lengths[p] for p in b.positions)
        assert b.attention_mask.sum(axis=1).tolist() == [lengths[p] for p in b.positions]
    assert plan.real_tokens == sum(lengths)
    assert plan.padded_tokens == sum(b.input_ids.size for b in plan.batches)
    # sorting by length keeps padding small; a fixed-size unsorted batching would pad far more
    assert 0 <= plan.padding_overhead < 0.10


def test_text_longer_than_the_budget_gets_its_own_batch():
    plan = plan_batches(_tok([50, 10, 10]), batch_tokens=20, max_batch_size=8, pad_token_id=0)
    assert [b.positions.tolist() for b in plan.batches] == [[0], [1, 2]]


def test_left_padding_puts_tokens_at_the_end():
    plan = plan_batches(_tok([4, 2]), batch_tokens=100, max_batch_size=8, pad_token_id=9, padding_side="left")
    (batch,) = plan.batches
    assert batch.input_ids.tolist() == [[7, 7, 7, 7], [9, 9, 7, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]


def test_tokenize_truncates_and_reports_which_texts_were_cut(minilm_path):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True)
    texts = ["word " * 50, "short text", "one two three four five six"]  # 8 tokens with specials
    tok = tokenize(tokenizer, texts, max_length=8)
    assert tok.lengths.tolist() == [8, 4, 8]
    assert tok.truncated.tolist() == [True, False, False]


@pytest.mark.parametrize("lowercase", [False, True])
def test_tokenize_lowercase_option(minilm_path, lowercase):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True)
    tok = tokenize(tokenizer, ["Hello"], max_length=16, lowercase=lowercase)
    assert tok.ids[0] == tokenizer("hello")["input_ids"]  # this vocab is uncased either way


def test_rows_of_a_batch_are_trimmed_to_their_own_longest_text():
    tok = Tokenized(
        ids=[[1, 2, 3, 4, 5], [1, 2, 3], [1, 2], [1]],
        lengths=np.array([5, 3, 2, 1]),
        truncated=np.zeros(4, dtype=bool),
    )
    (batch,) = plan_batches(tok, batch_tokens=100, max_batch_size=10, pad_token_id=0).batches
    tail = batch.rows(2, 4)
    assert tail.input_ids.tolist() == [[1, 2], [1, 0]]
    assert tail.attention_mask.tolist() == [[1, 1], [1, 0]]
    assert tail.positions.tolist() == [2, 3]
    assert batch.rows(0, 2).input_ids.shape == (2, 5)
