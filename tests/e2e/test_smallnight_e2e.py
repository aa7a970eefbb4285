"""A night with little changed: below ``[cluster] in_process_below`` rows to embed, and with no cluster named, it runs
in the driver's process without Ray, giving exactly the rows, vectors, rejects and record the actor pool gives. So
does any run where the embedded Ray's pool would be one CPU actor (``cluster.one_encoder_here``), a create too.
Real Lance tables, real Ray for the pool's side (the session's), tiny random BERT."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.corpora import passages
from jobs import run_job
from storage import open_table

from ..jobfiles import write_job

GRANS = ["l2_d32", "l4_d64"]
N = 40
ROOT = Path(__file__).resolve().parents[2]
#: two actors: never the one encoder of this process, on any machine (the row threshold alone decides)
TWO_ACTORS = {"cluster.actors": 2}


def _write_corpus(path: Path, rows: list[tuple[object, object]]) -> None:
    ids, texts = zip(*rows, strict=True)
    langs = ["en" if i % 3 else "de" for i in range(len(rows))]  # a passthrough column
    pq.write_table(pa.table({"doc_id": pa.array(ids, pa.string()), "body": texts, "lang": langs}), path)


def _job(folder: Path, model: Path, out: Path, **cluster: object) -> Path:
    return write_job(
        folder / "job.toml",
        granularities=GRANS,
        input={"uri": str(folder / "docs.parquet"), "id_column": "doc_id", "text_column": "body", "columns": ["lang"]},
        model={"path": str(model)},
        output={"uri": str(out), "max_reject_fraction": 0.2},
        cluster={"rows_per_block": 16, **cluster},
    )


@pytest.fixture(scope="module")
def base(ray_local, _tiny_models, tmp_path_factory):
    """A table made by a real pool run (version 1) from N passages; each night copies it."""
    folder = tmp_path_factory.mktemp("smallnight-base")
    rows = [(f"d{i:03d}", t) for i, t in enumerate(passages(N, words=20))]
    _write_corpus(folder / "docs.parquet", rows)
    first = run_job(_job(folder, _tiny_models["bert"], folder / "out" / "docs.lance"), progress=False)
    assert (first.table_version, first.rows_new) == (1, N)
    return {"folder": folder, "rows": rows, "model": _tiny_models["bert"]}


def _small_night(rows: list[tuple[object, object]]) -> list[tuple[object, object]]:
    """3 changed, 2 new, 1 removed, an empty text and a duplicate id (both rejected)."""
    rows = list(rows)
    for k in (2, 11, 30):
        rows[k] = (rows[k][0], rows[k][1] + " (revised)")
    del rows[7]
    rows[20] = (rows[20][0], "")
    return [*rows, ("n001", "A new passage about river boats."), ("n002", "Another new one on tides."), rows[4]]


def _night(base: dict, folder: Path, rows: list[tuple[object, object]], **cluster: object) -> Path:
    folder.mkdir()
    shutil.copytree(base["folder"] / "out", folder / "out")
    _write_corpus(folder / "docs.parquet", rows)
    return _job(folder, base["model"], folder / "out" / "docs.lance", **cluster)


def _embedjob_run(job: Path, ray_tmp: Path) -> subprocess.CompletedProcess:
    """``embedjob run`` as its own process with no RAY_ADDRESS: any Ray it started would write its session under
    RAY_TMPDIR (test_nochange_e2e's probe)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", str(job), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=job.parent,
        timeout=600,
    )


