"""A backfill is a run like any other: a failure is recorded, and resuming it keeps the fragments it staged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.exceptions import RayActorError

from bench.corpora import passages
from embedder import ElasticEncoder, Granularity
from jobs import backfill_job, resume_run, run_job
from storage import LATEST_GOOD, open_table, staged_runs, staging_dir

from ..jobfiles import write_job
from ..processes import kill_once


def _job(path, corpus, model, grans):
    return write_job(
        path,
        granularities=grans,
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(path.parent / "out" / "docs.lance")},
        cluster={"rows_per_block": 20, "rows_per_part": 20},  # 12 fragments: 12 backfill parts
    )


def test_a_failed_backfill_is_recorded_and_resumes_without_redoing_its_fragments(ray_local, tmp_path, tiny_bert_dir):
    rows = {f"d{i:03d}": t for i, t in enumerate(passages(240, words=30))}
    corpus = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"doc_id": list(rows), "body": list(rows.values())}), corpus)
    first = run_job(_job(tmp_path / "job.toml", corpus, tiny_bert_dir, ["l2_d32"]), progress=False)
    uri = first.table_uri
    grown = _job(tmp_path / "grown.toml", corpus, tiny_bert_dir, ["l2_d32", "l3_d16"])

    def staged_a_part() -> bool:
        return any(Path(staging_dir(uri)).glob("*/parts/*.json"))

    # the backfill's actor is killed once it staged a fragment, and each time Ray restarts it: out of restarts,
    # the backfill fails
    with kill_once("BackfillActor", when=staged_a_part, times=4) as kill, pytest.raises(RayActorError):
        backfill_job(grown, ["l3_d16"], progress=False)
    assert len(kill.pids) >= 3, kill
    (staging,) = staged_runs(uri)
    record = staging.read_record()
    assert (record.status, record.mode) == ("failed", "backfill l3_d16")
    staged = len(staging.parts())
    assert 0 < staged < 12, staged
    (failed,) = [r for r in open_table(uri).runs() if r["run_id"] == staging.run_id]
    assert failed["status"] == "failed" and failed["mode"] == "backfill l3_d16" and failed["error"]
    assert open_table(uri).version == first.table_version  # nothing committed

    done = resume_run(staging.run_id, progress=False)
    assert done.run_id == staging.run_id and done.mode == "backfill l3_d16"
    assert done.rows_embedded == 240 and 0 < done.rows_resumed < 240
    assert staged_runs(uri) == []
    tbl = open_table(uri)
    assert tbl.version == first.table_version + 1
    # tagged like any run: its id on the version it made, latest-good moved there
    assert tbl.tags() == {LATEST_GOOD: tbl.version, done.run_id: tbl.version, first.run_id: first.table_version}
    got = tbl.to_arrow(["id", "vec_l3_d16"])
    assert sorted(got["id"].to_pylist()) == sorted(rows)  # every row once
    enc = ElasticEncoder.from_pretrained(tiny_bert_dir, ["l3_d16"], device="cpu")
    fresh = enc.encode([rows[i] for i in got["id"].to_pylist()])[Granularity(3, 16)]
    stored = np.asarray(got["vec_l3_d16"].to_pylist(), dtype=np.float32)
    assert float(np.min(np.sum(fresh * stored, axis=1))) > 0.999
    assert [r["status"] for r in tbl.runs() if r["run_id"] == staging.run_id] == ["failed", "committed"]
