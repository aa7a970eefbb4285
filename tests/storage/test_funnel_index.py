"""Funnel search and vector indexes on a real Lance table (300 real Lee articles, a tiny random BERT).

The table is written in-process (no Ray) with the real encoder, so every stored
vector is one the table's own query encoder reproduces.
"""

from __future__ import annotations

import shutil

import lance
import numpy as np
import pyarrow.compute as pc
import pytest

from embedder import Granularity, GranularityError
from storage import (
    MIN_INDEX_ROWS,
    VectorIndexError,
    index_params,
    open_table,
    parse_stages,
)

from ..jobfiles import write_embedded_table

GRANS = ("l2_d16", "l4_d32", "l4_d64")


def _write_table(uri: str, model: str, texts: list[str], ids: list[str], *, mode="create", version=None):
    return write_embedded_table(uri, model, texts, ids, GRANS, mode=mode, read_version=version, max_rows_per_file=100)


@pytest.fixture(scope="module")
def lee_table(tmp_path_factory, _tiny_models, lee_articles):
    root = tmp_path_factory.mktemp("funnel")
    model = str(root / "tiny-bert")
    shutil.copytree(_tiny_models["bert"], model)
    uri = str(root / "lee.lance")
    texts = list(lee_articles)
    _write_table(uri, model, texts, [f"lee-{i:03d}" for i in range(len(texts))])
    return uri, model, texts


def _exact(tbl, query: str, gran: str, k: int) -> list[str]:
    """Brute force in numpy over every stored vector: the known answer."""
    g = Granularity.parse(gran)
    data = tbl.to_arrow(["id", g.column])
    mat = np.stack(data[g.column].to_numpy(zero_copy_only=False)).astype(np.float32)
    q = tbl.embed_query(query, g)
    sims = mat @ q / np.linalg.norm(mat, axis=1) / np.linalg.norm(q)
    order = np.argsort(-sims, kind="stable")[:k]
    return [data["id"][int(i)].as_py() for i in order]


def test_parse_stages_accepts_strings_and_pairs_and_names_bad_values():
    assert [str(s) for s in parse_stages("l4_d32:200, l4_d64:10")] == ["l4_d32:200", "l4_d64:10"]
    assert parse_stages([("l2_d16", 50), ("l4_d64", 5)]) == parse_stages("l2_d16:50,l4_d64:5")
    with pytest.raises(ValueError, match="at least one stage"):
        parse_stages("")
    with pytest.raises(ValueError, match="expected GRANULARITY:K"):
        parse_stages("l4_d32")
    with pytest.raises(ValueError, match="k must not grow"):
        parse_stages("l4_d32:10,l4_d64:20")
    with pytest.raises(ValueError, match="k must be >= 1"):
        parse_stages("l4_d32:0")
    with pytest.raises(ValueError, match="a granularity twice"):
        parse_stages("l4_d32:20,l4_d32:10")


def test_funnel_with_a_full_shortlist_equals_exact_search_at_the_last_stage(lee_table):
    uri, _, texts = lee_table
    tbl = open_table(uri)
    query = texts[7][:200]
    hits = tbl.funnel_search(query, [("l2_d16", len(texts)), ("l4_d64", 10)])
    assert hits["id"].to_pylist() == _exact(tbl, query, "l4_d64", 10)
    assert hits.column_names[:2] == ["id", "text"] and {"score", "score_l2_d16", "score_l4_d64"} <= set(
        hits.column_names
    )
    scores = hits["score"].to_numpy()
    assert np.all(np.diff(scores) <= 1e-6) and np.allclose(scores, hits["score_l4_d64"].to_numpy())


