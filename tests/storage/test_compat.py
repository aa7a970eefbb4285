"""A migrating table's compatibility maps (fitted on its migrated rows, kept next to it) and its new-model search,
on real Lance tables whose vectors come from two different tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from embedder import CompatStats, ElasticEncoder, Granularity, GranularityError, heldout_mask
from jobs.cli import app
from storage import (
    MIGRATED,
    MigrationError,
    compat_dir,
    compat_uri,
    find_compat_maps,
    fit_compat_maps,
    list_compat_maps,
    open_table,
)
from tests.jobfiles import write_embedded_table
from tests.migrating import provenance_of, write_migrating_table

OLD_G, NEW_G = ("l2_d32", "l4_d64"), ("l2_d16", "l4_d64")


@pytest.fixture(scope="module")
def tiny_pair(_tiny_models, lee_articles):
    """Two different tiny models (BERT: old settings, RoBERTa: new) and real texts embedded by both."""
    texts = [" ".join(a.split()[:30]) for a in lee_articles[:200]]
    old = ElasticEncoder.from_pretrained(_tiny_models["bert"], list(OLD_G), max_length=48)
    new = ElasticEncoder.from_pretrained(_tiny_models["roberta"], list(NEW_G), max_length=48)
    return old, new, texts, old.encode(texts), new.encode(texts)


def _table(tmp_path, tiny_pair, migrated=None, **options) -> str:
    old, new, texts, old_v, new_v = tiny_pair
    migrated = np.arange(len(texts)) % 2 == 0 if migrated is None else migrated
    uri = str(tmp_path / "db" / "t.lance")
    old_p, new_p = provenance_of(old, "float32"), provenance_of(new, "float32")
    return write_migrating_table(
        uri, [f"t{i}" for i in range(len(texts))], texts, old_p, old_v, new_p, new_v, migrated, **options
    )


def test_fit_sums_each_fragment_of_the_migrated_rows_and_stores_the_maps_next_to_the_table(tmp_path, tiny_pair):
    _old, new, texts, old_v, new_v = tiny_pair
    uri = _table(tmp_path, tiny_pair, rows_per_fragment=30)  # 100 migrated rows in 4 fragments
    maps = fit_compat_maps(uri)
    assert maps.info.rows == 100 and maps.pairs == tuple((Granularity(4, 64), Granularity.parse(g)) for g in NEW_G)
    assert (tmp_path / "db" / "t_compat" / f"{maps.fingerprint}.safetensors").is_file()
    assert (tmp_path / "db" / "t_compat" / f"{maps.fingerprint}.json").is_file()
    assert compat_uri(uri, maps.fingerprint).startswith(compat_dir(uri))
    table = open_table(uri)
    assert maps.info.old.settings == table.provenance.settings_fingerprint
    assert maps.info.new.settings == table.migration.to.settings_fingerprint
    assert maps.info.new.weights_fingerprint == new.fingerprint != maps.info.old.weights_fingerprint
    found = find_compat_maps(uri, table.provenance, table.migration.to)
    assert found is not None and found.fingerprint == maps.fingerprint
    # the same rows summed in one pass give the same maps
    ids = np.arange(0, len(texts), 2)
    one = CompatStats.empty(old=["l4_d64"], new=NEW_G)
    one.add(
        {"l4_d64": old_v[Granularity(4, 64)][ids]},
        {g: v[ids] for g, v in new_v.items()},
        heldout_mask([f"t{i}" for i in ids], 0.2),
    )
    direct = one.solve(old_space=maps.info.old, new_space=maps.info.new)
    for key, w in direct.to_old.items():
        np.testing.assert_allclose(maps.to_old[key], w, atol=1e-4)
    assert [f.alpha for f in direct.info.fits] == [f.alpha for f in maps.info.fits]
    # each held-out row was measured; a sample takes each fragment's share; the newest fit is the one found
    assert maps.check("l4_d64", "l4_d64").rows == maps.info.heldout_rows
    small = fit_compat_maps(uri, sample=40, old=["l2_d32", "l4_d64"])
    assert 40 <= small.info.rows <= 44 and len(small.pairs) == 4
    assert find_compat_maps(uri, table.provenance, table.migration.to).fingerprint == small.fingerprint
    assert {m.fingerprint for m in list_compat_maps(uri)} == {maps.fingerprint, small.fingerprint}


def test_what_cannot_be_fitted_or_searched_is_named(tmp_path, tiny_pair):
    uri = _table(tmp_path, tiny_pair, migrated=np.arange(200) < 10)
    with pytest.raises(MigrationError, match="has 10 migrated rows .* needs at least 12: migrate more rows first"):
        fit_compat_maps(uri)
    with pytest.raises(GranularityError, match="old granularity l6_d64 is not in the migration; the old settings have"):
        fit_compat_maps(uri, old=["l6_d64"])
    table = open_table(uri)
    with pytest.raises(MigrationError, match=r"no compatibility map .* fit one with `embedjob migrate fit-map "):
        table.search("a query", model="new")
    with pytest.raises(ValueError, match="model must be one of old, new, got 'newest'"):
        table.search("a query", model="newest")
    with pytest.raises(ValueError, match="old_granularity is for model='new'"):
        table.search("a query", old_granularity="l4_d64")
    plain = str(tmp_path / "db2" / "plain.lance")
    write_embedded_table(plain, tiny_pair[0].model_dir.root, tiny_pair[2][:20], granularities=OLD_G)
    with pytest.raises(MigrationError, match="is not migrating: model='new' searches a migration's new vectors"):
        open_table(plain).search("a query", model="new")
    with pytest.raises(MigrationError, match="is not migrating .* a compatibility map is fitted between"):
        fit_compat_maps(plain)


def test_new_model_search_reads_both_halves(tmp_path, tiny_pair):
    _old, new, texts, _old_v, new_v = tiny_pair
    uri = _table(tmp_path, tiny_pair)
    fit_compat_maps(uri)
    table = open_table(uri)
    assert table.migration is not None
    with pytest.raises(GranularityError, match="granularity l3_d64 is not in the migration; its new settings have"):
        table.search("a query", "l3_d64", model="new")
    with pytest.raises(MigrationError, match="no map from new l4_d64 to old l2_d32: fit one with .* --old l2_d32"):
        table.search("a query", model="new", old_granularity="l2_d32")
    # a migrated row's own text: found on its new vectors, first, with cosine 1
    hits = table.search(texts[4], model="new", k=5)
    assert hits.column_names == [*table.search(texts[4], k=5).column_names, MIGRATED]
    assert hits["id"][0].as_py() == "t4" and hits[MIGRATED][0].as_py() is True
    assert hits["score"][0].as_py() == pytest.approx(1.0, abs=1e-3)
    scores = hits["score"].to_pylist()
    assert scores == sorted(scores, reverse=True) and hits.num_rows == 5
    assert table.new_encoder.fingerprint == new.fingerprint  # the old model is not needed
    # a query vector of the new model, at another granularity, with a filter: only unmigrated rows match it
    odd = table.search(
        vector=new_v[Granularity(2, 16)][7],
        granularity="l2_d16",
        model="new",
        k=3,
        where="id IN ('t1', 't3', 't5', 't7')",
    )
    assert set(odd["id"].to_pylist()) <= {"t1", "t3", "t5", "t7"} and not any(odd[MIGRATED].to_pylist())
    batch = table.search([texts[0], texts[1]], model="new", k=2)
    assert batch["query"].to_pylist() == [0, 0, 1, 1]
    assert table.search([], model="new").num_rows == 0


def test_cli_fit_map_prints_the_heldout_quality(tmp_path, tiny_pair):
    uri = _table(tmp_path, tiny_pair)
    result = CliRunner().invoke(app, ["migrate", "fit-map", uri, "--sample", "80"])
    assert result.exit_code == 0, result.output
    maps = list_compat_maps(uri)[0]
    assert f"compatibility maps {maps.fingerprint}" in result.output and "held-out quality" in result.output
    assert "80 migrated rows" in result.output and "l4_d64" in result.output
    assert f"{maps.fit('to_old', 'l4_d64', 'l4_d64').heldout_r2:.3f}" in result.output
    bad = CliRunner().invoke(app, ["migrate", "fit-map", uri, "--old", "l9_d1"])
    assert bad.exit_code == 2 and "old granularity l9_d1 is not in the migration" in bad.output


def test_maps_live_next_to_an_s3_table(s3_env, tiny_pair):
    s3_env["client"].create_bucket(Bucket="compat")
    opts = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_endpoint": s3_env["endpoint"],
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
    uri = "s3://compat/db/t.lance"
    old, new, texts, old_v, new_v = tiny_pair
    migrated = np.arange(len(texts)) % 2 == 0
    write_migrating_table(
        uri,
        [f"t{i}" for i in range(len(texts))],
        texts,
        provenance_of(old),
        old_v,
        provenance_of(new),
        new_v,
        migrated,
        storage_options=opts,
    )
    maps = fit_compat_maps(uri, storage_options=opts)
    keys = {o["Key"] for o in s3_env["client"].list_objects_v2(Bucket="compat", Prefix="db/t_compat/")["Contents"]}
    assert keys == {f"db/t_compat/{maps.fingerprint}.safetensors", f"db/t_compat/{maps.fingerprint}.json"}
    table = open_table(uri, storage_options=opts)
    assert table.new_model_search.maps.fingerprint == maps.fingerprint
    hits = table.search(texts[2], model="new", k=1)
    assert hits["id"].to_pylist() == ["t2"]
