"""`embedjob upgrade`: a table an older embedjob wrote, or one moved since, gets LanceDB's embedding-function
metadata, after which plain LanceDB embeds a text query as embedjob does (real model, Lance, LanceDB)."""

from __future__ import annotations

import shutil

import lance
import lancedb
import pytest
from typer.testing import CliRunner

import storage.lancedb  # noqa: F401  (registers embedjob's query embedding with LanceDB)
from jobs.cli import app
from storage import open_table

from ..jobfiles import write_embedded_table


def _plain_search(folder, name: str, text: str, g: str) -> list:
    table = lancedb.connect(str(folder)).open_table(name)
    hits = table.search(text, vector_column_name=f"vec_{g}").distance_type("cosine").limit(5).to_arrow()
    return hits["id"].to_pylist()


def test_upgrade_registers_the_query_embedding_once_and_again_after_a_move(tmp_path, tiny_bert_dir, lee_articles):
    uri = str(tmp_path / "tables" / "lee.lance")
    write_embedded_table(uri, tiny_bert_dir, lee_articles[:40])  # written without the metadata, as before 0.1
    runner = CliRunner()
    shown = runner.invoke(app, ["inspect", uri])
    assert shown.exit_code == 0 and "not registered here (older table, or moved): embedjob upgrade" in shown.output
    query = lee_articles[7]
    with pytest.raises(Exception):  # noqa: B017  (plain LanceDB has no way to embed the text)
        _plain_search(tmp_path / "tables", "lee", query, "l4_d64")

    done = runner.invoke(app, ["upgrade", uri])
    assert done.exit_code == 0 and "LanceDB embedding functions written for l2_d16, l4_d64 (version 2)" in done.output
    tbl = open_table(uri)
    assert tbl.lancedb_search_registered and tbl.count_rows() == 40 and lance.dataset(uri).version == 2
    for g in ("l2_d16", "l4_d64"):
        assert _plain_search(tmp_path / "tables", "lee", query, g) == tbl.search(query, g, k=5)["id"].to_pylist()
    again = runner.invoke(app, ["upgrade", uri])
    assert again.exit_code == 0 and "already up to date (version 2)" in again.output

    # moved: the metadata names the old place; upgrade points it here
    moved = str(tmp_path / "elsewhere" / "lee.lance")
    shutil.copytree(uri, moved)
    assert not open_table(moved).lancedb_search_registered
    assert runner.invoke(app, ["upgrade", moved]).exit_code == 0
    assert open_table(moved).lancedb_search_registered
    shutil.rmtree(uri)  # the old place is gone: the moved table embeds through its own model files
    assert _plain_search(tmp_path / "elsewhere", "lee", query, "l4_d64")[0] == "t7"
