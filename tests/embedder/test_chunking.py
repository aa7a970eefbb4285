"""Long texts cut into chunks with the real all-MiniLM-L6-v2 tokenizer, on real news articles."""

from __future__ import annotations

import itertools

import pytest

from embedder import Chunking, EncoderConfigError, cached_tokenizer, chunk_spans


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_path):
    return cached_tokenizer(str(minilm_path), None).tokenizer


def _tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("sentences", [False, True])
def test_chunks_cover_each_article_in_order_within_the_window(hf_tokenizer, lee_articles, sentences):
    how = Chunking(tokens=64, overlap=8, sentences=sentences)
    texts = list(lee_articles[:80])
    spans = chunk_spans(hf_tokenizer, texts, how)
    assert sum(len(s) > 1 for s in spans) > 40  # most articles are longer than 64 tokens
    for text, doc in zip(texts, spans, strict=True):
        assert doc[0][0] == 0 or not text[: doc[0][0]].strip()  # nothing before the first chunk is lost
        assert not text[doc[-1][1] :].strip()  # nor after the last
        for (a, b), (c, _) in itertools.pairwise(doc):
            assert a < c <= b  # in order, each next chunk starting inside the one before (the overlap) or at its end
            assert not text[b:c].strip()  # no text falls between two chunks
        for a, b in doc:
            chunk = text[a:b]
            assert chunk == chunk.strip() and _tokens(hf_tokenizer, chunk) <= 64
            # chunks start and end at whitespace: never inside a word
            assert a == 0 or text[a - 1].isspace()
            assert b == len(text) or text[b].isspace()


def test_overlap_repeats_the_end_of_the_chunk_before(hf_tokenizer, lee_articles):
    text = max(lee_articles, key=len)
    spans = chunk_spans(hf_tokenizer, [text], Chunking(tokens=48, overlap=12))[0]
    assert len(spans) > 5
    for (_, b), (c, _) in itertools.pairwise(spans):
        shared = text[c:b]
        assert 12 <= _tokens(hf_tokenizer, shared) <= 20  # `overlap` tokens, moved back to a word start
    none = chunk_spans(hf_tokenizer, [text], Chunking(tokens=48, overlap=0))[0]
    assert all(b <= c for (_, b), (c, _) in itertools.pairwise(none))


def test_sentences_moves_cuts_to_sentence_ends(hf_tokenizer, lee_articles):
    texts = [t for t in lee_articles if t.count(". ") > 8][:30]
    plain = chunk_spans(hf_tokenizer, texts, Chunking(tokens=80))
    sent = chunk_spans(hf_tokenizer, texts, Chunking(tokens=80, sentences=True))

    def ends_sentence(text, spans):
        inner = [b for _, b in spans[:-1]]
        return sum(text[b - 1] in ".!?\"'" for b in inner), len(inner)

    got = [ends_sentence(t, s) for t, s in zip(texts, sent, strict=True)]
    base = [ends_sentence(t, s) for t, s in zip(texts, plain, strict=True)]
    assert sum(g for g, _ in got) >= 0.9 * sum(n for _, n in got)  # nearly every cut at a sentence end
    assert sum(g for g, _ in base) < 0.5 * sum(n for _, n in base)  # without it, wherever the window ends


def test_a_text_that_fits_is_one_chunk_the_whole_text(hf_tokenizer):
    text = "  A short passage, with spaces around it.  "
    assert chunk_spans(hf_tokenizer, [text, "x"], Chunking(tokens=32)) == [[(0, len(text))], [(0, 1)]]
    assert chunk_spans(hf_tokenizer, [], Chunking(tokens=32)) == []


def test_a_word_longer_than_the_window_is_cut_inside_it(hf_tokenizer):
    text = "start " + "antidisestablishment" * 4 + " end"  # one word of many word pieces
    spans = chunk_spans(hf_tokenizer, [text], Chunking(tokens=16, overlap=2))[0]
    assert len(spans) > 2 and spans[-1][1] == len(text)


def test_bad_settings_name_the_value_and_the_limit():
    with pytest.raises(EncoderConfigError, match="overlap must be in 0..15.*got 16"):
        Chunking(tokens=16, overlap=16)
    with pytest.raises(EncoderConfigError, match="tokens must be >= 1, got 0"):
        Chunking(tokens=0)
    assert Chunking.parse(Chunking(200, 24, True).describe()) == Chunking(200, 24, True)
