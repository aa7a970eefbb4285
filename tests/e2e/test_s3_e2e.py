"""A job reading from and writing to S3, through a real S3-compatible server on loopback."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs import run_job
from jobs.cli import app
from storage import ObjectStore, open_table

from ..jobfiles import write_job


def test_s3_in_and_out(ray_local, s3_env, tmp_path, lee_articles, minilm_path):
    client, endpoint = s3_env["client"], s3_env["endpoint"]
    client.create_bucket(Bucket="corpus")
    client.create_bucket(Bucket="vectors")
    articles = list(lee_articles[:80])
    for part in range(2):  # two files under a prefix
        rows = range(part * 40, part * 40 + 40)
        buf = io.BytesIO()
        pq.write_table(pa.table({"doc_id": [f"lee-{i:03d}" for i in rows], "body": [articles[i] for i in rows]}), buf)
        client.put_object(Bucket="corpus", Key=f"lee/part-{part}.parquet", Body=buf.getvalue())
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l3_d64", "l6_d384"],
        input={"uri": "s3://corpus/lee/", "format": "parquet", "id_column": "doc_id", "text_column": "body"},
        model={"path": str(minilm_path)},
        output={"uri": "s3://vectors/tables/lee.lance", "vector_dtype": "float16"},
        storage={"endpoint": endpoint},
    )
    summary = run_job(job, progress=False)
    assert (summary.rows_read, summary.rows_embedded) == (80, 80)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="vectors", Prefix="tables/")["Contents"]]
    assert any(k.startswith("tables/lee.lance/_versions/") for k in keys)
    assert any(k.startswith("tables/lee_runs.lance/") for k in keys)

    opts = ObjectStore.from_env(endpoint=endpoint).lance_options()
    tbl = open_table("s3://vectors/tables/lee.lance", storage_options=opts)
    assert tbl.count_rows() == 80
    assert tbl.dataset.schema.field("vec_l6_d384").type == pa.list_(pa.float16(), 384)
    ids = tbl.to_arrow(["id"])["id"].to_pylist()
    assert sorted(ids) == [f"lee-{i:03d}" for i in range(80)]
    hits = tbl.search(articles[7], "l6_d384", k=1)
    assert hits["id"].to_pylist() == ["lee-007"]
    assert hits["score"][0].as_py() == pytest.approx(1.0, abs=2e-3)  # float16 storage
    # credentials never land in the table or its run records
    meta = str(tbl.dataset.schema.metadata) + str(tbl.runs())
    assert "testing" not in meta
    out = CliRunner().invoke(
        app, ["query", "s3://vectors/tables/lee.lance", articles[7], "--endpoint", endpoint, "-k", "1"]
    )
    assert out.exit_code == 0, out.output
    assert "lee-007" in out.output


def test_s3_calibration_auto_is_fitted_stored_and_reused(ray_local, s3_env, tmp_path, lee_articles, tiny_bert_dir):
    """calibration = "auto" on S3: fitted on the first run, stored beside the table on S3, used by queries;
    the job's [index] section builds its index on S3, and funnel search reads through it."""
    client, endpoint = s3_env["client"], s3_env["endpoint"]
    client.create_bucket(Bucket="calib")
    articles = list(lee_articles)
    buf = io.BytesIO()
    pq.write_table(pa.table({"doc_id": [f"lee-{i:03d}" for i in range(300)], "body": articles}), buf)
    client.put_object(Bucket="calib", Key="corpus/lee.parquet", Body=buf.getvalue())
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d16", "l4_d64"],
        input={"uri": "s3://calib/corpus/lee.parquet", "id_column": "doc_id", "text_column": "body"},
        model={"path": str(tiny_bert_dir), "max_length": 64},
        output={"uri": "s3://calib/tables/lee.lance", "mode": "overwrite"},
        calibrate={"sample": 100},
        storage={"endpoint": endpoint},
        index={"granularities": ["l2_d16"]},
    )
    job.write_text('calibration = "auto"\n' + job.read_text())
    first = run_job(job, progress=False)
    assert first.calibration and first.calibration_origin.startswith("fitted now")
    assert [(i["column"], i["action"], i["rows"]) for i in first.indexes] == [("vec_l2_d16", "built", 300)]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="calib", Prefix="tables/lee_calibration/")["Contents"]]
    assert sorted(keys) == [f"tables/lee_calibration/{first.calibration}.{ext}" for ext in ("json", "safetensors")]
    second = run_job(job, progress=False)
    assert (second.calibration, second.calibration_origin) == (first.calibration, "the table's own")
    # mode = "overwrite" writes a new dataset version without the index: it is built again on it
    assert [(i["action"], i["version"]) for i in second.indexes] == [("built", second.table_version + 1)]
    opts = ObjectStore.from_env(endpoint=endpoint).lance_options()
    tbl = open_table("s3://calib/tables/lee.lance", storage_options=opts)
    assert tbl.calibration.fingerprint == first.calibration
    hits = tbl.search(articles[7], "l2_d16", k=1)
    assert hits["id"].to_pylist() == ["lee-007"]
    assert [(i["column"], i["type"], i["indexed_rows"]) for i in tbl.indexes()] == [("vec_l2_d16", "ivf_pq", 300)]
    funnel = tbl.funnel_search(articles[7], "l2_d16:40,l4_d64:2")
    assert funnel["id"][0].as_py() == "lee-007" and funnel.num_rows == 2
    from storage import list_calibrations

    assert [c.fingerprint for c in list_calibrations(tbl.uri, storage_options=opts)] == [first.calibration]
