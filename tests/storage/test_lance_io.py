"""One commit per run: staged fragments are invisible until the driver commits."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from embedder import ModelError
from storage import (
    Provenance,
    TableNotFoundError,
    commit,
    content_hash,
    open_table,
    output_schema,
    read_provenance,
    vector_array,
    write_fragments,
)


def _prov(**kw) -> Provenance:
    base = dict(
        model_path="/m",
        weights_fingerprint="f" * 16,
        granularities=("l1_d2", "l2_d4"),
        pooling="mean",
        normalize=True,
        max_length=16,
        num_layers=2,
        hidden_size=4,
        vector_dtype="float32",
        embedjob_version="t",
    )
    return Provenance(**{**base, **kw})


def _rows(schema: pa.Schema, ids: list[str]) -> pa.Table:
    n = len(ids)
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "id": ids,
            "content_hash": [content_hash(i) for i in ids],
            "text": ids,
            "vec_l1_d2": vector_array(rng.normal(size=(n, 2)), "float32"),
            "vec_l2_d4": vector_array(rng.normal(size=(n, 4)), "float32"),
            "run_id": ["r"] * n,
            "embedded_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
        }
    ).cast(schema)


def test_staged_fragments_are_invisible_until_the_commit(tmp_path):
    uri = str(tmp_path / "t.lance")
    schema = output_schema(_prov(), id_type=pa.string())
    v1 = commit(
        uri, write_fragments(_rows(schema, ["a", "b"]), uri, schema), schema=schema, mode="create", read_version=None
    )
    staged = write_fragments(_rows(schema, ["c"]), uri, schema) + write_fragments(_rows(schema, ["d"]), uri, schema)
    reader = lance.dataset(uri)
    assert reader.version == v1 and reader.count_rows() == 2  # staged rows are not visible
    v2 = commit(uri, staged, schema=schema, mode="append", read_version=v1)
    assert v2 == v1 + 1
    assert sorted(lance.dataset(uri).to_table()["id"].to_pylist()) == ["a", "b", "c", "d"]
    assert lance.dataset(uri, version=v1).count_rows() == 2  # the old version stays readable


def test_provenance_round_trip_and_differences(tmp_path):
    uri = str(tmp_path / "t.lance")
    prov = _prov()
    schema = output_schema(prov, id_type=pa.int64(), passthrough=[pa.field("lang", pa.string())], store_text=False)
    assert schema.names == ["id", "content_hash", "lang", "vec_l1_d2", "vec_l2_d4", "run_id", "embedded_at"]
    assert schema.field("vec_l2_d4").metadata == {b"layer": b"2", b"dim": b"4"}
    commit(uri, [], schema=schema, mode="create", read_version=None)
    assert read_provenance(uri) == prov
    assert read_provenance(str(tmp_path / "missing.lance")) is None
    other = _prov(pooling="cls", granularities=("l1_d2",), model_path="/elsewhere")
    assert prov.differences(other) == ["granularities: l1_d2,l2_d4 -> l1_d2", "pooling: mean -> cls"]


def test_the_backend_is_a_setting_and_older_provenances_read_as_torch():
    import json

    prov = _prov()
    older = json.loads(prov.to_json())
    del older["backend"]  # a table written before the backend was recorded
    assert Provenance.from_json(json.dumps(older)) == prov and prov.backend == "torch"
    int8 = _prov(backend="int8")
    assert prov.differences(int8) == ["backend: torch -> int8"]
    assert int8.settings_fingerprint != prov.settings_fingerprint
    # the fingerprint of a torch table is what it was before the backend was recorded (compat maps keep theirs)
    assert prov.settings_fingerprint == "f9c1a3c541571075"


def test_vector_columns_are_fixed_size_lists_in_the_chosen_dtype():
    arr = vector_array(np.ones((3, 8)), "float16")
    assert arr.type == pa.list_(pa.float16(), 8)
    assert len(arr) == 3


def test_open_table_refuses_what_embedjob_did_not_write(tmp_path):
    with pytest.raises(TableNotFoundError, match="no table at"):
        open_table(str(tmp_path / "nothing.lance"))
    lance.write_dataset(pa.table({"x": [1]}), str(tmp_path / "plain.lance"))
    with pytest.raises(TableNotFoundError, match="was not written by embedjob"):
        open_table(str(tmp_path / "plain.lance"))


def test_search_refuses_a_model_whose_weights_changed(tmp_path, tiny_bert_dir):
    uri = str(tmp_path / "t.lance")
    prov = _prov(model_path=str(tiny_bert_dir), granularities=("l1_d8",), hidden_size=64, num_layers=4)
    commit(uri, [], schema=output_schema(prov, id_type=pa.string()), mode="create", read_version=None)
    with pytest.raises(ModelError, match="the vectors were embedded with ffffffffffffffff; query vectors would not"):
        open_table(uri).search("anything", "l1_d8")
