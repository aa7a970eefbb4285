"""``embedjob plan JOB``: what a run will cost, before it runs: rows, tokens, truncation, what an incremental
night touches, bytes per row, and a wall-time estimate. Reads the input in this process: no Ray, no GPU.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder import cached_tokenizer, chunk_spans, decode_text, text_problem
from storage import CONTENT_HASH, DOC_ID, ID, VECTOR_DTYPES, content_hash, dataset_version, open_table, read_hashes
from storage.vocab import keeps_existing_rows, updates_rows

from ._checks import ResolvedJob
from ._lifecycle import checked_job
from ._spec import JobSpec

__all__ = ["JobPlan", "plan_job"]

#: up to this many rows to embed, every text is tokenized; above, a sample of ``sample`` texts is
EXACT_ROWS = 50_000
#: a truncated share above this gets a warning
TRUNCATED_WARNING = 0.05
_MEASURE_TEXTS = 64


@dataclass
class JobPlan:
    """What ``run_job`` would do now, counted without running it."""

    job: str
    table_uri: str
    mode: str
    rows: int = 0  # rows in the input
    rejected: int = 0  # rows a run would reject (null id or text, empty, duplicate id; append: ids the table has)
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    tokens: int = 0  # tokens of the rows to embed, after truncation at max_length (specials included)
    truncated: int = 0  # rows to embed whose text is cut at max_length
    chunks: int | None = None  # a chunked job: the chunks (rows of the table) the documents to embed make
    tokens_counted: str = "exact"
    max_length: int = 0
    granularities: list[str] = field(default_factory=list)
    bytes_per_row: int = 0  # the vectors of one row
    tokens_per_second: float | None = None
    throughput_from: str = ""
    estimated_seconds: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_to_embed(self) -> int:
        return self.new + self.changed

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rows_to_embed": self.rows_to_embed}


def plan_job(
    job: str | Path | JobSpec,
    *,
    overrides: dict[str, Any] | None = None,
    sample: int = 5_000,
    measure: bool = True,
) -> JobPlan:
    """Count what a run of ``job`` would do now. The input is read once (ids, texts, hashes against the table's);
    tokens are counted with the model's tokenizer, exactly up to ``EXACT_ROWS`` rows to embed, else on a random
    ``sample`` of them; the time comes from the table's recorded runs, else from a short encode measured here
    (``measure``), else is left out."""
    resolved, source_name = checked_job(job, overrides)
    plan = JobPlan(
        job=source_name,
        table_uri=resolved.output_uri,
        mode=resolved.mode,
        max_length=resolved.provenance.max_length,
        granularities=[str(g) for g in resolved.granularities],
        bytes_per_row=sum(g.dim for g in resolved.granularities)
        * VECTOR_DTYPES[resolved.spec.output.vector_dtype].byte_width,
    )
    texts = _count_rows(resolved, plan, sample)
    _count_tokens(resolved, plan, texts)
    _estimate_time(resolved, plan, texts if measure else [])
    if plan.rows_to_embed and plan.truncated / plan.rows_to_embed > TRUNCATED_WARNING:
        plan.warnings.append(
            f"{plan.truncated:,} of {plan.rows_to_embed:,} texts to embed ({plan.truncated / plan.rows_to_embed:.0%}) "
            f"are longer than max_length = {plan.max_length} tokens: only their first {plan.max_length} tokens are "
            f"embedded. Raise [model] max_length if the model allows it, or add a [chunking] section to embed each "
            f"long document as several chunks"
        )
    return plan


def _count_rows(resolved: ResolvedJob, plan: JobPlan, sample: int) -> list[str]:
    """Reads the input once: counts and the texts to embed (all of them up to EXACT_ROWS, else a sample)."""
    spec = resolved.spec
    existing = _table_hashes(resolved) if keeps_existing_rows(plan.mode) else {}
    seen: set[Any] = set()
    texts: list[str] = []
    rng = random.Random(0)
    id_col, text_col = spec.input.id_column, spec.input.text_column
    for batch in resolved.source.batches([id_col, text_col]):
        for id_value, value in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            plan.rows += 1
            text, reason = decode_text(value)
            reason = reason or ("null id" if id_value is None else text_problem(text))
            if reason is not None or id_value in seen:
                plan.rejected += 1
                continue
            seen.add(id_value)
            old = existing.get(id_value)
            if old is not None and not updates_rows(plan.mode):
                plan.rejected += 1  # append: the table has the id
                continue
            if old is not None and old == content_hash(text):
                plan.unchanged += 1
                continue
            if old is None:
                plan.new += 1
            else:
                plan.changed += 1
            _keep(texts, text, plan.rows_to_embed, sample, rng)
    if updates_rows(plan.mode) and spec.output.delete_missing:
        plan.deleted = sum(1 for i in existing if i not in seen)
    if plan.rows_to_embed > len(texts):
        plan.tokens_counted = f"estimated from a sample of {len(texts):,} of {plan.rows_to_embed:,} rows"
    return texts


def _keep(texts: list[str], text: str, n: int, sample: int, rng: random.Random) -> None:
    """Every text up to EXACT_ROWS; past that, a uniform sample of ``sample`` (reservoir sampling)."""
    if n <= EXACT_ROWS:
        texts.append(text)
        return
    if len(texts) > sample:
        texts[:] = rng.sample(texts, sample)
    j = rng.randrange(n)
    if j < sample:
        texts[j] = text


def _table_hashes(resolved: ResolvedJob) -> dict[Any, str]:
    if not resolved.output_exists:
        return {}
    uri, opts = resolved.output_uri, resolved.storage_options
    table = read_hashes(uri, dataset_version(uri, opts), opts)
    key = DOC_ID if DOC_ID in table.column_names else ID  # a chunked table: by document
    return dict(zip(table.column(key).to_pylist(), table.column(CONTENT_HASH).to_pylist(), strict=True))


def _count_tokens(resolved: ResolvedJob, plan: JobPlan, texts: list[str]) -> None:
    if resolved.chunking is not None:
        plan.chunks = 0
    if not texts:
        return
    tokenizer = cached_tokenizer(resolved.provenance.model_path, plan.max_length)
    scale = plan.rows_to_embed / len(texts)
    if resolved.chunking is not None:  # what is embedded: the chunks
        texts = [
            t[a:b]
            for t, spans in zip(texts, chunk_spans(tokenizer.tokenizer, texts, resolved.chunking), strict=True)
            for a, b in spans
        ]
        plan.chunks = round(len(texts) * scale)
    tokens = truncated = 0
    for start in range(0, len(texts), 512):
        _, offsets, cut = tokenizer.tokenize_flat(texts[start : start + 512])
        tokens += int(offsets[-1])
        truncated += int(cut.sum())
    plan.tokens, plan.truncated = round(tokens * scale), round(truncated * scale)


def _estimate_time(resolved: ResolvedJob, plan: JobPlan, texts: list[str]) -> None:
    """Tokens per second from the table's last runs that embedded something, else from encoding a few of the
    texts here (on CPU, the job's granularities, after one warm-up batch)."""
    if plan.rows_to_embed == 0:
        plan.estimated_seconds = 0.0
        return
    recorded = _recorded_throughput(resolved)
    if recorded is not None:
        plan.tokens_per_second, plan.throughput_from = recorded, "the table's recorded runs"
    elif texts:
        plan.tokens_per_second = _measured_throughput(resolved, texts[:_MEASURE_TEXTS])
        plan.throughput_from = f"{min(len(texts), _MEASURE_TEXTS)} texts encoded here on CPU"
    if plan.tokens_per_second:
        plan.estimated_seconds = plan.tokens / plan.tokens_per_second


def _recorded_throughput(resolved: ResolvedJob) -> float | None:
    if not resolved.output_exists:
        return None
    runs = [
        r
        for r in open_table(resolved.output_uri, storage_options=resolved.storage_options).runs()
        if r.get("status") == "committed" and (r.get("tokens") or 0) > 0 and (r.get("seconds_pipeline") or 0) > 0
    ][-3:]
    if not runs:
        return None
    return sum(r["tokens"] for r in runs) / sum(r["seconds_pipeline"] for r in runs)


def _measured_throughput(resolved: ResolvedJob, texts: list[str]) -> float:
    from embedder import ElasticEncoder  # here: torch only for a plan that measures the encoder

    config = dataclasses.replace(resolved.encoder, device="cpu")
    encoder = ElasticEncoder.from_config(resolved.provenance.model_path, config, calibration=resolved.calibration)
    encoder.encode(texts)  # warm-up: the first pass pays for allocation and thread start-up
    t0 = time.perf_counter()
    result = encoder.encode_with_stats(texts)
    return float(result.token_counts.sum()) / max(time.perf_counter() - t0, 1e-6)
