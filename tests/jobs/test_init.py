"""`embedjob init CORPUS`: a valid job file from a corpus's schema and first rows, on parquet, jsonl and csv."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.corpora import passages
from jobs import load_job
from jobs.cli import app

TEXTS = passages(30, words=40)


def _corpus(tmp_path, fmt: str, **columns):
    table = pa.table(columns)
    path = tmp_path / f"articles.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        pcsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_init_picks_the_columns_and_a_model_and_writes_a_valid_job(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    corpus = _corpus(tmp_path, fmt, doc_id=list(range(30)), title=[t[:20] for t in TEXTS], body=TEXTS, lang=["en"] * 30)
    result = CliRunner().invoke(app, ["init", str(corpus)])
    assert result.exit_code == 0, result.output
    assert "id column 'doc_id'" in result.output and "text column 'body'" in result.output
    assert "model 'all-MiniLM-L6-v2'" in result.output and "articles.toml: written and valid" in result.output
    spec = load_job(tmp_path / "articles.toml")
    assert (spec.input.id_column, spec.input.text_column, spec.model.path) == ("doc_id", "body", "all-MiniLM-L6-v2")
    assert spec.granularities == "starbucks" and spec.output.uri == str(tmp_path / "out" / "articles.lance")
    validated = CliRunner().invoke(app, ["validate", str(tmp_path / "articles.toml")])
    assert validated.exit_code == 0 and "l6_d128" in validated.output, validated.output
    # an existing job file is kept unless --force
    again = CliRunner().invoke(app, ["init", str(corpus)])
    assert again.exit_code == 2 and "exists already" in again.output


def test_init_asks_which_column_when_it_cannot_tell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = _corpus(tmp_path, "parquet", key=[f"k{i}" for i in range(30)], summary=TEXTS, notes=TEXTS)
    result = CliRunner().invoke(app, ["init", str(corpus)])
    assert result.exit_code == 2
    assert "choose with --text-column from: summary" in result.output and "notes" in result.output
    assert not (tmp_path / "articles.toml").exists()  # nothing written
    chosen = CliRunner().invoke(app, ["init", str(corpus), "--text-column", "notes", "--job", "j.toml"])
    assert chosen.exit_code == 0, chosen.output
    spec = load_job(tmp_path / "j.toml")
    assert (spec.input.id_column, spec.input.text_column) == ("key", "notes")
