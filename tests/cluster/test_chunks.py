"""``prepare``'s documents as chunk rows (no Ray: the function a prepare task runs)."""

from __future__ import annotations

import pyarrow as pa

from cluster._stages import REASON, split_into_chunks
from embedder import Chunking
from storage import content_hash


def test_documents_become_chunk_rows_and_rejects_stay_one_row(minilm_path, lee_articles):
    docs = [lee_articles[0], "A short one.", None, lee_articles[1]]
    rows = pa.table(
        {
            "id": [10, 11, 12, 13],
            "text": docs,
            "content_hash": [content_hash(t) if t else None for t in docs],
            "title": ["t10", "t11", "t12", "t13"],
            REASON: [None, None, "null text", None],
        }
    )
    out = split_into_chunks(rows, str(minilm_path), None, Chunking(tokens=60, overlap=6))
    assert out.column_names[:6] == ["id", "doc_id", "chunk", "char_start", "char_end", "text"]
    got = out.to_pylist()
    for row in got:
        if row[REASON] is None:
            doc = docs[row["doc_id"] - 10]
            assert row["id"] == f"{row['doc_id']}#{row['chunk']}"
            assert row["text"] == doc[row["char_start"] : row["char_end"]]
            assert row["content_hash"] == content_hash(doc) and row["title"] == f"t{row['doc_id']}"
    per_doc = {d: [r["chunk"] for r in got if r["doc_id"] == d] for d in (10, 11, 13)}
    assert len(per_doc[10]) > 2 and per_doc[10] == list(range(len(per_doc[10]))) and per_doc[11] == [0]
    rejected = [r for r in got if r[REASON] is not None]
    assert [(r["id"], r["doc_id"], r["chunk"]) for r in rejected] == [("12", 12, None)]

    # a resume: the chunks an earlier attempt staged are left out, the rest of the document is kept
    again = split_into_chunks(rows, str(minilm_path), None, Chunking(tokens=60, overlap=6), staged={10: [0, 2]})
    assert [r["chunk"] for r in again.to_pylist() if r["doc_id"] == 10] == [c for c in per_doc[10] if c not in (0, 2)]
    assert again.num_rows == out.num_rows - 2


def test_a_chunked_jobs_calibration_sample_is_its_chunks_held_out_by_document(minilm_path, lee_articles):
    from cluster._calibrate import sample_rows

    batch = pa.table({"id": list(range(40)), "text": list(lee_articles[:40])})
    how = Chunking(tokens=60, overlap=6)
    whole = sample_rows(batch, id_column="id", text_column="text", fraction=1.0, heldout_fraction=0.25, seed=0)
    chunked = sample_rows(
        batch,
        id_column="id",
        text_column="text",
        fraction=1.0,
        heldout_fraction=0.25,
        seed=0,
        chunking=(str(minilm_path), None, how),
    )
    assert whole.num_rows == 40 and chunked.num_rows > 80
    # each document's chunks in order, held out (or not) together with their document
    texts, held = chunked.column("text").to_pylist(), chunked.column("heldout").to_pylist()
    pos = 0
    for doc, doc_held in zip(whole.column("text").to_pylist(), whole.column("heldout").to_pylist(), strict=True):
        n = 0
        while pos < len(texts) and texts[pos] in doc:
            assert held[pos] == doc_held
            pos, n = pos + 1, n + 1
        assert n >= 1
    assert pos == len(texts)
