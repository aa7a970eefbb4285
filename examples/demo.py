"""`make demo`: a real embedding job, end to end, on an embedded local Ray.

1. writes the 300 Lee news articles shipped by gensim to ``out/demo/lee.parquet``
   (plus a few bad rows: a null text, an empty one, a duplicate id),
2. writes ``out/demo/job.toml`` for all-MiniLM-L6-v2 at l3_d64, l3_d128, l6_d64, l6_d128, l6_d384,
   with ``calibration = "auto"`` (a rotation and a layer-3 map fitted on the corpus first),
3. runs ``embedjob run`` (Ray actors -> one Lance commit),
4. changes the corpus as a night would (3 articles edited, 1 added, 1 removed) and runs
   ``nightly.toml`` (the same job without ``mode``: incremental once the table exists), which
   embeds only those rows,
5. builds a vector index on l6_d128 (``embedjob index``),
6. runs ``embedjob inspect``, ``embedjob query`` (plain and as a funnel: shortlist on l6_d128,
   re-score on l6_d384) and ``embedjob evaluate`` (the quality map of every (layer, dim) on the
   table's own text, with the cheapest granularity within 95% of the full vector), exactly as
   a user would type them.

    python -m examples.demo [--out out/demo] [--no-progress]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

JOB = """\
name = "lee-demo"
granularities = ["l3_d64", "l3_d128", "l6_d64", "l6_d128", "l6_d384"]
calibration = "auto"   # fitted on the corpus on the first run (training-free), reused after

[input]
uri = "lee.parquet"
id_column = "id"
text_column = "text"
columns = ["source"]

[model]
path = "all-MiniLM-L6-v2"     # the bundled model, by name (`embedjob models` lists what is here)

[output]
uri = "tables/lee.lance"
vector_dtype = "float32"
store_text = true
{mode}max_reject_fraction = 0.02
"""


def write_files(out: Path) -> tuple[list[str], list[str | None], list[str]]:
    """What the demo writes before it runs anything (the docs' examples run there too): ``lee.parquet``,
    ``job.toml`` and ``nightly.toml`` in ``out``. Returns the corpus' ids, texts and sources."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.corpora import lee_background

    out.mkdir(parents=True, exist_ok=True)
    articles: list[str | None] = list(lee_background())
    ids = [f"lee-{i:03d}" for i in range(len(articles))]
    sources = ["lee_background.cor"] * len(articles)
    # a few rows a real corpus has: they go to the rejects table, the run still commits
    ids += ["bad-null", "bad-empty", "lee-000"]
    articles += [None, "   ", "a second row claiming the id lee-000"]
    sources += ["demo"] * 3
    pq.write_table(pa.table({"id": ids, "text": articles, "source": sources}), out / "lee.parquet")
    (out / "job.toml").write_text(JOB.format(mode='mode = "overwrite"   # a fresh table each demo\n'))
    (out / "nightly.toml").write_text(JOB.format(mode=""))
    return ids, articles, sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="work folder (default out/demo)")
    parser.add_argument("--no-progress", action="store_true", help="progress lines instead of the live display")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    out: Path = args.out
    ids, articles, sources = write_files(out)
    print(f"wrote {out / 'lee.parquet'} ({len(ids)} rows), {out / 'job.toml'} and {out / 'nightly.toml'}\n")

    def night() -> None:
        """What changes by the next night: 3 articles edited, 1 new, 1 gone."""
        texts = list(articles)
        for i in (5, 50, 150):
            texts[i] = texts[i] + " (Updated: the story has developed since.)"
        keep = [k for k, i in enumerate(ids) if i != "lee-299"]
        rows = {
            "id": [ids[k] for k in keep] + ["lee-300"],
            "text": [texts[k] for k in keep] + ["Firefighters contained the last bushfire west of Sydney overnight."],
            "source": [sources[k] for k in keep] + ["demo"],
        }
        pq.write_table(pa.table(rows), out / "lee.parquet")
        print("changed lee.parquet: lee-005, lee-050, lee-150 edited, lee-300 added, lee-299 removed\n")

    exe = shutil.which("embedjob", path=os.path.dirname(sys.executable)) or "embedjob"
    table = str(out / "tables" / "lee.lance")
    quality = str(out / "quality_map")
    progress = ["--no-progress"] if args.no_progress else []
    commands = [
        [exe, "validate", str(out / "job.toml")],
        [exe, "plan", str(out / "job.toml")],
        [exe, "run", str(out / "job.toml"), *progress],
        night,
        [exe, "plan", str(out / "nightly.toml")],
        [exe, "run", str(out / "nightly.toml"), *progress],
        [exe, "index", table, "-g", "l6_d128"],
        [exe, "inspect", table],
        [exe, "query", table, "bushfires threaten homes near Sydney", "-g", "l3_d64", "-k", "3"],
        [exe, "query", table, "bushfires threaten homes near Sydney", "-g", "l6_d384", "-k", "3"],
        [exe, "query", table, "bushfires threaten homes near Sydney", "--funnel", "l6_d128:50,l6_d384:3"],
        [exe, "evaluate", table, "--sample", "300", "--timing", "64", "--recommend", "0.95", "--out", quality],
    ]
    for cmd in commands:
        if callable(cmd):
            cmd()
            continue
        print(f"$ embedjob {shlex.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
        print(flush=True)
    print("Query it from Python:")
    print(f"  from storage import open_table\n  open_table({table!r}).search('bushfires', 'l6_d128', k=5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
