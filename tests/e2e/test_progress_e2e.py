"""Live progress and quiet logs: progress lines without a terminal (a run, a backfill), the run's counters as
Ray metrics, and a normal `embedjob run` that prints none of Ray's or Lance's own noise. Real Ray, tiny BERT."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.corpora import passages
from cluster import METRIC_ROWS_EMBEDDED, METRIC_ROWS_REJECTED, METRIC_TOKENS, TIMING_LOGGER
from jobs import backfill_job, run_job

from ..jobfiles import write_job

ROWS = 400
_DONE = re.compile(r": ([\d,]+) of ([\d,]+) rows done")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.timings: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if hasattr(record, "phase"):
            self.timings.append((record.phase, record.seconds))

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def _job(path: Path, corpus: Path, model: Path, out: Path, granularities: list[str]) -> Path:
    return write_job(
        path,
        granularities=granularities,
        input={"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
        model={"path": str(model)},
        output={"uri": str(out), "max_reject_fraction": 0.1},
        # several blocks, and a part (a fragment, for the backfill) per 100 rows: counts that move
        cluster={"rows_per_block": 20, "rows_per_part": 100},
    )


@pytest.fixture(scope="module")
def progressed(ray_local, _tiny_models, tmp_path_factory):
    """One run (400 rows, one of them blank) and one backfill of its table, each logging a progress line every
    0.05 s: their summaries and lines."""
    root = tmp_path_factory.mktemp("progress")
    model = root / "tiny-bert"
    shutil.copytree(_tiny_models["bert"], model)
    texts = passages(ROWS, words=40)
    texts[7] = "   "
    corpus = root / "docs.parquet"
    pq.write_table(pa.table({"doc_id": [f"d{i:04d}" for i in range(ROWS)], "body": texts}), corpus)
    out = root / "out" / "docs.lance"
    job = _job(root / "job.toml", corpus, model, out, ["l2_d32"])
    grown = _job(root / "grown.toml", corpus, model, out, ["l2_d32", "l4_d64"])
    lines = _Lines()
    progress_logger = logging.getLogger("embedjob.progress")
    saved = progress_logger.level
    progress_logger.addHandler(lines)
    progress_logger.setLevel(logging.INFO)
    timings = _Lines()
    timing_logger = logging.getLogger(TIMING_LOGGER)
    saved_timing = timing_logger.level
    timing_logger.addHandler(timings)
    timing_logger.setLevel(logging.DEBUG)
    timings.setLevel(logging.DEBUG)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EMBEDJOB_PROGRESS_EVERY_S", "0.05")
            run = run_job(job, progress=False)
            run_lines = lines.take()
            run_timings = list(timings.timings)  # the run's alone (the backfill logs its own after)
            backfill = backfill_job(grown, ["l4_d64"], progress=False)
            backfill_lines = lines.take()
    finally:
        progress_logger.removeHandler(lines)
        progress_logger.setLevel(saved)
        timing_logger.removeHandler(timings)
        timing_logger.setLevel(saved_timing)
    return SimpleNamespace(
        run=run, run_lines=run_lines, run_timings=run_timings, backfill=backfill, backfill_lines=backfill_lines
    )


def _done(lines: list[str], prefix: str, total: int) -> list[int]:
    """The rows done in each line of ``prefix``'s run (every line names the same ``total``)."""
    ours = [line for line in lines if line.startswith(prefix)]
    found = [_DONE.search(line) for line in ours]
    assert {m.group(2) for m in found if m} == {f"{total:,}"}, ours
    return [int(m.group(1).replace(",", "")) for m in found if m]


def test_a_run_without_a_terminal_logs_growing_progress_lines_ending_at_its_summary(progressed):
    run, lines = progressed.run, progressed.run_lines
    done = _done(lines, f"run {run.run_id}: ", ROWS)
    assert len(done) >= 3 and done == sorted(done) and done[-1] == ROWS, lines
    assert any(0 < n < ROWS for n in done), lines  # seen on the way, not only at the end
    stages = [line.split(": ")[1] for line in lines]
    assert {"encoding", "finished"} <= set(stages) and stages[-1] == "finished", stages
    last = lines[-1]
    assert f"embedded {run.rows_embedded:,}, rejected {run.rows_rejected:,})" in last, last
    assert f", {run.tokens:,} tokens, " in last and run.rows_rejected == 1 and run.rows_embedded == ROWS - 1


