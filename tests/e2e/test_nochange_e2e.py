"""A night with nothing changed: decided in the driver from the input's ids and hashes, with no Ray and no model;
any difference runs the pipeline as before. Real Lance tables, real Ray for the nights that embed, tiny BERT."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.corpora import passages
from jobs import run_job
from storage import LATEST_GOOD, RunStaging, RunStatus, StagingRecord, new_run_id, open_table

from ..jobfiles import write_job

GRANS = ["l2_d32", "l4_d64"]
N = 40
ROOT = Path(__file__).resolve().parents[2]

# `embedjob run` as its own process; at its exit it writes which modules it had imported: loading the weights of a
# Hugging Face model imports safetensors and its modeling module, reading configs and hashing the files does not
_HARNESS = """
import atexit, json, os, runpy, sys
def report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "safetensors" or ".modeling_" in m)
    with open(os.environ["NOCHANGE_REPORT"], "w") as fh:
        json.dump(loaded, fh)
atexit.register(report)
sys.argv = ["embedjob", *sys.argv[1:]]
runpy.run_module("jobs.cli", run_name="__main__")
"""


def _write_corpus(path: Path, rows: list[tuple[object, object]], text_type: pa.DataType | None = None) -> None:
    ids, texts = zip(*rows, strict=True) if rows else ((), ())
    pq.write_table(
        pa.table({"doc_id": pa.array(ids, pa.string()), "body": pa.array(texts, text_type or pa.string())}), path
    )


def _job(folder: Path, model: Path, out: Path, **sections: dict) -> Path:
    output = {"uri": str(out), "max_reject_fraction": 0.1, **sections.pop("output", {})}
    return write_job(
        folder / "job.toml",
        granularities=GRANS,
        input={"uri": str(folder / "docs.parquet"), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output=output,
        cluster={"rows_per_block": 20, **sections.pop("cluster", {})},
        **sections,
    )


@pytest.fixture(scope="module")
def base(ray_local, _tiny_models, tmp_path_factory):
    """A table made by a real run (version 1) from N passages; each test copies it (its runs table too)."""
    folder = tmp_path_factory.mktemp("nochange-base")
    rows = [(f"d{i:03d}", t) for i, t in enumerate(passages(N, words=20))]
    _write_corpus(folder / "docs.parquet", rows)
    first = run_job(_job(folder, _tiny_models["bert"], folder / "out" / "docs.lance"), progress=False)
    assert (first.table_version, first.rows_new) == (1, N)
    return {"folder": folder, "rows": rows, "model": _tiny_models["bert"]}


def _night(base: dict, tmp_path: Path, rows: list[tuple[object, object]], **sections: dict) -> Path:
    """A copy of the base table, and a job whose input is ``rows``."""
    shutil.copytree(base["folder"] / "out", tmp_path / "out")
    _write_corpus(tmp_path / "docs.parquet", rows, sections.pop("text_type", None))
    return _job(tmp_path, base["model"], tmp_path / "out" / "docs.lance", **sections)


def test_a_night_with_nothing_changed_starts_no_ray_and_loads_no_weights(base, tmp_path):
    """`embedjob run` in its own process, no RAY_ADDRESS: any Ray it started would write its session under
    RAY_TMPDIR (test_the_probe_sees_ray_when_a_night_has_work shows it does); it imports no model code."""
    job = _night(base, tmp_path, base["rows"])
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    report = tmp_path / "modules.json"
    try:
        proc = _embedjob_run(job, ray_tmp, report)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert list(ray_tmp.iterdir()) == [], "Ray was started"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert json.loads(report.read_text()) == []  # no safetensors, no modeling_bert: the weights were not loaded
    assert "nothing changed since version 1" in proc.stderr and "no Ray started" in proc.stderr
    assert "still version 1: nothing changed" in proc.stdout
    last = open_table(str(tmp_path / "out" / "docs.lance")).runs()[-1]
    assert (last["status"], last["table_version"], last["rows_read"], last["rows_unchanged"]) == ("committed", 1, N, N)


@pytest.mark.slow
def test_the_probe_sees_ray_when_a_night_has_work(base, tmp_path):
    """The control of the test above: the same process, one changed row (the small-night path turned off, see
    test_smallnight_e2e): Ray starts, under RAY_TMPDIR."""
    rows = list(base["rows"])
    rows[0] = (rows[0][0], rows[0][1] + " (revised)")
    job = _night(base, tmp_path, rows, cluster={"in_process_below": 0})  # not a small night
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        proc = _embedjob_run(job, ray_tmp, tmp_path / "modules.json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert list((ray_tmp / "ray").glob("session_*")), "no Ray session under RAY_TMPDIR"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert open_table(str(tmp_path / "out" / "docs.lance")).runs()[-1]["rows_changed"] == 1


def _embedjob_run(job: Path, ray_tmp: Path, report: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), NOCHANGE_REPORT=str(report), PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-c", _HARNESS, "run", str(job), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=job.parent,
        timeout=600,
    )


def test_a_night_with_nothing_changed_is_recorded_as_the_pipeline_recorded_it(base, tmp_path, caplog):
    """The fields a no-change night had when the pipeline found it (seen before the check existed): committed,
    no new version, every row unchanged, latest-good on the version, the same row in the runs table."""
    job = _night(base, tmp_path, base["rows"])
    with caplog.at_level(logging.INFO, logger="embedjob"):
        night = run_job(job, progress=False)
    assert "nothing changed since version 1" in caplog.text
    got = night.to_json()
    for varies in ("run_id", "started_at", "finished_at", "seconds", "seconds_pipeline", "table_uri", "pool"):
        got.pop(varies)
    assert got == {
        "job_name": "job",
        "mode": "incremental",
        "status": "committed",
        "table_version": 1,
        "read_version": 1,
        "rows_read": N,
        "rows_unchanged": N,
        **dict.fromkeys(("rows_embedded", "rows_rejected", "tokens", "truncated", "rows_new", "rows_changed"), 0),
        **dict.fromkeys(("rows_deleted", "rows_resumed", "rows_migrated"), 0),
        "reject_reasons": {},
        "error": None,
        "calibration": None,
        "calibration_origin": "none",
        "seconds_calibration": 0.0,
        "indexes": [],
        "rows_per_node": {},
        "chunked": False,
        "warnings": [],
        "tags": [LATEST_GOOD],
        "gate": None,
        "migration": None,
    }
    assert night.pool == "none: nothing changed since version 1 (checked without Ray)"
    tbl = open_table(night.table_uri)
    row = tbl.runs()[-1]
    assert {k: row[k] for k in got if k in row} == {
        k: v if k != "reject_reasons" else "{}" for k, v in got.items() if k in row
    }
    assert (row["run_id"], row["pool"], tbl.version, tbl.tags()[LATEST_GOOD]) == (night.run_id, night.pool, 1, 1)


def test_a_night_with_a_gate_and_nothing_changed_does_not_evaluate_it(base, tmp_path):
    """Nothing new to judge: the gate's figure is not computed and latest-good is not moved by the night."""
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"query": base["rows"][0][1], "expected": [base["rows"][0][0]]}) + "\n")
    night = run_job(_night(base, tmp_path, base["rows"], gate={"probes": str(probes), "floor": 0.5}), progress=False)
    assert (night.table_version, night.rows_unchanged, night.gate, night.tags) == (1, N, None, [])
    assert night.passed_checks  # nothing failed: the night is good, it just moved nothing


