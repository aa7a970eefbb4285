"""`embedjob run` end to end vs ElasticEncoder.encode in one process, on the same real texts.

* throughput: the whole job as ``embedjob run`` costs its caller, from the
  launch of its process to its exit (the CLI's imports, checks, the embedded
  Ray's start, actor start and model load, read, encode, write, the Lance
  commit, Ray's stop) against in-process ``encode`` of the same passages at
  the same granularities (a loaded, warmed-up encoder). Twice: as ``embedjob
  run`` decides by default (in this process, without Ray, where the embedded
  pool would be one CPU actor: ``cluster.one_encoder_here``; target >= 0.85x),
  and on the Ray actor pool (``in_process_below = 0``; the target when the
  default runs on the pool too, and with ``--no-default``). Beside it, without the imports and
  Ray's start and stop (the figure this bench gave before 2026-12-06), and the
  breakdown of the first job's wall time, phase by phase, from the run's
  timing log (``cluster._timing``, logger ``embedjob.timing``). Also the
  steady-state (marginal) figure: the job on N and on 2N passages, rate =
  extra tokens / extra seconds, which takes the fixed start-up cost out.
  ``--baseline DIR`` (a ``git archive`` of an earlier commit) runs that tree's
  job right before this one's, for a before/after on the same machine.
* driver memory: peak RSS of the driver process for the corpus at 1x and 10x
  (the 10x corpus repeats the real passages with distinct ids), at a cheap
  granularity so it runs in minutes. Target: flat (10x/1x close to 1).

* where to tokenize (``--tokenize actor,tasks``): the job once per choice, side
  by side; the figure is the rate of ``auto``'s choice for this machine over the
  other's (``[cluster] tokenize``: tasks on GPU actors, actor on CPU-only pools).
  Target >= 0.97 (auto is not the slower choice, within noise).
* on a GPU: each job's tokens/s, MFU (useful forward FLOPs over the device's
  dense bf16 peak) and GPU busy (NVML), over the whole job and over its encode
  span (first to last busy sample: Ray start and model load excluded).

Each pipeline run is a child process that imports what the CLI imports and
runs the job, which starts and stops its own embedded Ray (or runs in that
process), so driver figures are the driver's alone.

    python -m bench.pipeline [--n 3000] [--memory-n 2000] [--no-marginal]
    git archive OLD | tar -x -C /tmp/old && python -m bench.pipeline --no-marginal --memory-n 0 --baseline /tmp/old
    python -m bench.pipeline --repeat 8 --no-marginal --memory-n 0   # a 24,000-passage job
    python -m bench.pipeline --tokenize actor,tasks,tasks,actor --no-marginal --memory-n 0
    python -m bench.pipeline --model bert-base --n 30000 --repeat 10 --tokenize actor,tasks --no-marginal --memory-n 0
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

from bench._gpu import GpuBusy, bert_base_like, forward_flops, peak_tflops
from bench._jobs import default_model
from bench._report import Check, write_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _grans(model: str) -> list[str]:
    """Two at the middle layer, two at full depth (l3_d64, l3_d128, l6_d128, l6_d384 for MiniLM)."""
    from embedder import read_model_dir

    mdir = read_model_dir(model)
    half, depth = mdir.num_layers // 2, mdir.num_layers
    return [f"l{half}_d64", f"l{half}_d128", f"l{depth}_d128", f"l{depth}_d{mdir.hidden_size}"]


def _write_corpus(path: Path, passages: list[str], repeat: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, texts = [], []
    for r in range(repeat):
        ids.extend(f"r{r}-p{i:06d}" for i in range(len(passages)))
        texts.extend(passages)
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=2048)


def _write_job(
    folder: Path, corpus: Path, model: str, grans: list[str], tokenize: str = "auto", *, pool: bool = True
) -> Path:
    """The bench's job on ``corpus``; ``pool``: always on the Ray actor pool (``in_process_below = 0``), else as
    ``embedjob run`` decides by default (in this process where the embedded pool would be one CPU actor)."""
    job = folder / f"{corpus.stem}-{tokenize}{'' if pool else '-default'}.toml"
    job.write_text(
        f"granularities = {json.dumps(grans)}\n[input]\nuri = {json.dumps(str(corpus))}\n"
        f"[model]\npath = {json.dumps(model)}\n"
        f'[output]\nuri = {json.dumps(str(folder / (corpus.stem + ".lance")))}\nmode = "overwrite"\n'
        f'store_text = false\n[cluster]\ntokenize = "{tokenize}"\n' + ("in_process_below = 0\n" if pool else "")
    )
    return job


#: the phases of a run, in order, as the run's timing log names them (``cluster._timing``); nested ones indented
_PHASES = (
    ("job checks", 0),
    ("lock", 0),
    ("no-change check", 0),
    ("staging", 0),
    ("in this process (read, prepare, encode, stage)", 0),
    ("model load (in this process)", 1),
    ("encode (in this process)", 1),
    ("Ray start", 0),
    ("pool and plan", 0),
    ("pipeline (Ray Data execution)", 0),
    ("actor start (worker process, imports)", 1),
    ("actor model load (per actor)", 1),
    ("first actor ready", 1),
    ("actor busy (encode, per actor)", 1),
    ("Ray stop", 0),
    ("commit", 0),
    ("after the commit (gate, records, indexes, tags)", 0),
)
_RAY = ("Ray start", "Ray stop")


def child(job: str) -> int:
    """Run one job as ``embedjob run`` does (the CLI's imports, its logging, the embedded Ray the job starts and
    stops itself); print figures as JSON: the job's seconds with and without Ray's start and stop, the seconds
    from the process's launch (``BENCH_T0``, wall clock) to the end of the imports, and the run's timing log."""
    t0 = float(os.environ.get("BENCH_T0") or time.time())
    import jobs.cli  # what `embedjob` imports before it runs a command
    from jobs.cli._app import setup_logging

    setup_logging()
    imported = time.time()
    import logging

    timings: list[tuple[str, float]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if hasattr(record, "phase"):
                timings.append((record.phase, record.seconds))

    timing = logging.getLogger("embedjob.timing")  # cluster.TIMING_LOGGER (named here: a baseline may lack it)
    timing.setLevel(logging.DEBUG)
    timing.addHandler(Collect())
    timing.propagate = False
    if os.environ.get("BENCH_RAY_STATS"):  # per-operator times of each run, appended to this file
        handler = logging.FileHandler(os.environ["BENCH_RAY_STATS"])
        logging.getLogger("cluster").addHandler(handler)
        logging.getLogger("cluster").setLevel(logging.DEBUG)
    from jobs import run_job

    gpu = GpuBusy() if _has_cuda() else None
    if gpu is not None:
        gpu.__enter__()
    t_run = time.perf_counter()
    summary = run_job(job, progress=False)
    job_seconds = time.perf_counter() - t_run
    if gpu is not None:
        gpu.__exit__(None, None, None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray_seconds = sum(sec for phase, sec in timings if phase in _RAY)
    figures = {
        "seconds": job_seconds - ray_seconds,  # the job with Ray's start and stop taken out
        "job_seconds": job_seconds,
        "imports_seconds": imported - t0,
        "done_at": time.time() - t0,
        "timings": timings,
        "rows": summary.rows_embedded,
        "tokens": summary.tokens,
        "driver_peak_mb": peak_mb,
        "pool": summary.pool,
    }
    if gpu is not None:
        figures.update(gpu.span())
    print(json.dumps(figures))
    exit_now = getattr(jobs.cli, "_exit_now", None)  # how `embedjob` ends (a baseline tree may not have it)
    if exit_now is not None:
        exit_now(0)
    return 0


def _has_cuda() -> bool:
    """An NVIDIA GPU for ``GpuBusy`` to sample, asked of NVML, not torch: ``embedjob run``'s driver imports no
    torch, and importing it here (~1.4 s) would be counted in the job's wall time."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library or no driver: no GPU to sample
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


