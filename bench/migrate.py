"""A staged migration against a full overwrite: the cost of one night, the nights a budget needs, the map.

One corpus of real text is embedded with the raw all-MiniLM-L6-v2 (the old settings); the table is copied,
and the new settings — the same model with a calibration (``--to calibrated``, ``calibration = "auto"``), or a
second set of weights fine-tuned offline (``--to finetuned``, ``bench.finetune``) — are brought in two ways,
each a whole ``embedjob run`` process timed from the outside:

* a full overwrite (``mode = "overwrite"``): one run re-embeds everything;
* a staged migration (``embedjob run --migrate``, ``[migrate] max_rows_per_run``): one run per night until the
  switch, then one more night with one changed row (the fixed cost of a night through the pipeline: Ray, the
  actors, the model; a night with nothing changed at all is settled without them, ``bench.incremental``).

Figures: one migration night's wall time against the overwrite's; the nights the budget needs; the marginal
cost per row (a night less the fixed cost, per old row taken) against the overwrite's; the whole migration's
time against the overwrite's; that the table answered a search with the old model after every night; and,
after the first night, the compatibility map fitted on the rows migrated so far (``fit_compat_maps``): recall
on Lee passages split in halves (first half a query for the second), old->old, new->new, new queries through
the map against old vectors, and a new-model search over a half-migrated corpus.

    python -m bench.migrate [--n 3000] [--per-night 1000] [--to finetuned] [--json out/bench/migrate.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from bench._jobs import default_model, run_embedjob
from bench._report import Check, write_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRANS = ["l3_d64", "l6_d384"]


def _write_corpus(path: Path, rows: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(rows), "text": list(rows.values())}), path, row_group_size=2048)


def _job(path: Path, corpus: Path, model: str, out: Path, *, calibration: str | None = None, **sections) -> Path:
    lines = [f"granularities = {json.dumps(GRANS)}"]
    if calibration:
        lines.append(f"calibration = {json.dumps(calibration)}")
    lines += [f"[input]\nuri = {json.dumps(str(corpus))}", f"[model]\npath = {json.dumps(model)}"]
    output = {"uri": str(out), **sections.pop("output", {})}
    for name, values in {"output": output, **sections}.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _new_settings(to: str, steps: int) -> tuple[str, str | None, str]:
    """(model dir, calibration, what it is) of the new settings."""
    if to == "calibrated":
        return default_model(), "auto", "the same model with a calibration (calibration = 'auto')"
    from bench.finetune import finetuned_model

    path = finetuned_model(steps)
    return str(path), None, f"all-MiniLM-L6-v2 fine-tuned {steps} steps offline ({path.name})"


def _searchable(uri: str, rows: dict[str, str], probe: str) -> bool:
    """The table answers a search for one of its passages with that passage (whatever model it has now)."""
    from storage import open_table

    hits = open_table(uri).search(rows[probe], k=1)
    return hits.column("id").to_pylist() == [probe]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="passages in the corpus (default 3000)")
    parser.add_argument("--per-night", type=int, default=1000, help="old rows per migration night (default 1000)")
    parser.add_argument("--to", choices=("finetuned", "calibrated"), default="finetuned", help="the new settings")
    parser.add_argument("--steps", type=int, default=300, help="--to finetuned: fine-tuning steps (default 300)")
    parser.add_argument("--k", type=int, default=10, help="recall@k of the map's quality (default 10)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from bench.corpora import large_corpus
    from storage import open_table, read_migration, read_provenance

    folder = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    corpus, log = folder / "corpus.parquet", folder / "runs.log"
    texts = large_corpus(args.n)
    rows = {f"p{i:06d}": t for i, t in enumerate(texts)}
    _write_corpus(corpus, rows)
    new_model, calibration, described = _new_settings(args.to, args.steps)
    print(f"corpus: {len(rows):,} passages; old: raw all-MiniLM-L6-v2; new: {described}")

    base = folder / "base" / "corpus.lance"
    created = run_embedjob(_job(folder / "old.toml", corpus, default_model(), base), log)
    print(f"create (old settings):    {created:8.1f} s")
    for name in ("overwrite", "migrate"):
        shutil.copytree(base.parent, folder / name)
    over_uri, mig_uri = folder / "overwrite" / "corpus.lance", folder / "migrate" / "corpus.lance"

    over_job = _job(
        folder / "overwrite.toml", corpus, new_model, over_uri, calibration=calibration, output={"mode": "overwrite"}
    )
    overwrite = run_embedjob(over_job, log)
    print(f"full overwrite:           {overwrite:8.1f} s")

    mig_job = _job(
        folder / "migrate.toml",
        corpus,
        new_model,
        mig_uri,
        calibration=calibration,
        output={"mode": "migrate"},
        migrate={"max_rows_per_run": args.per_night},
    )
    nights: list[float] = []
    taken: list[int] = []
    searchable: list[bool] = []
    quality: dict | None = None
    probe = sorted(rows)[len(rows) // 2]
    while True:
        seconds = run_embedjob(mig_job, log)
        record = open_table(str(mig_uri)).runs()[-1]
        nights.append(seconds)
        taken.append(int(record.get("rows_migrated") or 0))
        searchable.append(_searchable(str(mig_uri), rows, probe))
        print(f"migration night {len(nights)}:       {seconds:8.1f} s  ({taken[-1]:,} old rows)")
        if quality is None and read_migration(str(mig_uri)) is not None:
            quality = _map_quality(str(mig_uri), args.k)  # mid-migration: the map from the rows migrated so far
        if read_migration(str(mig_uri)) is None or len(nights) > math.ceil(args.n / args.per_night) + 1:
            break
    # after the switch: an incremental night with one changed row, through the pipeline (a night's fixed cost)
    rows[probe] = rows[probe] + " (revised)"
    _write_corpus(corpus, rows)
    fixed = run_embedjob(mig_job, log)
    print(f"a night with one changed row: {fixed:6.1f} s")
    switched = read_provenance(str(mig_uri))
    same = switched is not None and switched.model_path == read_provenance(str(over_uri)).model_path

    full_nights = [s for s, t in zip(nights, taken, strict=True) if t == args.per_night] or nights
    night = statistics.median(full_nights)
    per_row_night = (night - fixed) / args.per_night
    per_row_over = (overwrite - fixed) / args.n
    expected_nights = math.ceil(args.n / args.per_night)
    figures = {
        "passages": args.n,
        "per_night": args.per_night,
        "new_settings": described,
        "create_s": round(created, 1),
        "overwrite_s": round(overwrite, 1),
        "nights_s": [round(s, 1) for s in nights],
        "old_rows_per_night": taken,
        "one_row_night_s": round(fixed, 1),
        "night_over_overwrite": round(night / overwrite, 3),
        "marginal_per_row_ratio": round(per_row_night / per_row_over, 3),
        "migration_total_over_overwrite": round(sum(nights) / overwrite, 3),
    }
    print(
        f"one night ({args.per_night:,} old rows) / overwrite = {night / overwrite:.3f}; "
        f"per old row, less a night's fixed {fixed:.1f} s: {per_row_night * 1000:.1f} ms vs the overwrite's "
        f"{per_row_over * 1000:.1f} ms ({per_row_night / per_row_over:.2f}x); "
        f"{len(nights)} nights ({sum(nights):.0f} s) vs one overwrite ({overwrite:.0f} s)"
    )
    checks = [
        Check(
            "nights to migrate at this budget",
            len(nights),
            f"== ceil(n / per night) = {expected_nights}",
            len(nights) == expected_nights,
        ),
        Check("one night's wall time / the overwrite's", night / overwrite, "context", None),
        Check(
            "cost per old row, a night vs the overwrite (fixed costs out)",
            per_row_night / per_row_over,
            "<= 1.25",
            per_row_night / per_row_over <= 1.25,
        ),
        Check("the whole migration / one overwrite", sum(nights) / overwrite, "context", None),
        Check("searchable after every night (old model, then new)", str(all(searchable)), "True", all(searchable)),
        Check("switched to the new settings", str(same), "True", same),
    ]
    if quality is not None:
        checks += quality.pop("checks")
        figures["map_quality"] = quality
    write_report(args.json, "migrate", checks, **figures)
    print(f"(work folder: {folder})")
    return 0 if all(c.holds is not False for c in checks) else 1


def _map_quality(uri: str, k: int) -> dict:
    """The compatibility map fitted on the rows a migrating table has migrated (``embedjob migrate fit-map``),
    measured on text it never saw: the Lee passages split in halves, the first half a query for the second.
    Recall@k of old->old, new->new, new queries through the map against old vectors (and back), and a new-model
    search over a half-migrated corpus (``merged``), per new granularity against the old richest."""
    from bench.corpora import lee_passages
    from embedder import ElasticEncoder
    from jobs.quality import halves, migration_quality
    from storage import calibration_uri, fit_compat_maps, load_calibration, read_migration, read_provenance

    old_prov, to = read_provenance(uri), read_migration(uri).to
    maps = fit_compat_maps(uri)
    cal = load_calibration(calibration_uri(uri, to.calibration)) if to.calibration else None
    old = ElasticEncoder.from_pretrained(old_prov.model_path, list(old_prov.granularities), device="cpu")
    new = ElasticEncoder.from_pretrained(to.model_path, list(to.granularities), device="cpu", calibration=cal)
    queries, docs, relevant = halves(lee_passages())
    out: dict = {"fitted_on": maps.info.source, "k": k, "pairs": []}
    checks = []
    for o, n in sorted(maps.pairs, key=lambda p: (p[1].layer, p[1].dim)):
        q = migration_quality(
            maps, docs, queries, relevant, old=old, new=new, old_granularity=o, new_granularity=n, k=k
        )
        out["pairs"].append(q)
        line = ", ".join(
            f"{key} {q[key]:.3f}" for key in ("old->old", "new->new", "new->map->old", "old->map->new", "merged")
        )
        print(f"map old {o} <- new {n}, recall@{k} on {len(queries):,} Lee halves: {line}")
        checks.append(Check(f"recall@{k} new->map->old (old {o}, new {n})", q["new->map->old"], "context", None))
        ratio = q["new->map->old"] / q["new->new"] if q["new->new"] else 0.0
        checks.append(Check(f"new->map->old / new->new (old {o}, new {n})", ratio, ">= 0.8", ratio >= 0.8))
    out["checks"] = checks
    return out


if __name__ == "__main__":
    raise SystemExit(main())
