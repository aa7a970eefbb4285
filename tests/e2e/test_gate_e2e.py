"""The quality gate with real runs: real Ray, real Lance, tiny BERT, probes built from the corpus itself."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.corpora import passages
from jobs import run_job
from jobs.cli import app
from storage import LATEST_GOOD, open_table

from ..jobfiles import write_job


def _corpus(path, rows: dict) -> None:
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), path)


@pytest.mark.slow  # ~45 s, two Ray runs; tests/jobs/test_gate.py refuses worse tables without Ray
def test_the_gate_refuses_a_worse_run(ray_local, tmp_path, tiny_bert_dir):
    """Probes = the texts of five rows, expecting their ids. The first run finds them all (recall@1 = 1) and
    moves latest-good; the second changes those rows to unrelated texts: it commits, but its recall is below the
    floor, so latest-good stays at the first version, its record says why, and `embedjob run` exits 1."""
    rows = {f"d{i:03d}": t for i, t in enumerate(passages(40, words=30))}
    corpus = tmp_path / "docs.parquet"
    _corpus(corpus, rows)
    probed = ["d003", "d011", "d020", "d027", "d035"]
    (tmp_path / "probes.jsonl").write_text(
        "".join(json.dumps({"query": rows[i], "expected": [i]}) + "\n" for i in probed)
    )
    uri = str(tmp_path / "out" / "docs.lance")
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32"],
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir)},
        output={"uri": uri},
        gate={"probes": "probes.jsonl", "k": 1, "floor": 0.8},
    )
    first = run_job(job, progress=False)
    assert first.gate == {
        "metric": "recall@1",
        "granularity": "l2_d32",
        "value": 1.0,
        "floor": 0.8,
        "passed": True,
        "probes": 5,
        "version": 1,
    }
    assert (first.table_version, first.tags, first.error) == (1, [first.run_id, LATEST_GOOD], None)

    for n, i in enumerate(probed):
        rows[i] = f"Unrelated note number {n}: the bakery opens at seven and closes when the bread runs out."
    _corpus(corpus, rows)
    result = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    assert result.exit_code == 1, result.output
    figure = "quality gate: recall@1 0.00 < floor 0.80 (l2_d32, 5 probes, version 2)"
    assert f"committed version 2, but {figure}; latest-good was not moved to it" in result.output

    table = open_table(uri)
    second_id = table.runs()[-1]["run_id"]
    assert table.tags() == {LATEST_GOOD: 1, second_id: 2, first.run_id: 1}
    assert [(r["status"], r["table_version"], r["rows_changed"], r["error"]) for r in table.runs()] == [
        ("committed", 1, 0, None),
        ("committed", 2, 5, figure),
    ]