def test_a_run_logs_where_its_time_went_phase_by_phase(progressed):
    """The run's timing log (DEBUG, ``embedjob.timing``): each phase the driver times, and what the encoder actors
    noted (their start, model load and busy time), within the pipeline's own time."""
    got = dict(progressed.run_timings)
    assert len(got) == len(progressed.run_timings), progressed.run_timings  # each phase once
    driver = ["job checks", "lock", "no-change check", "staging", "pool and plan", "pipeline (Ray Data execution)"]
    driver += ["commit", "after the commit (gate, records, indexes, tags)"]
    actors = ["actor start (worker process, imports)", "actor model load (per actor)", "first actor ready"]
    actors += ["actor busy (encode, per actor)"]
    assert set(driver + actors) <= set(got), got
    assert "Ray start" not in got  # the test session's Ray was up already: the run started none
    assert all(sec >= 0 for sec in got.values()), got
    pipeline = got["pipeline (Ray Data execution)"]
    assert 0 < got["actor model load (per actor)"] <= got["first actor ready"] <= pipeline, got
    assert 0 < got["actor busy (encode, per actor)"] <= pipeline, got
    assert pipeline <= progressed.run.seconds_pipeline <= progressed.run.seconds, got


def test_a_backfill_without_a_terminal_logs_growing_progress_lines_ending_at_its_summary(progressed):
    backfill, lines = progressed.backfill, progressed.backfill_lines
    table_rows = ROWS - 1  # the blank row was rejected by the run
    done = _done(lines, f"run {backfill.run_id}: ", table_rows)
    assert len(done) >= 3 and done == sorted(done) and done[-1] == backfill.rows_embedded == table_rows, lines
    assert any(0 < n < table_rows for n in done), lines  # a fragment at a time
    last = lines[-1]
    assert last.startswith(f"run {backfill.run_id}: finished: {table_rows} of {table_rows} rows done, "), last
    assert re.search(r", [\d,]+ tokens, ", last), last


def _metrics() -> dict[tuple[str, frozenset], float]:
    """Every embedjob sample of every live node's Prometheus endpoint: (name, labels) -> value."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, frozenset], float] = {}
    for node in ray.nodes():
        if not node.get("Alive") or not node.get("MetricsExportPort"):
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("ray_embedjob_") and s.name.endswith("_total"):
                    key = (s.name, frozenset(s.labels.items()))
                    samples[key] = samples.get(key, 0.0) + s.value
    return samples


def _by(samples, metric: str, run_id: str, tag: str) -> dict[str, float]:
    """``metric``'s values for ``run_id``, by the tag ``tag``."""
    out: dict[str, float] = {}
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if name == f"ray_{metric}_total" and labels.get("run_id") == run_id:
            out[labels[tag]] = out.get(labels[tag], 0.0) + value
    return out


def test_the_runs_counters_are_ray_metrics_by_run_node_and_reason(progressed):
    run, backfill = progressed.run, progressed.backfill
    expected = {
        (METRIC_ROWS_EMBEDDED, run.run_id, "node"): {n: float(v) for n, v in run.rows_per_node.items()},
        (METRIC_TOKENS, run.run_id, "node"): {next(iter(run.rows_per_node)): float(run.tokens)},
        (METRIC_ROWS_REJECTED, run.run_id, "reason"): {r: float(n) for r, n in run.reject_reasons.items()},
        (METRIC_ROWS_EMBEDDED, backfill.run_id, "node"): {n: float(v) for n, v in backfill.rows_per_node.items()},
    }
    assert run.reject_reasons == {"whitespace-only text": 1} and len(run.rows_per_node) == 1
    deadline = time.monotonic() + 40  # Ray exports a worker's metrics every few seconds
    while True:
        samples = _metrics()
        seen = {key: _by(samples, *key) for key in expected}
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == expected


def test_a_normal_run_prints_progress_and_its_summary_and_none_of_rays_or_lances_noise(
    ray_local, tmp_path, tiny_bert_dir
):
    """`embedjob run` as a user runs it (its own process, the Ray cluster joined by address): no E-level line
    of Ray's C++ core, no Ray INFO line, no fork-safety or Lance warning, no Ray Data progress notice."""
    corpus = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(60)], "text": passages(60, words=30)}), corpus)
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l2_d32"],
        input={"uri": str(corpus)},
        model={"path": str(tiny_bert_dir)},
        output={"uri": str(tmp_path / "out.lance")},
    )
    env = {**os.environ, "EMBEDJOB_PROGRESS_EVERY_S": "2", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("EMBEDJOB_VERBOSE", None)
    address = ray_local.get_runtime_context().gcs_address
    out = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", str(job), "--address", address],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    err = out.stderr
    assert re.search(r"embedjob\.progress: run \S+: finished: 60 of 60 rows done", err), err
    assert "committed" in out.stdout
    noise = [
        line
        for line in err.splitlines()
        if re.search(r"\] \w+\.cc:\d+:|\bINFO\b|fork|[Ll]ance\b.*(WARN|warn)|WARN lance|Progress bars", line)
    ]
    assert noise == [], err