def _variant(rows: list[tuple[object, object]], case: str) -> list[tuple[object, object]]:
    rows = list(rows)
    if case == "changed":
        rows[5] = (rows[5][0], rows[5][1] + " (revised)")
    elif case == "new":
        rows.append(("n001", "A completely new passage about river boats."))
    elif case == "removed":
        del rows[7]
    elif case == "empty text":
        rows[9] = (rows[9][0], "")
    elif case == "duplicate id":
        rows.append(rows[3])
    return rows


#: what the pipeline makes of each night: read, new, changed, unchanged, deleted, rejected, embedded, version
PIPELINE_COUNTS = {
    "changed": (N, 0, 1, N - 1, 0, 0, 1, 2),
    "new": (N + 1, 1, 0, N, 0, 0, 1, 2),
    "removed": (N - 1, 0, 0, N - 1, 1, 0, 0, 2),
    "empty text": (N, 0, 0, N - 1, 0, 1, 0, 1),  # rejected, its old row kept: nothing to commit
    "duplicate id": (N + 1, 0, 0, N, 0, 1, 0, 1),
}


@pytest.mark.parametrize(
    "case",
    # one night through the pipeline in the default suite; each difference's decision is test_what_the_check_decides
    [c if c == "changed" else pytest.param(c, marks=pytest.mark.slow) for c in PIPELINE_COUNTS],
)
def test_a_night_with_a_difference_runs_the_pipeline_as_before(base, tmp_path, caplog, case):
    job = _night(base, tmp_path, _variant(base["rows"], case))
    with caplog.at_level(logging.INFO, logger="embedjob"):
        night = run_job(job, progress=False)
    assert "the input differs from version 1" in caplog.text and "nothing changed since" not in caplog.text
    assert "CPU actor" in night.pool  # the pipeline's actor pool
    got = (night.rows_read, night.rows_new, night.rows_changed, night.rows_unchanged, night.rows_deleted)
    got += (night.rows_rejected, night.rows_embedded, night.table_version)
    assert got == PIPELINE_COUNTS[case]


