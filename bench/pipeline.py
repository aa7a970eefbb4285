"""`embedjob run` end to end vs ElasticEncoder.encode in one process, on the same real texts.

* throughput: the whole job (checks, actor start and model load, read, encode,
  write, the Lance commit; Ray start excluded) against in-process ``encode``
  of the same passages at the same granularities. Target >= 0.85x. Also the
  steady-state (marginal) figure: the job on N and on 2N passages, rate =
  extra tokens / extra seconds, which takes the fixed start-up cost out.
* driver memory: peak RSS of the driver process for the corpus at 1x and 10x
  (the 10x corpus repeats the real passages with distinct ids), at a cheap
  granularity so it runs in minutes. Target: flat (10x/1x close to 1).

Each pipeline run is a child process that starts its own embedded Ray first,
so driver figures are the driver's alone.

    python -m bench.pipeline [--n 3000] [--memory-n 2000] [--no-marginal]
    python -m bench.pipeline --repeat 8 --no-marginal --memory-n 0   # a 24,000-passage job
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._jobs import default_model
from bench._report import Check, write_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRANS = ["l3_d64", "l3_d128", "l6_d128", "l6_d384"]


def _write_corpus(path: Path, passages: list[str], repeat: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, texts = [], []
    for r in range(repeat):
        ids.extend(f"r{r}-p{i:06d}" for i in range(len(passages)))
        texts.extend(passages)
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=2048)


def _write_job(folder: Path, corpus: Path, model: str, grans: list[str]) -> Path:
    job = folder / f"{corpus.stem}.toml"
    job.write_text(
        f"granularities = {json.dumps(grans)}\n[input]\nuri = {json.dumps(str(corpus))}\n"
        f"[model]\npath = {json.dumps(model)}\n"
        f'[output]\nuri = {json.dumps(str(folder / (corpus.stem + ".lance")))}\nmode = "overwrite"\n'
        f"store_text = false\n"
    )
    return job


def child(job: str) -> int:
    """Run one job in this process after starting Ray; print figures as JSON."""
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    from jobs import run_job

    t0 = time.perf_counter()
    summary = run_job(job, progress=False)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": summary.rows_embedded,
                "tokens": summary.tokens,
                "driver_peak_mb": peak_mb,
                "pool": summary.pool,
            }
        )
    )
    ray.shutdown()
    return 0


def _run_child(job: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--child", str(job)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"pipeline child failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="passages for the throughput comparison")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="the job's corpus is the n passages repeated this often with distinct ids (in-process rate: on n)",
    )
    parser.add_argument("--no-marginal", dest="marginal", action="store_false", help="skip the 2N run")
    parser.add_argument("--memory-n", type=int, default=2000, help="passages at 1x for the memory check (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    from rich.console import Console
    from rich.table import Table

    from bench.corpora import passages
    from embedder import ElasticEncoder

    console = Console(width=150)
    model = default_model()
    texts = passages(args.n)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.parquet"
        _write_corpus(corpus, texts, args.repeat)
        job = _write_job(folder, corpus, model, GRANS)

        console.print(
            f"[bold]bench/pipeline[/bold]: {len(texts)} real passages, all-MiniLM-L6-v2 at {', '.join(GRANS)}"
        )
        enc = ElasticEncoder.from_pretrained(model, GRANS)
        enc.encode(texts[:64])

        def in_process() -> tuple[float, int]:
            t0 = time.perf_counter()
            res = enc.encode_with_stats(texts)
            return time.perf_counter() - t0, res.stats.real_tokens

        # in-process runs bracket the pipeline runs, so a slow spell on this shared machine shows up
        before, tokens = in_process()
        console.print(f"  in-process encode: {before:.1f} s, {tokens / before:,.0f} tokens/s")
        pipe = _run_child(job)
        console.print(
            f"  embedjob run:      {pipe['seconds']:.1f} s, {pipe['tokens'] / pipe['seconds']:,.0f} tokens/s "
            f"({pipe['pool']})"
        )
        pipe2 = None
        if args.marginal:
            double = folder / "corpus2x.parquet"
            _write_corpus(double, passages(2 * args.n), 1) if args.repeat == 1 else _write_corpus(
                double, texts, 2 * args.repeat
            )
            pipe2 = _run_child(_write_job(folder, double, model, GRANS))
            console.print(f"  embedjob run 2x:   {pipe2['seconds']:.1f} s, {pipe2['tokens']:,} tokens")
        after, _ = in_process()
        console.print(f"  in-process again:  {after:.1f} s, {tokens / after:,.0f} tokens/s")
        inproc_rate = tokens / ((before + after) / 2)
        ratio = (pipe["tokens"] / pipe["seconds"]) / inproc_rate
        size = f"{len(texts) * args.repeat:,} passages" + (
            f" ({len(texts):,} x {args.repeat})" if args.repeat > 1 else ""
        )
        results.append((f"pipeline / in-process throughput, {size}", ratio, ">= 0.85", ratio >= 0.85))
        if pipe2 is not None:
            marginal = (pipe2["tokens"] - pipe["tokens"]) / (pipe2["seconds"] - pipe["seconds"])
            fixed = pipe["seconds"] - pipe["tokens"] / marginal
            console.print(f"  steady state: {marginal:,.0f} tokens/s; fixed start-up cost ~{fixed:.0f} s")
            results.append(
                (
                    "pipeline steady state / in-process",
                    marginal / inproc_rate,
                    ">= 0.85",
                    marginal / inproc_rate >= 0.85,
                )
            )

        if args.memory_n:
            small = passages(args.memory_n)
            peaks = {}
            for repeat in (1, 10):
                path = folder / f"mem{repeat}x.parquet"
                _write_corpus(path, small, repeat)
                figures = _run_child(_write_job(folder, path, model, ["l1_d32"]))
                peaks[repeat] = figures
                console.print(
                    f"  memory {repeat:>2}x ({figures['rows']:,} rows, l1_d32): "
                    f"driver peak {figures['driver_peak_mb']:,.0f} MiB, {figures['seconds']:.1f} s"
                )
            growth = peaks[10]["driver_peak_mb"] / peaks[1]["driver_peak_mb"]
            results.append(("driver peak memory 10x / 1x corpus", growth, "<= 1.15", growth <= 1.15))

    table = Table(title="bench/pipeline")
    for col in ("figure", "value", "target", "holds"):
        table.add_column(col)
    for name, value, target, ok in results:
        table.add_row(name, f"{value:.3f}", target, "yes" if ok else "[red]NO[/red]")
    console.print(table)
    write_report(args.json, "pipeline", [Check(name, value, target, ok) for name, value, target, ok in results])
    return 0 if all(ok for *_, ok in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
