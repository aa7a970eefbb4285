from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from cluster import SourceError, resolve_source


@pytest.fixture
def files(tmp_path):
    table = pa.table({"id": [1, 2], "text": ["a", "b"]})
    (tmp_path / "parts").mkdir()
    pq.write_table(table, tmp_path / "parts" / "a.parquet")
    pq.write_table(table, tmp_path / "parts" / "b.parquet")
    pcsv.write_csv(table, tmp_path / "t.csv")
    (tmp_path / "t.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n')
    return tmp_path


def test_directory_glob_and_single_file(files):
    assert len(resolve_source(str(files / "parts"), "parquet").paths) == 2
    src = resolve_source(str(files / "parts" / "*.parquet"))
    assert src.format == "parquet" and len(src.paths) == 2
    assert src.row_count() == 4
    assert resolve_source(str(files / "t.csv")).format == "csv"
    assert resolve_source(str(files / "t.jsonl")).format == "jsonl"


@pytest.mark.parametrize("name", ["parts/a.parquet", "t.csv", "t.jsonl"])
def test_schema_is_read_without_reading_the_data(files, name):
    assert resolve_source(str(files / name)).schema().names == ["id", "text"]


def test_errors_name_the_input_and_what_is_allowed(files):
    with pytest.raises(SourceError, match=r"input '.*nothing\*\.parquet' matches no parquet files"):
        resolve_source(str(files / "nothing*.parquet"))
    with pytest.raises(SourceError, match="cannot tell the format of input .*; set input.format to one of parquet"):
        resolve_source(str(files / "data.txt"))
    with pytest.raises(SourceError, match="input format 'xml' is not supported; allowed: parquet, jsonl, csv, lance"):
        resolve_source(str(files / "t.csv"), "xml")
