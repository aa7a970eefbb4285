"""Calibration quality: raw vs calibrated, for every (layer, dim) of a model, on real text.

Fits a calibration (rotation + per-exit maps for every layer below full depth)
on Wikipedia passages from the gensim wheel, then evaluates on texts it never
saw: the Lee news passages plus Wikipedia passages after the fitting ones
(checked disjoint). For each (layer, dim), raw and calibrated, through the
real encoder (one pass each, every granularity at once):

* agreement with full depth: recall@k of each passage's k nearest neighbours
  against its neighbours under the full vector (full depth, full width);
* correlation (Spearman) with human similarity ratings of the 50 Lee documents
  (1,225 rated pairs, ``lee.cor`` + ``similarities0-1.txt``).

Targets (the calibration issue): at layer 2 / dim 64 calibrated recall >= 1.5x
raw; at full depth / dim 64 calibrated > raw; full depth / full width identical.

    python -m bench.calibration --fit 5000 --eval 3000 --json out/bench/calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench._jobs import default_model
from bench._report import Check

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", type=int, default=5000, help="Wikipedia passages to fit on (default 5000)")
    parser.add_argument("--eval", type=int, default=3000, help="passages to evaluate recall on (default 3000)")
    parser.add_argument("--dims", default="32,64,128,256,384", help="Matryoshka prefixes (default 32..384)")
    parser.add_argument("--k", type=int, default=10, help="neighbours for recall@k (default 10)")
    parser.add_argument("--model", default=None, help="model dir (default: all-MiniLM-L6-v2 from its wheel)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here (for the quality map)")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from bench.corpora import lee_passages, wiki_passages
    from embedder import (
        ElasticEncoder,
        Granularity,
        agreement,
        fit_calibration,
        neighbours,
        pair_correlation,
        read_model_dir,
    )
    from jobs.quality import lee_set

    console = Console(width=150)
    model = args.model or default_model()
    mdir = read_model_dir(model)
    depth, width = mdir.num_layers, mdir.hidden_size
    dims = [d for d in (int(x) for x in args.dims.split(",")) if d <= width]
    grans = [Granularity(k, d) for k in range(1, depth + 1) for d in dims]
    full = Granularity(depth, width)
    if full not in grans:
        grans.append(full)

    wiki = list(dict.fromkeys(wiki_passages()))
    fit_texts = wiki[: args.fit]
    lee = list(dict.fromkeys(lee_passages()))
    eval_texts = (lee + wiki[args.fit :])[: args.eval]
    if len(fit_texts) < args.fit or len(eval_texts) < args.eval:
        raise SystemExit(f"not enough real text: {len(fit_texts)} to fit, {len(eval_texts)} to evaluate")
    overlap = set(fit_texts) & set(eval_texts)
    if overlap:
        raise SystemExit(f"{len(overlap)} texts are both fitted on and evaluated on")
    lee_h = lee_set()
    if lee_h is None:
        raise SystemExit("the human-rated Lee documents come from the gensim wheel: pip install gensim")
    scored_docs = lee_h.texts
    if set(scored_docs) & set(fit_texts):
        raise SystemExit("the human-rated documents overlap the fitting passages")
    console.print(
        f"[bold]bench/calibration[/bold]: {mdir.name} ({depth} layers x {width}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; fit on {len(fit_texts):,} Wikipedia passages, evaluate on "
        f"{len(eval_texts):,} others ({min(len(lee), args.eval):,} Lee + rest Wikipedia) and the 50 human-rated "
        f"Lee documents ({len(lee_h):,} pairs)"
    )

    t0 = time.perf_counter()
    fitter = ElasticEncoder.for_calibration(model)
    cal = fit_calibration(fitter, fit_texts, corpus=f"gensim Wikipedia excerpt, first {len(fit_texts)} passages")
    t_fit = time.perf_counter() - t0
    del fitter
    console.print(
        f"  fitted {cal.fingerprint} in {t_fit:.1f} s: "
        + ", ".join(f"l{f.layer} alpha {f.alpha:.3g} R² {f.heldout_r2:.3f}" for f in cal.info.fits)
    )

    raw_enc = ElasticEncoder.from_pretrained(model, grans)
    cal_enc = ElasticEncoder.from_pretrained(model, grans, calibration=cal)
    raw_enc.encode(eval_texts[:32])  # warm-up
    cal_enc.encode(eval_texts[:32])
    t0 = time.perf_counter()
    raw = raw_enc.encode(eval_texts)
    t_raw = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibrated = cal_enc.encode(eval_texts)
    t_cal = time.perf_counter() - t0
    raw_h, cal_h = raw_enc.encode(list(scored_docs)), cal_enc.encode(list(scored_docs))

    truth = neighbours(raw[full], args.k)
    rows = []
    for g in grans:
        r_raw = agreement(raw[g], truth=truth)
        r_cal = agreement(calibrated[g], truth=truth)
        rows.append(
            {
                "granularity": str(g),
                "layer": g.layer,
                "dim": g.dim,
                "recall_raw": r_raw,
                "recall_calibrated": r_cal,
                "human_raw": pair_correlation(raw_h[g], lee_h.pairs, lee_h.scores),
                "human_calibrated": pair_correlation(cal_h[g], lee_h.pairs, lee_h.scores),
            }
        )
    by = {r["granularity"]: r for r in rows}

    table = Table(title=f"recall@{args.k} against full-depth neighbours, and Spearman with human ratings")
    for col in ("layer", "dim", "recall raw", "recall calibrated", "x raw", "human raw", "human calibrated"):
        table.add_column(col, justify="right")
    for r in rows:
        ratio = r["recall_calibrated"] / r["recall_raw"] if r["recall_raw"] else float("inf")
        table.add_row(
            str(r["layer"]),
            str(r["dim"]),
            f"{r['recall_raw']:.3f}",
            f"{r['recall_calibrated']:.3f}",
            f"{ratio:.2f}",
            f"{r['human_raw']:.3f}",
            f"{r['human_calibrated']:.3f}",
        )
    console.print(table)

    max_diff = float(np.abs(calibrated[full] - raw[full]).max())
    l2 = by.get(f"l{min(2, depth)}_d64")
    top64 = by.get(f"l{depth}_d64")
    checks = []
    if l2:
        ratio = l2["recall_calibrated"] / max(l2["recall_raw"], 1e-12)
        checks.append((f"l{min(2, depth)}_d64 recall, calibrated / raw", f"{ratio:.3f}", ">= 1.5", ratio >= 1.5))
    if top64:
        gain = top64["recall_calibrated"] - top64["recall_raw"]
        checks.append((f"l{depth}_d64 recall, calibrated - raw", f"{gain:+.3f}", "> 0", gain > 0))
    checks.append((f"{full} max |calibrated - raw|", f"{max_diff:.2e}", "<= 1e-5 (identical)", max_diff <= 1e-5))
    overhead = t_cal / t_raw
    checks.append(("encode time, calibrated / raw (30 granularities)", f"{overhead:.3f}", "context", None))
    targets = Table(title=f"targets (fit {t_fit:.0f} s; encode raw {t_raw:.0f} s, calibrated {t_cal:.0f} s)")
    for col in ("figure", "value", "target", "holds"):
        targets.add_column(col, justify="right" if col != "figure" else "left")
    for name, value, target, ok in checks:
        targets.add_row(name, value, target, "-" if ok is None else ("yes" if ok else "[red]NO[/red]"))
    console.print(targets)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "bench": "calibration",
                    "model": str(model),
                    "calibration": cal.describe(),
                    "fit_passages": len(fit_texts),
                    "eval_passages": len(eval_texts),
                    "k": args.k,
                    "grid": rows,
                    "checks": [asdict(Check(*c)) for c in checks],
                    "seconds": {"fit": t_fit, "encode_raw": t_raw, "encode_calibrated": t_cal},
                },
                indent=2,
            )
        )
        console.print(f"wrote {args.json}")
    return 0 if all(c[3] is not False for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
