"""The README's Python sections ("From Python", "Query from Python"), executed as written, where `make demo`
leaves its corpus and table."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import run_job

from ..jobfiles import write_job

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"### {section}\n")
    end = text.index("\n### ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def _run_blocks(blocks: list[str]) -> dict:
    scope: dict = {}
    for block in blocks:
        exec(compile(block, f"README.md ({block.splitlines()[0]})", "exec"), scope)
    return scope


@pytest.mark.slow
def test_the_readme_python_sections_run_as_written(ray_local, tmp_path, monkeypatch, lee_articles):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "out" / "demo" / "lee.parquet"  # where `make demo` writes it
    corpus.parent.mkdir(parents=True)
    ids = [f"lee-{i:03d}" for i in range(len(lee_articles))]
    pq.write_table(pa.table({"id": ids, "text": list(lee_articles)}), corpus)
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l3_d64", "l3_d128", "l6_d64", "l6_d128", "l6_d384"],
        input={"uri": str(corpus)},
        model={"path": "all-MiniLM-L6-v2"},
        output={"uri": "out/demo/tables/lee.lance"},
    )
    run_job(job, progress=False)
    blocks = _python_blocks("Query from Python")
    assert len(blocks) == 2, blocks
    for block in blocks:
        scope: dict = {}
        exec(compile(block, f"README.md ({block.splitlines()[0]})", "exec"), scope)
    assert scope["tbl"].search(scope["vector"], vector_column_name="vec_l6_d128").limit(1).to_arrow().num_rows == 1
