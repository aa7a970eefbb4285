"""Elastic encoder vs sentence-transformers, side by side in one process.

Same real texts (gensim's Lee articles and Wikipedia excerpt), same process;
every configuration runs on each chunk of texts before the next chunk, so the
machine's slow spells hit all of them alike. Figures are means over rounds.
Prints tokens/s, padding overhead and the ratios the encoder issue targets:

* full depth, 4 granularities >= 1.10x sentence-transformers ``encode``
* exit at layer k of 6 costs <= k/6 + 0.05 of full depth
* 4 granularities cost <= 1.03x one granularity

    python -m bench.encoder --n 2000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from bench._jobs import default_model
from bench._report import Check, write_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="passages (real text), default 2000")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the whole set (figures are means)")
    parser.add_argument("--chunk", type=int, default=500, help="passages per interleaved chunk")
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
    model = args.model or default_model()
    texts = passages(args.n)
    four = ["l3_d64", "l3_d128", "l6_d128", "l6_d384"]
    enc = ElasticEncoder.from_pretrained(model, [f"l{k}_d384" for k in range(1, 7)] + four[:3])
    st = SentenceTransformer(str(model), device="cpu")
    depth = enc.num_layers
    console.print(
        f"[bold]bench/encoder[/bold]: {len(texts)} passages, model {enc.model_dir.name} ({depth} layers), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    chunks = [texts[i : i + args.chunk] for i in range(0, len(texts), args.chunk)]
    configs: dict[str, object] = {
        "sentence-transformers": lambda part: st.encode(part, batch_size=32, normalize_embeddings=True),
        "elastic 4 granularities": lambda part: enc.encode_with_stats(part, four),
        **{
            f"elastic exit l{k}": (lambda part, k=k: enc.encode_with_stats(part, [Granularity(k, 384)]))
            for k in range(1, depth + 1)
        },
    }
    # warm-up: first calls allocate and pick kernels
    st.encode(texts[:64])
    enc.encode(texts[:64], four)
    # Fine-grained interleaving: every config runs on each chunk before the next chunk, in a rotating
    # order, so a slow spell on this shared machine hits all configs alike. Figures are sums over
    # all chunks and rounds; the ratios are what the targets are about.
    seconds: dict[str, float] = dict.fromkeys(configs, 0.0)
    real_tokens: dict[str, int] = dict.fromkeys(configs, 0)
    padded_tokens: dict[str, int] = dict.fromkeys(configs, 0)
    names = list(configs)
    for r in range(args.rounds):
        for c, part in enumerate(chunks):
            shift = (r * len(chunks) + c) % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                out = configs[name](part)  # type: ignore[operator]
                seconds[name] += time.perf_counter() - t0
                if hasattr(out, "stats"):
                    real_tokens[name] += out.stats.real_tokens
                    padded_tokens[name] += out.stats.padded_tokens
        console.print(
            f"  round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n.replace('elastic ', '')} {seconds[n] / (r + 1):.1f}s" for n in names),
            highlight=False,
        )
    best = {n: seconds[n] / args.rounds for n in names}
    tokens = real_tokens["elastic 4 granularities"] // args.rounds
    full = best[f"elastic exit l{depth}"]

    table = Table(title=f"{tokens:,} real tokens; mean of {args.rounds} round(s), chunks of {args.chunk} interleaved")
    for col in ("run", "seconds", "tokens/s", "padding", "figure", "target", "holds"):
        table.add_column(col, justify="right" if col not in ("run", "figure") else "left")
    results = []

    def row(name: str, figure: str, value: float | None, target: str, ok: bool | None) -> None:
        padding = f"{padded_tokens[name] / real_tokens[name] - 1:.1%}" if real_tokens[name] else "-"
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
    checks = [
        Check(f"{r['run']}: {r['figure']}", r["value"], r["target"], r["holds"])
        for r in results
        if r["value"] is not None
    ]
    write_report(args.json, "encoder", checks, passages=len(texts), tokens=tokens, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
