"""What runs inside Ray workers: prepare (validate, hash, dedupe), encode (actor), write (fragments).

Kept free of driver state: every stage gets what it needs as arguments, so
Ray can run it on any node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedder import ElasticEncoder, EncoderConfig
from storage import REJECTS_SCHEMA, content_hash, load_calibration, vector_array, vector_column, write_fragments

REASON = "_reason"
TOKENS = "_tokens"
TRUNCATED = "_truncated"


def prepare(
    batch: pa.Table,
    *,
    id_column: str,
    text_column: str,
    passthrough: Sequence[str],
    registry: Any,
) -> pa.Table:
    """Normalise one input batch: ``id, text, content_hash, <passthrough>, _reason``.

    ``_reason`` is null for rows to embed, else why the row is rejected: a null
    id, null / empty / whitespace-only / undecodable text, or an id already
    claimed by an earlier row of this run.
    """
    import ray

    ids = batch.column(id_column)
    raw = batch.column(text_column)
    texts: list[str | None] = []
    hashes: list[str | None] = []
    reasons: list[str | None] = []
    id_values = ids.to_pylist()
    for value, id_value in zip(raw.to_pylist(), id_values, strict=True):
        reason = None
        text = value
        if isinstance(value, bytes):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                # kept, escaped, in the rejects table: the bytes can be recovered from it
                text, reason = value.decode("utf-8", "backslashreplace"), "undecodable text (not UTF-8)"
        if reason is None:
            if id_value is None:
                reason = "null id"
            elif text is None:
                reason = "null text"
            elif not isinstance(text, str):
                text, reason = str(text), f"text is not a string ({type(value).__name__})"
            elif not text:
                reason = "empty text"
            elif text.isspace():
                reason = "whitespace-only text"
        texts.append(text)
        hashes.append(content_hash(text) if isinstance(text, str) else None)
        reasons.append(reason)
    # Duplicates: the first row (in the order rows reach the registry) keeps the id. A row's key is
    # the batch's digest plus its position, so a retried task re-claims its own ids.
    candidates = [i for i, r in enumerate(reasons) if r is None]
    if candidates:
        digest = hashlib.blake2b(digest_size=8)
        for id_value, h in zip(id_values, hashes, strict=True):
            digest.update(repr(id_value).encode())
            digest.update((h or "").encode())
        prefix = digest.digest()
        keys = [prefix + i.to_bytes(8, "little") for i in candidates]
        won = ray.get(registry.claim.remote([id_values[i] for i in candidates], keys))
        for i, ok in zip(candidates, won, strict=True):
            if not ok:
                reasons[i] = "duplicate id (an earlier row with this id was kept)"
    columns = {
        "id": ids,
        "text": pa.array(texts, pa.string()),
        "content_hash": pa.array(hashes, pa.string()),
    }
    for name in passthrough:
        columns[name] = batch.column(name)
    columns[REASON] = pa.array(reasons, pa.string())
    return pa.table(columns)


class EncodeActor:
    """One per pool slot: loads the model once, embeds the rows ``prepare`` let through."""

    def __init__(
        self,
        *,
        model_path: str,
        config: EncoderConfig,
        torch_threads: int | None,
        use_gpu: bool,
        vector_dtype: str,
        run_id: str,
        calibration_uri: str | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        if not use_gpu:
            config = dataclasses.replace(config, device="cpu", num_threads=torch_threads or config.num_threads)
        calibration = load_calibration(calibration_uri, storage_options=storage_options) if calibration_uri else None
        self.encoder = ElasticEncoder.from_config(model_path, config, calibration=calibration)
        self.vector_dtype = vector_dtype
        self.run_id = run_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        ok = pc.is_null(batch.column(REASON)).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(ok)
        texts = batch.column("text").take(pa.array(rows, pa.int64())).to_pylist()
        result = self.encoder.encode_with_stats(texts)
        tokens = np.zeros(n, dtype=np.int32)
        tokens[rows] = result.token_counts
        truncated = np.zeros(n, dtype=bool)
        truncated[rows[list(result.stats.truncated_positions)]] = True
        out = batch
        for g, vecs in result.vectors.items():
            full = np.zeros((n, g.dim), dtype=np.float32)  # rejected rows: zeros, dropped by the writer
            full[rows] = vecs
            out = out.append_column(vector_column(str(g)), vector_array(full, self.vector_dtype))
        now = pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC"))
        out = out.append_column("run_id", pa.array([self.run_id] * n, pa.string()))
        out = out.append_column("embedded_at", now)
        out = out.append_column(TOKENS, pa.array(tokens))
        return out.append_column(TRUNCATED, pa.array(truncated))


def write(
    batch: pa.Table,
    *,
    uri: str,
    rejects_uri: str,
    schema: pa.Schema,
    run_id: str,
    storage_options: dict[str, str] | None,
) -> pa.Table:
    """Stage one batch as uncommitted Lance fragments (output and rejects); return their JSON and counts."""
    reasons = batch.column(REASON)
    ok = pc.is_null(reasons)
    good = batch.filter(ok)
    bad = batch.filter(pc.invert(ok))
    main = write_fragments(good, uri, schema, storage_options=storage_options)
    rejected: list[str] = []
    counts: dict[str, int] = {}
    if bad.num_rows:
        for reason in bad.column(REASON).to_pylist():
            counts[reason] = counts.get(reason, 0) + 1
        now = datetime.now(UTC)
        rejects = pa.table(
            {
                "id": pc.cast(bad.column("id"), pa.string()),
                "reason": bad.column(REASON),
                "text": bad.column("text"),
                "run_id": pa.array([run_id] * bad.num_rows, pa.string()),
                "rejected_at": pa.array([now] * bad.num_rows, pa.timestamp("us", tz="UTC")),
            },
            schema=REJECTS_SCHEMA,
        )
        rejected = write_fragments(rejects, rejects_uri, REJECTS_SCHEMA, storage_options=storage_options)
    return pa.table(
        {
            "fragments": pa.array([main], pa.list_(pa.string())),
            "reject_fragments": pa.array([rejected], pa.list_(pa.string())),
            "rows": pa.array([batch.num_rows], pa.int64()),
            "embedded": pa.array([good.num_rows], pa.int64()),
            "rejected": pa.array([bad.num_rows], pa.int64()),
            "tokens": pa.array([int(pc.sum(good.column(TOKENS)).as_py() or 0)], pa.int64()),
            "truncated": pa.array([int(pc.sum(pc.cast(good.column(TRUNCATED), pa.int64())).as_py() or 0)]),
            "reasons": pa.array([json.dumps(counts)], pa.string()),
        }
    )
