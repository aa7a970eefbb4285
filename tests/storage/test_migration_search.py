"""Searching a half-migrated table with the new model alone, on real text with the real all-MiniLM-L6-v2: the old
settings are the raw model at full width, the new ones the model through a calibration (its Matryoshka rotation)
at 64 dims. The old model is never run for a query."""

from __future__ import annotations

import numpy as np
import pytest

from embedder import ElasticEncoder, Granularity, compat_recall, fit_calibration
from storage import MIGRATED, fit_compat_maps, open_table
from tests.migrating import provenance_of, write_migrating_table

OLD, NEW = Granularity(6, 384), Granularity(6, 64)
WORDS = 30


@pytest.fixture(scope="module")
def lee_migration(tmp_path_factory, minilm_path, lee_articles):
    """240 real passages; rows 0, 2, 4, ... migrated; the maps fitted on them. Queries: 20 words of each passage."""
    chunks = [a.split()[i : i + WORDS] for a in lee_articles for i in range(0, len(a.split()) - WORDS + 1, WORDS)]
    chunks = chunks[:240]
    docs = [" ".join(c) for c in chunks]
    queries = [" ".join(c[5:25]) for c in chunks]
    cal = fit_calibration(ElasticEncoder.for_calibration(minilm_path, layers=[], max_length=48), docs[:120])
    old = ElasticEncoder.from_pretrained(minilm_path, [OLD], max_length=48)
    new = ElasticEncoder.from_pretrained(minilm_path, [NEW], max_length=48, calibration=cal)
    old_docs, new_docs = old.encode(docs), new.encode(docs)
    migrated = np.arange(len(docs)) % 2 == 0
    uri = str(tmp_path_factory.mktemp("migrating") / "db" / "lee.lance")
    ids = [f"p{i}" for i in range(len(docs))]
    write_migrating_table(
        uri, ids, docs, provenance_of(old), old_docs, provenance_of(new), new_docs, migrated, calibrations=[cal]
    )
    maps = fit_compat_maps(uri)
    return {
        "uri": uri,
        "docs": docs,
        "queries": queries,
        "migrated": migrated,
        "old": old,
        "new": new,
        "old_docs": old_docs[OLD],
        "new_docs": new_docs[NEW],
        "maps": maps,
    }


def test_new_model_search_finds_documents_in_both_halves(lee_migration):
    """The one test proving the point: with a fitted map, the new model alone finds a passage from 20 of its
    words whether the passage has its new vectors yet or only its old ones."""
    m = lee_migration
    table = open_table(m["uri"])
    picked = list(range(0, 40, 2)) + list(range(1, 41, 2))  # 20 migrated, 20 not
    hits = table.search([m["queries"][i] for i in picked], model="new", k=3)
    assert table.new_encoder.calibration is not None and table._encoder is None  # the old model never loaded
    top1, top3 = {}, {}
    for pos, i in enumerate(picked):
        rows = hits.filter(np.asarray(hits["query"]) == pos)
        ids = rows["id"].to_pylist()
        side = bool(m["migrated"][i])
        top1.setdefault(side, []).append(ids[0] == f"p{i}")
        top3.setdefault(side, []).append(f"p{i}" in ids)
        if ids[0] == f"p{i}":  # the hit was scored on the vectors its row has
            assert rows[MIGRATED][0].as_py() is side
    share = {side: (float(np.mean(top1[side])), float(np.mean(top3[side]))) for side in (True, False)}
    print(f"\nnew-model search, top-1 / top-3 for 20 queries each: migrated {share[True]}, not migrated {share[False]}")
    assert share[True][0] >= 0.9 and share[True][1] == 1.0
    assert share[False][0] >= 0.6 and share[False][1] >= 0.85