def test_each_stage_score_is_the_cosine_at_that_stage_and_texts_match_ids(lee_table):
    uri, _, texts = lee_table
    tbl = open_table(uri)
    by_id = dict(zip(tbl.to_arrow(["id"])["id"].to_pylist(), texts, strict=True))
    # one encoder serves every granularity, running only the layers a query's granularities need
    assert tbl.encoder.encode_with_stats(["a query"], ["l2_d16"]).stats.depth == 2
    hits = tbl.funnel_search(texts[42], "l2_d16:60,l4_d32:20,l4_d64:5")
    assert hits.num_rows == 5
    assert hits["id"][0].as_py() == "lee-042"  # its own text is its nearest row
    rows = tbl.to_arrow(["id", "vec_l2_d16", "vec_l4_d32", "vec_l4_d64"]).to_pylist()
    vec = {r["id"]: r for r in rows}
    q = tbl.embed_queries(texts[42], ["l2_d16", "l4_d32", "l4_d64"])
    for row in hits.to_pylist():
        assert row["text"] == by_id[row["id"]]  # rows taken by row id come back in the order asked
        for g, col in (("l2_d16", "vec_l2_d16"), ("l4_d32", "vec_l4_d32"), ("l4_d64", "vec_l4_d64")):
            v = np.asarray(vec[row["id"]][col], dtype=np.float32)
            qv = q[Granularity.parse(g)]
            want = float(v @ qv / np.linalg.norm(v) / np.linalg.norm(qv))
            assert row[f"score_{g}"] == pytest.approx(want, abs=1e-5)


def test_a_single_stage_funnel_is_plain_search_and_where_filters(lee_table):
    uri, _, texts = lee_table
    tbl = open_table(uri)
    plain = tbl.search(texts[3], "l4_d32", k=8)
    funnel = tbl.funnel_search(texts[3], "l4_d32:8")
    assert funnel["id"].to_pylist() == plain["id"].to_pylist()
    assert np.allclose(funnel["score"].to_numpy(), plain["score"].to_numpy(), atol=1e-5)
    filtered = tbl.funnel_search(texts[3], "l2_d16:40,l4_d64:5", where="id >= 'lee-150'")
    assert filtered.num_rows == 5 and all(i >= "lee-150" for i in filtered["id"].to_pylist())


def test_search_by_vector_and_a_batch_of_queries(lee_table):
    uri, _, texts = lee_table
    tbl = open_table(uri)
    one = tbl.search(texts[3], "l4_d32", k=4)
    by_vector = tbl.search(vector=tbl.embed_query(texts[3], "l4_d32"), granularity="l4_d32", k=4)
    assert by_vector["id"].to_pylist() == one["id"].to_pylist()
    batch = tbl.search([texts[3], texts[9], texts[3]], "l4_d32", k=4)
    assert batch.column_names[0] == "query" and batch.num_rows == 12
    for i, text in enumerate((texts[3], texts[9], texts[3])):
        rows = batch.filter(pc.equal(batch["query"], i))
        assert rows["id"].to_pylist() == tbl.search(text, "l4_d32", k=4)["id"].to_pylist()
    vectors = np.stack([tbl.embed_query(t, "l4_d32") for t in (texts[3], texts[9])])
    by_vectors = tbl.search(vector=vectors, granularity="l4_d32", k=4)
    assert by_vectors["id"].to_pylist() == batch.filter(pc.less(batch["query"], 2))["id"].to_pylist()
    assert tbl.search([], "l4_d32").num_rows == 0 and "query" in tbl.search([], "l4_d32").column_names
    with pytest.raises(ValueError, match="text .* or vector=, not both"):
        tbl.search(texts[3], vector=vectors[0])
    with pytest.raises(ValueError, match=r"shape \(32,\) or \(n, 32\) for l4_d32, got \(2, 5\)"):
        tbl.search(vector=np.zeros((2, 5)), granularity="l4_d32")
    with pytest.raises(ValueError, match="query 1 is int"):
        tbl.search(["a", 3], "l4_d32")


def test_funnel_refuses_granularities_the_table_does_not_have(lee_table):
    tbl = open_table(lee_table[0])
    with pytest.raises(GranularityError, match=r"l3_d16 is not in this table; it has l2_d16, l4_d32, l4_d64"):
        tbl.funnel_search("x", "l3_d16:50,l4_d64:5")


