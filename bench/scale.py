"""A scale run: >= 100,000 real passages through one whole ``embedjob run`` on this machine.

Reports wall time, rows/s and tokens/s, the driver's peak RSS and the Ray
workers' peak RSS (every ``ray::`` process, read from /proc once a second),
and the table's size on disk per granularity at float32 and float16: each
vector column is written alone as a Lance dataset in each dtype and measured
(the float16 figures are the float32 vectors cast, not a second embedding run).

The corpus is ``bench.corpora.large_corpus`` (Lee news, gensim's Wikipedia
excerpt, docstrings of installed packages); when it holds fewer distinct
passages than asked, they are repeated with distinct ids, and the output says
how many are distinct.

    python -m bench.scale [--n 100000] [--json out/bench/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench._jobs import default_model
from bench._report import Check, write_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRANS = ["l3_d64", "l6_d128", "l6_d384"]


def _corpus(n: int) -> tuple[list[str], int]:
    from bench.corpora import docstring_passages, large_corpus, lee_passages, wiki_passages

    try:
        return large_corpus(n), n
    except ValueError:
        pool = list(dict.fromkeys([*lee_passages(), *wiki_passages(), *docstring_passages()]))
        return [pool[i % len(pool)] for i in range(n)], len(pool)


class _Peaks:
    """Polls the driver's RSS and every Ray worker's (``ray::*`` processes) once a second until stopped."""

    def __init__(self, driver_pid: int, every_s: float = 1.0) -> None:
        self.driver_pid, self.every_s = driver_pid, every_s
        self.driver = 0
        self.worker = 0
        self.workers_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = list(_processes())
            children: dict[int, list[int]] = {}
            for pid, ppid, _, _ in procs:
                children.setdefault(ppid, []).append(pid)
            ours, todo = set(), [self.driver_pid]  # the driver and its descendants: its own Ray, not others'
            while todo:
                pid = todo.pop()
                if pid not in ours:
                    ours.add(pid)
                    todo.extend(children.get(pid, []))
            total = 0
            for pid, _, title, rss in procs:
                if pid == self.driver_pid:
                    self.driver = max(self.driver, rss)
                elif pid in ours and title.startswith("ray::"):
                    self.worker = max(self.worker, rss)
                    total += rss
            self.workers_total = max(self.workers_total, total)
            self._stop.wait(self.every_s)


def _processes():
    """(pid, parent pid, process title, RSS bytes) of every process, from /proc (Linux; Ray workers retitle
    themselves ``ray::...``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            rss_pages = int((entry / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        yield int(entry.name), ppid, title, rss_pages * page


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="passages (default 100,000)")
    parser.add_argument("--folder", type=Path, default=Path("out/bench/scale"), help="work folder")
    parser.add_argument("--model", default=None, help="model dir (default: all-MiniLM-L6-v2 from its wheel)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import lance
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage import open_table

    model = args.model or default_model()
    folder = args.folder.resolve()
    shutil.rmtree(folder / "out", ignore_errors=True)  # one version on disk: its size is the table's
    folder.mkdir(parents=True, exist_ok=True)
    texts, distinct = _corpus(args.n)
    corpus, job, out = folder / "corpus.parquet", folder / "job.toml", folder / "out" / "corpus.lance"
    pq.write_table(pa.table({"id": [f"p{i:07d}" for i in range(len(texts))], "text": texts}), corpus)
    job.write_text(
        f"granularities = {json.dumps(GRANS)}\n[input]\nuri = {json.dumps(str(corpus))}\n"
        f"[model]\npath = {json.dumps(model)}\n[output]\nuri = {json.dumps(str(out))}\nstore_text = false\n"
        f'mode = "overwrite"\nvector_dtype = "float32"\n'
        # the Ray pipeline at scale (its workers' memory): where the pool would be one CPU actor, embedjob run
        # would embed in its own process by default
        "[cluster]\nin_process_below = 0\n"
    )
    words = sum(len(t.split()) for t in texts) / len(texts)
    print(
        f"corpus: {len(texts):,} passages ({distinct:,} distinct"
        + (", repeated with distinct ids" if distinct < len(texts) else "")
        + f"), {words:.0f} words on average; granularities {', '.join(GRANS)}",
        flush=True,
    )

    t0 = time.perf_counter()
    with (folder / "run.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "run", str(job), "--no-progress"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
        )
        with _Peaks(proc.pid) as peaks:
            code = proc.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"embedjob run failed ({code}); see {folder / 'run.log'}")

    tbl = open_table(str(out))
    run = tbl.runs()[-1]
    ids = tbl.to_arrow(["id"])["id"]
    distinct_ids = len(set(ids.to_pylist()))
    sizes: dict[str, dict[str, int]] = {}
    scratch = folder / "sizes"
    for g in GRANS:
        col = tbl.to_arrow([f"vec_{g}"])[f"vec_{g}"].combine_chunks()
        sizes[g] = {}
        for dtype in ("float32", "float16"):
            target = scratch / f"{g}_{dtype}.lance"
            values = col.values.cast(getattr(pa, dtype)())
            arr = pa.FixedSizeListArray.from_arrays(values, col.type.list_size)
            lance.write_dataset(pa.table({g: arr}), target, mode="overwrite")
            sizes[g][dtype] = _du(target)
    table_bytes = _du(out)

    rows_s = run["rows_embedded"] / wall
    print(
        f"wall {wall:,.1f} s (pipeline {run['seconds_pipeline']:,.1f} s); {run['rows_embedded']:,} rows, "
        f"{rows_s:,.1f} rows/s end to end, {run['rows_embedded'] / run['seconds_pipeline']:,.1f} rows/s in the "
        f"pipeline, {run['tokens'] / run['seconds_pipeline']:,.0f} tokens/s; pool {run['pool']}"
    )
    print(
        f"peak RSS: driver {peaks.driver / 2**20:,.0f} MiB; largest Ray worker {peaks.worker / 2**20:,.0f} MiB; "
        f"the run's Ray workers together {peaks.workers_total / 2**20:,.0f} MiB (RSS summed: shared pages count "
        f"once per process)"
    )
    print(f"table on disk: {table_bytes / 2**20:,.1f} MiB (float32, {len(GRANS)} vector columns, ids, hashes)")
    for g, s in sizes.items():
        print(
            f"  {g}: float32 {s['float32'] / 2**20:,.1f} MiB, float16 {s['float16'] / 2**20:,.1f} MiB "
            f"({s['float16'] / s['float32']:.3f}x)"
        )
    checks = [
        Check(
            "ids in the table, each once",
            f"{distinct_ids:,} of {len(texts):,}",
            "all",
            distinct_ids == len(texts),
        ),
        Check("rows/s end to end (context)", rows_s, "context", None),
        Check("driver peak RSS MiB (context)", peaks.driver / 2**20, "context", None),
        Check("largest Ray worker peak RSS MiB (context)", peaks.worker / 2**20, "context", None),
    ]
    for g, s in sizes.items():
        ratio = s["float16"] / s["float32"]
        checks.append(Check(f"{g} on disk, float16 / float32", ratio, "<= 0.55", ratio <= 0.55))
    write_report(
        args.json,
        "scale",
        checks,
        passages=len(texts),
        distinct_passages=distinct,
        words_mean=words,
        wall_s=wall,
        pipeline_s=run["seconds_pipeline"],
        rows=run["rows_embedded"],
        tokens=run["tokens"],
        pool=run["pool"],
        driver_peak_bytes=peaks.driver,
        worker_peak_bytes=peaks.worker,
        workers_total_peak_bytes=peaks.workers_total,
        table_bytes=table_bytes,
        column_bytes=sizes,
    )
    return 0 if all(c.holds is not False for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