def test_quality_of_the_map_on_real_text(lee_migration):
    """Recall of the four ways to search, and of a new-model search over the half-migrated corpus, from the
    real model's vectors of 120 queries; printed, and in the relations that must hold."""
    m = lee_migration
    queries = m["queries"][:120]
    report = compat_recall(
        m["maps"],
        old_queries=m["old"].encode(queries)[OLD],
        new_queries=m["new"].encode(queries)[NEW],
        old_docs=m["old_docs"],
        new_docs=m["new_docs"],
        relevant=list(range(120)),
        old=OLD,
        new=NEW,
        k=1,
        migrated=m["migrated"],
    )
    check = m["maps"].check(OLD, NEW)
    print(f"\nrecall@1, 120 queries / 240 passages: {report}")
    print(f"held-out: {check}")
    assert report["old->old"] >= 0.9 and report["new->new"] >= 0.9
    assert report["new->map->old"] > 0.5 * report["new->new"] and report["old->map->new"] > 0.5 * report["old->old"]
    # merging both halves on one scale costs little over searching the unmigrated rows through the map alone
    assert report["merged"] >= 0.9 * min(report["new->new"], report["new->map->old"])
    assert report["merged_migrated"] >= 0.9 * report["new->new"]
    assert check.to_old_cosine > 0.8 and check.to_new_cosine > 0.9 and check.to_old_top1 > 0.8


@pytest.mark.slow
def test_map_quality_on_lee_halves(tmp_path, minilm_path):
    """The figures of docs/compatible.md: every Lee passage split in halves (the first half the query, the second
    the document to find), the map fitted on the table's migrated half, new granularities at 64, 128 (full depth)
    and 256 dims (layer 4) against the old full vectors; recall@1 and @10 of the four ways to search and the merged
    new-model search. ``pytest -m slow -s -k lee_halves tests/storage/test_migration_search.py``"""
    from bench.corpora import lee_passages, wiki_passages
    from jobs.quality import halves

    queries, docs, relevant = halves(list(dict.fromkeys(lee_passages(60))))
    calibration_texts = list(dict.fromkeys(wiki_passages(60)))[:1000]
    cal = fit_calibration(ElasticEncoder.for_calibration(minilm_path, layers=[4], max_length=128), calibration_texts)
    news = [Granularity(4, 256), Granularity(6, 128), Granularity(6, 64)]
    old = ElasticEncoder.from_pretrained(minilm_path, [OLD], max_length=128)
    new = ElasticEncoder.from_pretrained(minilm_path, news, max_length=128, calibration=cal)
    old_docs, new_docs = old.encode(docs), new.encode(docs)
    old_queries, new_queries = old.encode(queries)[OLD], new.encode(queries)
    migrated = np.arange(len(docs)) < len(docs) // 2
    uri = str(tmp_path / "db" / "lee.lance")
    ids = [f"p{i}" for i in range(len(docs))]
    write_migrating_table(uri, ids, docs, provenance_of(old), old_docs, provenance_of(new), new_docs, migrated)
    maps = fit_compat_maps(uri)
    print(
        f"\n{len(queries)} queries / documents, map fitted on {maps.info.rows} migrated rows "
        f"({maps.info.heldout_rows} held out)"
    )
    print("new     k   old->old new->new new->map->old old->map->new merged  held-out: R2 cos top-1")
    for g in news:
        check = maps.check(OLD, g)
        for k in (1, 10):
            r = compat_recall(
                maps,
                old_queries=old_queries,
                new_queries=new_queries[g],
                old_docs=old_docs[OLD],
                new_docs=new_docs[g],
                relevant=relevant,
                old=OLD,
                new=g,
                k=k,
                migrated=migrated,
            )
            print(
                f"{g!s:8}{k:>2}   {r['old->old']:.3f}    {r['new->new']:.3f}    {r['new->map->old']:.3f}         "
                f"{r['old->map->new']:.3f}         {r['merged']:.3f}   {maps.fit('to_old', g, OLD).heldout_r2:.3f} "
                f"{check.to_old_cosine:.3f} {check.to_old_top1:.3f}"
            )
            assert r["new->map->old"] > 0.5 * r["new->new"] and r["old->map->new"] > 0.5 * r["old->old"]
            assert r["merged"] > 0.5 * max(r["new->new"], r["new->map->old"])
        assert check.to_old_cosine > 0.7 and check.to_old_top1 > 0.9