@pytest.mark.parametrize(
    ("case", "text_type", "found"),
    [
        pytest.param("changed", pa.string(), "id 'd005' is changed", id="changed"),
        pytest.param("new", pa.string(), "id 'n001' is new", id="new"),
        pytest.param("removed", pa.string(), "1 id(s) left the input", id="removed"),
        pytest.param("empty text", pa.string(), "a row would be rejected: empty text", id="empty text"),
        pytest.param("duplicate id", pa.string(), "id 'd003' is there twice", id="duplicate id"),
        pytest.param("whitespace", pa.string(), "a row would be rejected: whitespace-only text", id="whitespace"),
        pytest.param("null id", pa.string(), "a row would be rejected: null id", id="null id"),
        pytest.param("undecodable", pa.binary(), "a row would be rejected: undecodable", id="undecodable"),
        pytest.param("unchanged bytes", pa.binary(), None, id="unchanged bytes"),
    ],
)
def test_what_the_check_decides(base, tmp_path, caplog, case, text_type, found):
    """No Ray: the check alone, on each kind of difference (and UTF-8 bytes that are the same text)."""
    from jobs._lifecycle import checked_job
    from jobs._nochange import unchanged_since

    rows = _variant(base["rows"], case)
    if case == "whitespace":
        rows[2] = (rows[2][0], " \n\t ")
    if case == "null id":
        rows[2] = (None, rows[2][1])
    if text_type == pa.binary():
        rows = [(i, t.encode()) for i, t in rows]
    if case == "undecodable":
        rows[4] = (rows[4][0], b"\xff\xfe not utf-8")
    resolved, _ = checked_job(_night(base, tmp_path, rows, text_type=text_type), None)
    with caplog.at_level(logging.INFO, logger="embedjob"):
        answer = unchanged_since(resolved, resolved.mode, 1, None)
    if found is None:
        assert answer is not None and answer.rows == N
    else:
        assert answer is None and found in caplog.text


def test_the_check_leaves_other_runs_to_the_pipeline(base, tmp_path):
    """A resume, another mode, a staged run of the table, delete_missing = false (a removed id is no change)."""
    from jobs._lifecycle import checked_job
    from jobs._nochange import unchanged_since

    resolved, _ = checked_job(_night(base, tmp_path, base["rows"]), None)
    assert unchanged_since(resolved, "incremental", 1, None) is not None
    assert unchanged_since(resolved, "incremental", 1, new_run_id()) is None
    assert unchanged_since(resolved, "append", 1, None) is None
    staging = RunStaging(resolved.output_uri, new_run_id())
    staging.write_record(StagingRecord(run_id=staging.run_id, status=RunStatus.FAILED, mode="incremental"))
    assert unchanged_since(resolved, "incremental", 1, None) is None
    staging.remove()
    kept, _ = checked_job(
        _job(tmp_path, base["model"], Path(resolved.output_uri), output={"delete_missing": False}), None
    )
    _write_corpus(tmp_path / "docs.parquet", _variant(base["rows"], "removed"))
    assert unchanged_since(kept, "incremental", 1, None).rows == N - 1
    assert unchanged_since(resolved, "incremental", 1, None) is None  # with delete_missing the id goes


@pytest.mark.slow  # ~20 s: a chunked table made through the pipeline; the check's chunked rule is unit-sized
def test_a_chunked_table_with_nothing_changed_is_compared_by_document(ray_local, tmp_path, tiny_bert_dir, caplog):
    from jobs._lifecycle import checked_job
    from jobs._nochange import unchanged_since

    docs = [(f"doc{i}", " ".join(passages(12, words=30)[i : i + 4])) for i in range(6)]  # several chunks each
    _write_corpus(tmp_path / "docs.parquet", docs)
    job = _job(tmp_path, tiny_bert_dir, tmp_path / "out" / "docs.lance", chunking={"tokens": 24})
    first = run_job(job, progress=False)
    assert first.rows_embedded > len(docs)  # chunks
    with caplog.at_level(logging.INFO, logger="embedjob"):
        night = run_job(job, progress=False)
    assert "nothing changed since version 1" in caplog.text
    assert (night.chunked, night.rows_read, night.rows_unchanged, night.rows_embedded) == (True, 6, 6, 0)
    assert night.table_version == night.read_version == 1
    docs[2] = (docs[2][0], docs[2][1] + " One more sentence.")
    _write_corpus(tmp_path / "docs.parquet", docs)
    resolved, _ = checked_job(job, None)
    assert unchanged_since(resolved, resolved.mode, 1, None) is None


def test_an_input_on_s3_is_compared_in_the_driver_too(base, tmp_path, s3_env):
    """The source's own S3 reader, in this process: the same answer as for a local file."""
    import io

    from jobs._lifecycle import checked_job
    from jobs._nochange import unchanged_since

    client, endpoint = s3_env["client"], s3_env["endpoint"]
    client.create_bucket(Bucket="nights")
    job = _night(base, tmp_path, base["rows"])
    for case, expected in (("unchanged", N), ("changed", None)):
        buf = io.BytesIO()
        _write_corpus(buf, _variant(base["rows"], case))
        client.put_object(Bucket="nights", Key=f"{case}/part-0.parquet", Body=buf.getvalue())
        resolved, _ = checked_job(
            job, {"input.uri": f"s3://nights/{case}/part-0.parquet", "storage.endpoint": endpoint}
        )
        assert resolved.source.is_s3
        answer = unchanged_since(resolved, resolved.mode, 1, None)
        assert (answer.rows if answer else None) == expected, case