def test_index_defaults_follow_rows_and_dim_and_refusals_name_the_limits():
    p = index_params(20_000, 64, "ivf_pq")
    assert (p.type, p.num_partitions, p.num_sub_vectors, p.distance_type) == ("ivf_pq", 78, 8, "cosine")
    assert index_params(1_000_000, 384, "ivf_pq").num_partitions == 1000
    assert index_params(1_000_000, 384, "ivf_pq").num_sub_vectors == 48
    assert index_params(20_000, 100, "ivf_pq").num_sub_vectors in (10, 20)  # a divisor of 100 near 8 dims each
    assert index_params(300_000, 384, "ivf_hnsw_sq").num_partitions == 3
    assert index_params(5_000, 64, "IVF_FLAT").num_sub_vectors is None
    with pytest.raises(VectorIndexError, match=r"has 255 rows; an ivf_pq index needs at least 256"):
        index_params(MIN_INDEX_ROWS["ivf_pq"] - 1, 64, "ivf_pq")
    with pytest.raises(VectorIndexError, match=r"num_sub_vectors = 7 for a 64-dim column: must divide 64"):
        index_params(10_000, 64, "ivf_pq", num_sub_vectors=7)
    with pytest.raises(VectorIndexError, match=r"num_partitions = 100 for 10,000 rows: must be between 1 and 39"):
        index_params(10_000, 64, "ivf_pq", num_partitions=100)
    with pytest.raises(VectorIndexError, match="choose one of ivf_pq, ivf_hnsw_sq, ivf_flat"):
        index_params(10_000, 64, "hnsw")


def test_index_build_search_through_it_and_unindexed_rows_still_found(lee_table, tmp_path):
    uri0, model, texts = lee_table
    uri = str(tmp_path / "copy.lance")
    shutil.copytree(uri0, uri)
    tbl = open_table(uri)
    v0 = tbl.version
    report = tbl.create_index("l4_d32", "ivf_pq")
    assert report.action == "built" and report.rows == 300 and report.version == v0 + 1
    assert (report.params.num_partitions, report.params.num_sub_vectors) == (1, 4)
    assert tbl.version == v0 + 1  # the object reads the new version
    (idx,) = tbl.indexes()
    assert (idx["column"], idx["type"], idx["indexed_rows"], idx["unindexed_rows"]) == ("vec_l4_d32", "ivf_pq", 300, 0)
    assert idx["distance_type"] == "cosine"
    hits = tbl.funnel_search(texts[5], "l4_d32:30,l4_d64:3")
    assert hits["id"][0].as_py() == "lee-005"

    # rows added after the index was built are searched exactly and found
    extra = ["A completely new article about penguins nesting on the Antarctic ice shelf in winter."]
    _write_table(uri, model, extra, ["new-000"], mode="append", version=tbl.version)
    tbl.refresh()
    (idx,) = tbl.indexes()
    assert (idx["indexed_rows"], idx["unindexed_rows"]) == (300, 1)
    assert tbl.funnel_search(extra[0], "l4_d32:30,l4_d64:3")["id"][0].as_py() == "new-000"
    assert tbl.search(extra[0], "l4_d32", k=1)["id"][0].as_py() == "new-000"

    # replacing the index re-trains it on every row
    tbl.create_index("l4_d32", "ivf_flat")
    (idx,) = tbl.indexes()
    assert (idx["type"], idx["indexed_rows"], idx["unindexed_rows"]) == ("ivf_flat", 301, 0)


def test_index_refuses_small_tables_and_leaves_them_untouched(tmp_path, _tiny_models, lee_articles):
    uri = str(tmp_path / "small.lance")
    model = str(tmp_path / "m")
    shutil.copytree(_tiny_models["bert"], model)
    texts = list(lee_articles[:40])
    _write_table(uri, model, texts, [f"d{i}" for i in range(40)])
    tbl = open_table(uri)
    with pytest.raises(VectorIndexError, match=r"has 40 rows; an ivf_hnsw_sq index needs at least 256"):
        tbl.create_index("l4_d64", "ivf_hnsw_sq")
    assert lance.dataset(uri).version == tbl.version and tbl.indexes() == []
    with pytest.raises(GranularityError, match="l6_d64 is not in this table"):
        tbl.create_index("l6_d64")