def _run_without_ray(job: Path) -> subprocess.CompletedProcess:
    """``embedjob run`` of ``job`` in its own process, which must succeed without starting Ray (no session appears
    in a fresh RAY_TMPDIR)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        proc = _embedjob_run(job, ray_tmp)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert list(ray_tmp.iterdir()) == [], "Ray was started"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return proc


def _rows(uri: str) -> dict[str, dict]:
    table = lance.dataset(uri).to_table()
    return {r["id"]: r for r in table.to_pylist()}


def test_a_small_night_in_process_gives_exactly_the_pools_rows_and_vectors(base, tmp_path):
    """The same night twice from the same table, the same job (5 rows to embed, below 100): through the Ray pool
    (this test process holds the session's Ray, which a run uses as is), and as `embedjob run` in its own
    process, which starts no Ray (no session appears): the table, its rejects and the run's record are the
    pool's (vectors within float tolerance)."""
    rows = _small_night(base["rows"])
    pooled = run_job(_night(base, tmp_path / "pool", rows, in_process_below=100), progress=False)
    assert "CPU actor" in pooled.pool

    proc = _run_without_ray(_night(base, tmp_path / "here", rows, in_process_below=100))
    assert "5 row(s) to embed, below cluster.in_process_below = 100" in proc.stderr
    assert "(below cluster.in_process_below = 100); no Ray; 1 encoder x" in proc.stdout  # the printed summary

    here_tbl, pool_tbl = open_table(str(tmp_path / "here" / "out" / "docs.lance")), open_table(pooled.table_uri)
    here = here_tbl.runs()[-1]
    assert here["pool"].startswith("in-process: 5 row(s) to embed (below cluster.in_process_below = 100); no Ray")
    varies = {"run_id", "started_at", "finished_at", "seconds", "seconds_pipeline", "table_uri", "pool", "tags"}
    pool_row = pool_tbl.runs()[-1]
    assert {k: v for k, v in here.items() if k not in varies} == {k: v for k, v in pool_row.items() if k not in varies}
    assert (here["rows_new"], here["rows_changed"], here["rows_deleted"], here["rows_rejected"]) == (2, 3, 1, 2)
    assert (here_tbl.version, pool_tbl.version) == (2, 2)

    got, want = _rows(here_tbl.uri), _rows(pooled.table_uri)
    assert sorted(got) == sorted(want) and len(got) == N + 1  # 40 - 1 removed + 2 new
    new_ids = {"d002", "d011", "d030", "n001", "n002"}
    for id_value, row in got.items():
        other = want[id_value]
        for column in ("content_hash", "text", "lang"):
            assert row[column] == other[column], (id_value, column)
        for g in GRANS:
            assert np.allclose(row[f"vec_{g}"], other[f"vec_{g}"], atol=1e-5), (id_value, g)
        assert (row["run_id"] == here["run_id"]) == (id_value in new_ids)  # the rest kept the first run's
    rejected = {
        side: sorted(
            (r["id"], r["reason"], r["text"])
            for r in lance.dataset(str(tmp_path / side / "out" / "docs_rejects.lance")).to_table().to_pylist()
        )
        for side in ("here", "pool")
    }
    assert rejected["here"] == rejected["pool"] and len(rejected["here"]) == 2


def test_a_create_where_the_pool_would_be_one_actor_runs_in_process_with_the_pools_rows(base, tmp_path):
    """The base table's job again into a new table (a create), as `embedjob run` in its own process, its N rows above
    in_process_below = 10 but all the CPUs as one actor's threads: no Ray starts, and the table is the one the
    pool made (the base's version 1: same ids, hashes and vectors)."""
    from cluster import PoolRequest, one_encoder_here
    from cluster._inprocess import local_cpus

    cpus = local_cpus()
    if one_encoder_here(PoolRequest(cpus_per_actor=cpus)) is None:
        pytest.skip("a GPU here: the embedded Ray's pool would be GPU actors")
    folder = tmp_path / "create"
    folder.mkdir()
    _write_corpus(folder / "docs.parquet", base["rows"])
    proc = _run_without_ray(
        _job(folder, base["model"], folder / "out" / "docs.lance", in_process_below=10, cpus_per_actor=cpus)
    )
    assert "WARN" not in proc.stderr, proc.stderr  # Lance's "No existing dataset" among them
    table = open_table(str(folder / "out" / "docs.lance"))
    record = table.runs()[-1]
    assert (record["mode"], record["rows_new"], table.version) == ("create", N, 1)
    assert record["pool"].startswith(f"in-process: {N} input row(s); an embedded Ray here would run 1 CPU actor x ")
    got = _rows(table.uri)
    want = {
        r["id"]: r for r in lance.dataset(str(base["folder"] / "out" / "docs.lance"), version=1).to_table().to_pylist()
    }
    assert sorted(got) == sorted(want) and len(got) == N
    for id_value, row in got.items():
        assert (row["content_hash"], row["lang"]) == (want[id_value]["content_hash"], want[id_value]["lang"])
        for g in GRANS:
            assert np.allclose(row[f"vec_{g}"], want[id_value][f"vec_{g}"], atol=1e-5), (id_value, g)


# ----------------------------------------------------------------- the decision, without Ray


@pytest.fixture
def quiet_table(_tiny_models, tmp_path):
    """A table of N passages written in this process (no Ray), and its job; ``night(rows, **overrides)`` writes the
    input and answers what the night needs (``jobs._nochange.before_ray``)."""
    from jobs._lifecycle import checked_job
    from jobs._nochange import before_ray

    from ..jobfiles import write_embedded_table

    rows = [(f"d{i:03d}", t) for i, t in enumerate(passages(N, words=20))]
    out = tmp_path / "out" / "docs.lance"
    write_embedded_table(str(out), _tiny_models["bert"], [t for _, t in rows], [i for i, _ in rows], GRANS)
    job = _job(tmp_path, _tiny_models["bert"], out)

    def night(night_rows, resume=None, mode="incremental", without_ray=True, **overrides):
        _write_corpus(tmp_path / "docs.parquet", night_rows)
        resolved, _ = checked_job(job, overrides or None)
        return before_ray(resolved, mode, 1, resume, without_ray=without_ray), resolved

    return {"rows": rows, "night": night}


def _changed(rows: list[tuple[object, object]], k: int) -> list[tuple[object, object]]:
    return [(i, t + " (revised)") if n < k else (i, t) for n, (i, t) in enumerate(rows)]


@pytest.mark.parametrize(("k", "below", "in_process"), [(5, 6, True), (5, 5, False), (0, 1, None), (3, 0, False)])
def test_the_threshold_decides(quiet_table, k, below, in_process):
    """Fewer rows to embed than in_process_below: in this process; as many or more: the pool; 0 turns it off; a
    night with nothing changed stays the no-change check's (None here: Unchanged)."""
    from jobs._nochange import InProcess, Unchanged

    night, _ = quiet_table["night"](
        _changed(quiet_table["rows"], k), **{"cluster.in_process_below": below}, **TWO_ACTORS
    )
    if in_process is None:
        assert isinstance(night, Unchanged)
    elif in_process:
        assert isinstance(night, InProcess) and (night.rows, night.below) == (k, below)
        assert night.describe() == f"in-process: {k} row(s) to embed (below cluster.in_process_below = {below}); no Ray"
    else:
        assert night is None


def test_new_rows_count_and_rejects_or_deletions_alone_run_in_process(quiet_table):
    from jobs._nochange import InProcess

    rows = quiet_table["rows"]
    grown = [*rows[:-1], ("n1", "a new passage"), ("n2", "another new passage"), (rows[0][0], "")]
    night, _ = quiet_table["night"](grown, **{"cluster.in_process_below": 3}, **TWO_ACTORS)
    assert isinstance(night, InProcess) and night.rows == 2  # 2 new; the rejected row and the removed id cost none
    assert quiet_table["night"](grown, **{"cluster.in_process_below": 2}, **TWO_ACTORS)[0] is None


def test_a_job_given_a_cluster_never_runs_in_process(quiet_table, monkeypatch):
    """`[cluster] address` or RAY_ADDRESS (a job submitted to a cluster has it): always the cluster's pool."""
    from jobs._nochange import InProcess

    few = _changed(quiet_table["rows"], 2)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert isinstance(quiet_table["night"](few)[0], InProcess)  # the default threshold
    assert quiet_table["night"](few, **{"cluster.address": "127.0.0.1:6379"})[0] is None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert quiet_table["night"](few)[0] is None


def test_a_process_holding_a_ray_session_uses_it(quiet_table):
    """A notebook's or a test's ray.init() (maybe to a cluster): the lifecycle says so, and the pool runs; a
    night with nothing changed is still found."""
    from jobs._nochange import Unchanged

    rows = quiet_table["rows"]
    assert quiet_table["night"](_changed(rows, 2), without_ray=False)[0] is None
    assert isinstance(quiet_table["night"](rows, without_ray=False)[0], Unchanged)


def test_a_run_to_finish_runs_in_process_and_other_modes_count_their_input(quiet_table):
    """A resume (or a staged run of the table to finish) is never a night with nothing to do, but can be small; an
    append or an overwrite embeds its whole input: in this process below the threshold (the input's footers
    count N rows), else the pool; a migration step is always the pool's."""
    from jobs._nochange import InProcess
    from storage import RunStaging, RunStatus, StagingRecord, new_run_id

    rows = quiet_table["rows"]
    night, resolved = quiet_table["night"](rows, resume=new_run_id())
    assert isinstance(night, InProcess) and night.rows == 0
    staging = RunStaging(resolved.output_uri, new_run_id())
    staging.write_record(StagingRecord(run_id=staging.run_id, status=RunStatus.FAILED, mode="incremental"))
    assert isinstance(quiet_table["night"](rows)[0], InProcess)
    staging.remove()
    for mode in ("append", "overwrite"):
        night, _ = quiet_table["night"](_changed(rows, 1), mode=mode, **TWO_ACTORS)
        assert isinstance(night, InProcess) and night.rows == N, mode
        assert night.describe().startswith(f"in-process: {N} row(s) to embed (below the break-even, "), mode
        assert (
            quiet_table["night"](_changed(rows, 1), mode=mode, **{"cluster.in_process_below": N}, **TWO_ACTORS)[0]
            is None
        )
    assert quiet_table["night"](_changed(rows, 1), mode="migrate")[0] is None


def test_where_the_pool_would_be_one_cpu_actor_any_run_is_in_process(quiet_table):
    """Above the threshold, a run still embeds in this process where the embedded Ray would plan one CPU actor (all
    this machine's CPUs as its threads): that actor is this process's encoder; two actors, a cluster named or
    in_process_below = 0 keep the pool, and so does a pool this machine cannot hold (the pool's error tells)."""
    from cluster._inprocess import local_cpus
    from jobs._nochange import InProcess

    cpus = local_cpus()
    one = {"cluster.in_process_below": 3, "cluster.cpus_per_actor": cpus}
    words = f"an embedded Ray here would run 1 CPU actor x {cpus} torch threads on {cpus} CPUs"
    night, _ = quiet_table["night"](_changed(quiet_table["rows"], 5), **one)
    assert isinstance(night, InProcess) and (night.rows, night.one_encoder) == (None, words)  # 5 >= 3: not counted
    assert night.describe() == f"in-process: {words}, the encoder this process runs; no Ray"
    create, _ = quiet_table["night"](quiet_table["rows"], mode="overwrite", **one)
    assert isinstance(create, InProcess) and create.rows == N
    assert create.describe() == f"in-process: {N} input row(s); {words}, the encoder this process runs; no Ray"
    for keep_the_pool in (
        {**one, **TWO_ACTORS, "cluster.cpus_per_actor": 1},
        {**one, "cluster.in_process_below": 0},
        {**one, "cluster.address": "127.0.0.1:6379"},
        {"cluster.actors": 10_000},  # more than this machine has: the pool's planning says so (even for 5 rows)
    ):
        assert quiet_table["night"](_changed(quiet_table["rows"], 5), **keep_the_pool)[0] is None, keep_the_pool


@pytest.mark.slow  # ~40 s: a pool run in its own process
def test_above_the_threshold_the_night_starts_ray(base, tmp_path):
    """The control of the equality test: the same process, as many rows to embed as the threshold: Ray starts."""
    job = _night(base, tmp_path / "night", _changed(base["rows"], 3), in_process_below=3, actors=2)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        proc = _embedjob_run(job, ray_tmp)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert list((ray_tmp / "ray").glob("session_*")), "no Ray session under RAY_TMPDIR"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    record = open_table(str(tmp_path / "night" / "out" / "docs.lance")).runs()[-1]
    assert record["rows_changed"] == 3 and "CPU actor" in record["pool"]


@pytest.mark.slow  # ~40 s: two `embedjob run` processes
def test_a_small_night_that_failed_is_resumed_in_process_without_embedding_again(base, tmp_path):
    """Exactly once without Ray: a night refused after staging (too many rejects) keeps its staged parts; the next
    night, in process too, resumes that run and commits its rows without embedding them again."""
    job = _night(base, tmp_path / "night", _small_night(base["rows"]), in_process_below=100)
    job.write_text(job.read_text().replace("max_reject_fraction = 0.2", "max_reject_fraction = 0.01"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        failed = _embedjob_run(job, ray_tmp)
        assert failed.returncode != 0 and "rejected" in failed.stdout + failed.stderr
        job.write_text(job.read_text().replace("max_reject_fraction = 0.01", "max_reject_fraction = 0.2"))
        resumed = _embedjob_run(job, ray_tmp)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert list(ray_tmp.iterdir()) == [], "Ray was started"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "resuming run" in resumed.stderr
    table = open_table(str(tmp_path / "night" / "out" / "docs.lance"))
    first, last = table.runs()[-2:]
    assert (first["status"], last["status"], last["run_id"]) == ("failed", "committed", first["run_id"])
    assert (last["rows_resumed"], last["rows_embedded"], last["rows_changed"], last["rows_new"]) == (5, 5, 0, 0)
    assert "in-process" in last["pool"] and table.version == 2 and table.count_rows() == N + 1
    assert sorted(_rows(table.uri)) == sorted({i for i, _ in _small_night(base["rows"])})  # each id once