def _run_child(job: Path, tree: Path | None = None) -> dict:
    """One job in a child process; ``tree``: with the packages of that checkout (this bench's child code)."""
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    root = tree or Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    t0 = time.time()
    env["BENCH_T0"] = repr(t0)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(job)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=root,
    )
    wall = time.time() - t0
    if out.returncode != 0:
        raise SystemExit(f"pipeline child failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["wall_seconds"] = wall  # the process, launch to exit: what `embedjob run` costs its caller
    return figures


def breakdown(pipe: dict) -> list[tuple[str, float, int]]:
    """Where one job's wall time went: (phase, seconds, depth), from the launch of its process to its exit."""
    wall = pipe["wall_seconds"]
    seen = dict.fromkeys((name for name, _ in _PHASES), 0.0)
    for phase, sec in pipe["timings"]:
        if phase in seen:
            seen[phase] += sec
    rows = [("Python start and imports (the CLI's)", pipe["imports_seconds"], 0)]
    if pipe["timings"]:  # (a baseline without the timing log: imports, exit and the rest)
        rows += [(name, seen[name], depth) for name, depth in _PHASES if seen[name] or depth == 0]
    counted = pipe["imports_seconds"] + sum(sec for (name, depth) in _PHASES if depth == 0 for sec in [seen[name]])
    rows.append(("process exit", max(0.0, wall - pipe["done_at"]), 0))
    rows.append(("other (not timed)", max(0.0, pipe["done_at"] - counted), 0))
    return rows


def _print_run(console: object, label: str, run: dict) -> None:
    """One job's wall time, rate and pool, and where its time went."""
    console.print(
        f"  {label}: {run['wall_seconds']:.1f} s end to end, {run['tokens'] / run['wall_seconds']:,.0f} tokens/s "
        f"({run['pool']})",
        highlight=False,
    )
    _print_breakdown(console, run)


def _print_breakdown(console: object, pipe: dict) -> None:
    wall = pipe["wall_seconds"]
    console.print(f"  where the {wall:.1f} s of the first job went:", highlight=False)
    for name, sec, depth in breakdown(pipe):
        pad = "      " if depth else "    "
        console.print(f"{pad}{name:<52} {sec:6.2f} s  {sec / wall:6.1%}", highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="passages for the throughput comparison")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="the job's corpus is the n passages repeated this often with distinct ids (in-process rate: on n)",
    )
    parser.add_argument("--model", default=None, help="model dir, or 'bert-base' (random weights); default MiniLM")
    parser.add_argument(
        "--tokenize",
        default="auto",
        help="[cluster] tokenize choices, one job each: auto,actor,tasks",
    )
    parser.add_argument("--no-marginal", dest="marginal", action="store_false", help="skip the 2N run")
    parser.add_argument(
        "--no-default",
        dest="default",
        action="store_false",
        help="skip the job as embedjob run decides by default (the rest always runs on the Ray pool)",
    )
    parser.add_argument("--memory-n", type=int, default=2000, help="passages at 1x for the memory check (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of an earlier commit (git archive): its job runs right before this one's, for a before/after",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    from rich.console import Console
    from rich.table import Table

    from bench.corpora import passages
    from embedder import ElasticEncoder

    console = Console(width=150)
    modes = [m.strip() for m in args.tokenize.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("auto", "actor", "tasks")]
    if bad or not modes:
        parser.error(f"--tokenize {args.tokenize!r}: each choice must be auto, actor or tasks")
    texts = passages(args.n)
    results = []
    extra: dict = {"runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = Path(tmp)
        model = args.model or default_model()
        if model == "bert-base":
            model = str(bert_base_like(folder, default_model()))
        grans = _grans(model)
        corpus = folder / "corpus.parquet"
        _write_corpus(corpus, texts, args.repeat)

        enc = ElasticEncoder.from_pretrained(model, grans)
        cuda = enc.device.type == "cuda"
        enc.encode(texts[:64])
        console.print(
            f"[bold]bench/pipeline[/bold]: {len(texts)} real passages x {args.repeat}, {enc.model_dir.name} at "
            f"{', '.join(grans)} on {enc.device} ({str(enc.dtype).removeprefix('torch.')})"
        )
        flops = forward_flops(enc, enc.tokenize(texts).lengths.tolist()) * args.repeat
        peak = None
        if cuda:
            import torch

            peak = peak_tflops(torch.cuda.get_device_name(enc.device))

        def in_process() -> tuple[float, int]:
            t0 = time.perf_counter()
            res = enc.encode_with_stats(texts)
            return time.perf_counter() - t0, res.stats.real_tokens

        # in-process runs bracket the pipeline runs, so a slow spell on this shared machine shows up
        before, tokens = in_process()
        console.print(f"  in-process encode: {before:.1f} s, {tokens / before:,.0f} tokens/s")
        if args.baseline is not None:
            # as that tree's `embedjob run` does by default (a tree older than in_process_below would refuse it)
            base = _run_child(_write_job(folder, corpus, model, grans, modes[0], pool=False), args.baseline)
            _print_run(console, f"baseline ({args.baseline})", base)
            extra["baseline"] = base
        default = None
        if args.default:
            default = _run_child(_write_job(folder, corpus, model, grans, pool=False))
            _print_run(console, "embedjob run (default)", default)
            extra["default"] = default
        pipes: dict[str, dict] = {}
        for mode in modes:
            pipe = _run_child(_write_job(folder, corpus, model, grans, mode))
            line = (
                f"  embedjob run on the pool ({mode}): {pipe['wall_seconds']:.1f} s end to end, "
                f"{pipe['tokens'] / pipe['wall_seconds']:,.0f} tokens/s; {pipe['seconds']:.1f} s and "
                f"{pipe['tokens'] / pipe['seconds']:,.0f} tokens/s without the imports and Ray's start and stop "
                f"({pipe['pool']})"
            )
            if "busy_run" in pipe:
                span = pipe["span_seconds"] or float("nan")
                pipe["mfu_run"] = flops / pipe["seconds"] / 1e12 / peak if peak else None
                pipe["mfu_span"] = flops / span / 1e12 / peak if peak else None
                line += (
                    f"\n    GPU busy {pipe['busy_run']:.1%} of the job, {pipe['busy_span']:.1%} of its {span:.1f} s "
                    f"encode span; {pipe['tokens'] / span:,.0f} tokens/s over the span"
                )
                if peak:
                    line += f"; MFU {pipe['mfu_run']:.1%} of the job, {pipe['mfu_span']:.1%} of the span"
            console.print(line, highlight=False)
            if mode not in extra["runs"]:
                _print_breakdown(console, pipe)
            extra["runs"].setdefault(mode, []).append(pipe)
            if mode in pipes:  # a choice given twice (e.g. actor,tasks,tasks,actor): its runs add up
                pipes[mode] = {
                    **pipe,
                    "tokens": pipes[mode]["tokens"] + pipe["tokens"],
                    "seconds": pipes[mode]["seconds"] + pipe["seconds"],
                    "wall_seconds": pipes[mode]["wall_seconds"] + pipe["wall_seconds"],
                }
            else:
                pipes[mode] = pipe
        first = extra["runs"][modes[0]][0]
        pipe2 = None
        if args.marginal:
            double = folder / "corpus2x.parquet"
            _write_corpus(double, passages(2 * args.n), 1) if args.repeat == 1 else _write_corpus(
                double, texts, 2 * args.repeat
            )
            pipe2 = _run_child(_write_job(folder, double, model, grans, modes[0]))
            console.print(
                f"  embedjob run 2x:   {pipe2['wall_seconds']:.1f} s end to end ({pipe2['seconds']:.1f} s without the "
                f"imports and Ray's start and stop), {pipe2['tokens']:,} tokens"
            )
        after, _ = in_process()
        console.print(f"  in-process again:  {after:.1f} s, {tokens / after:,.0f} tokens/s")
        inproc_rate = tokens / ((before + after) / 2)
        ratio = (first["tokens"] / first["wall_seconds"]) / inproc_rate
        no_ray = (first["tokens"] / first["seconds"]) / inproc_rate
        size = f"{len(texts) * args.repeat:,} passages" + (
            f" ({len(texts):,} x {args.repeat})" if args.repeat > 1 else ""
        )
        if default is not None:
            where = "in this process" if default["pool"].startswith("in-process") else "on the pool"
            value = (default["tokens"] / default["wall_seconds"]) / inproc_rate
            results.append(
                (f"embedjob run / in-process, {size}, end to end (default: {where})", value, ">= 0.85", value >= 0.85)
            )
        target = ("", None) if default is not None else (">= 0.85", ratio >= 0.85)
        results.append((f"pool / in-process, {size}, end to end", ratio, *target))
        results.append((f"pool / in-process, {size}, without imports, Ray start and stop", no_ray, "", None))
        if "baseline" in extra:
            base = (extra["baseline"]["tokens"] / extra["baseline"]["wall_seconds"]) / inproc_rate
            results.append((f"baseline {args.baseline.name} / in-process, end to end", base, "", None))
        if pipe2 is not None:
            marginal = (pipe2["tokens"] - first["tokens"]) / (pipe2["seconds"] - first["seconds"])
            fixed = first["wall_seconds"] - first["tokens"] / marginal
            console.print(f"  steady state: {marginal:,.0f} tokens/s; fixed start-up cost ~{fixed:.0f} s")
            results.append(
                (
                    "pipeline steady state / in-process",
                    marginal / inproc_rate,
                    ">= 0.85",
                    marginal / inproc_rate >= 0.85,
                )
            )
        if "actor" in pipes and "tasks" in pipes:
            chosen = "tasks" if "GPU actor" in first["pool"] else "actor"
            other = "actor" if chosen == "tasks" else "tasks"
            rate = {m: pipes[m]["tokens"] / pipes[m]["seconds"] for m in ("actor", "tasks")}
            value = rate[chosen] / rate[other]
            results.append((f"tokenize: auto's choice ({chosen}) / {other}", value, ">= 0.97", value >= 0.97))
        if cuda and peak:
            where = "tasks" if "tasks" in pipes else modes[0]
            run = pipes[where]
            label = f"{enc.model_dir.name} {str(enc.dtype).removeprefix('torch.')}, tokenize {where}"
            results.append((f"{label}: MFU over the encode span", run["mfu_span"], ">= 0.40", run["mfu_span"] >= 0.40))
            results.append(
                (f"{label}: GPU busy over the encode span", run["busy_span"], ">= 0.90", run["busy_span"] >= 0.90)
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
        table.add_row(name, f"{value:.3f}", target, "-" if ok is None else "yes" if ok else "[red]NO[/red]")
    console.print(table)
    write_report(
        args.json, "pipeline", [Check(name, value, target, ok) for name, value, target, ok in results], **extra
    )
    return 0 if all(ok is not False for *_, ok in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
