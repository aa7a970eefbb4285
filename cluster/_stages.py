"""What runs inside Ray workers: prepare (validate, hash, dedupe) and encode (actor); the write is ``_sink``.

Kept free of driver state: every stage gets what it needs as arguments, so
Ray can run it on any node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedder import (
    Chunking,
    cached_tokenizer,
    chunk_spans,
    decode_text,
    text_problem,
    tokenized_from_flat,
)
from storage import (
    CHAR_END,
    CHAR_START,
    CHUNK,
    CONTENT_HASH,
    DOC_ID,
    EMBEDDED_AT,
    ID,
    RUN_ID,
    TEXT,
    chunk_id,
    content_hash,
    load_calibration,
    next_column,
    old_vectors,
    vector_array,
    vector_column,
)

from ._handles import ask, in_ray
from ._plans import NextEncoder
from ._pool import PoolPlan
from ._progress import record_embedded, record_rejected, report
from ._registry import DUPLICATE, EXISTS, SKIP
from ._timing import ACTOR_BUSY, ACTOR_INIT_AT, ACTOR_LOAD, ACTOR_READY_AT, note_timing

if TYPE_CHECKING:  # the encoder (torch, transformers) is imported where it loads: the read, prepare and write
    # tasks that run this module's functions on other workers need none of it
    from embedder import ElasticEncoder, EncoderConfig

REASON = "_reason"
TOKENS = "_tokens"
TRUNCATED = "_truncated"
NODE = "_node"  # the Ray node id of the actor that encoded the row
INPUT_IDS = "_input_ids"  # token ids made by a CPU task (tokenize = "tasks"), null for rejected rows
CUT = "_cut"  # the text was longer than max_length and was truncated
ROWADDR = "_rowaddr"  # a migration step: where an old row it takes is in the table (its old vectors are read back)


def prepare(
    batch: pa.Table,
    *,
    id_column: str,
    text_column: str,
    passthrough: Sequence[str],
    registry: Any,
    tokenizer: tuple[str, int | None] | None = None,
    chunking: tuple[str, int | None, Chunking] | None = None,
    progress: Any = None,
    copy_old: bool = False,
) -> pa.Table:
    """Normalise one input batch: ``id, text, content_hash, <passthrough>, _reason``.

    ``_reason`` is null for rows to embed, else why the row is rejected: a null
    id, null / empty / whitespace-only / undecodable text, an id already
    claimed by an earlier row of this run, or (append) an id the table has.
    Rows that need no work (unchanged, or already staged) are dropped here.

    ``tokenizer`` (model dir, max_length): also tokenize the rows to embed, into ``_input_ids`` and
    ``_cut``, so the encoder actor gets ids ready and its device never waits for the tokenizer.

    ``chunking`` (model dir, max_length, how): each document to embed becomes its chunks, a row each
    (:func:`split_into_chunks`); the registry classifies documents, so a changed document is embedded whole.
    ``progress``: the run's progress counter (rows read; those skipped are done).
    ``copy_old`` (a migration step): each old row the step takes gets its address in the table (``_rowaddr``).
    ``registry`` and ``progress`` are Ray actors, or plain objects when a small night runs in this process.
    """
    ids = batch.column(id_column)
    id_values = ids.to_pylist()
    texts, hashes, reasons = check_rows(batch.column(text_column).to_pylist(), id_values)
    # Each valid row claims its id; the registry answers new / changed (embed), unchanged / staged
    # (skip), or a reason to reject (a duplicate, or in append mode an id the table has). A row's key
    # is the batch's digest plus its position, so a retried task re-claims its own ids and gets the
    # same answers.
    prefix = _batch_digest(id_values, hashes)
    keys = [prefix + i.to_bytes(8, "little") if r is None else None for i, r in enumerate(reasons)]
    statuses = ask(registry, "classify", prefix, len(id_values), id_values, keys, hashes)
    # a resumed chunked document may be staged in part: its missing chunks are embedded below
    keep = _rows_to_keep(statuses, reasons, keep_staged=chunking is not None)
    report(progress, read=len(id_values), done=len(id_values) - len(keep))
    if len(keep) < len(id_values):
        take = pa.array(keep, pa.int64())
        batch, ids = batch.take(take), ids.take(take)
        texts, hashes, reasons = [texts[i] for i in keep], [hashes[i] for i in keep], [reasons[i] for i in keep]
    columns = {
        ID: ids,
        TEXT: pa.array(texts, pa.string()),
        CONTENT_HASH: pa.array(hashes, pa.string()),
    }
    for name in passthrough:
        columns[name] = batch.column(name)
    columns[REASON] = pa.array(reasons, pa.string())
    out = pa.table(columns)
    if chunking is not None:
        staged = [id_values[i] for i in keep if statuses[i] == "staged"]
        done = ask(registry, "staged_chunks", staged) if staged else {}
        out = split_into_chunks(out, *chunking, staged=done)
    if copy_old:
        addresses = ask(registry, "addresses", out.column(ID).to_pylist())
        out = out.append_column(ROWADDR, pa.array(addresses, pa.int64()))
    if tokenizer is not None:
        texts, reasons = out.column(TEXT).to_pylist(), out.column(REASON).to_pylist()
        input_ids, cut = _token_columns(tokenizer, texts, reasons)
        out = out.append_column(INPUT_IDS, input_ids).append_column(CUT, cut)
    return out


def split_into_chunks(
    rows: pa.Table,
    model_path: str,
    max_length: int | None,
    chunking: Chunking,
    *,
    staged: Mapping[Any, Sequence[int]] | None = None,
) -> pa.Table:
    """``prepare``'s rows, one per document, as one row per chunk: ``id`` becomes the chunk's
    (``<doc_id>#<chunk>``), followed by ``doc_id``, ``chunk``, ``char_start``, ``char_end``; ``text`` is the
    chunk's text; the content hash and the passthrough columns are the document's. A rejected row stays one
    row (``id`` its document's, as text; no chunk). ``staged``: document id -> chunk ordinals an earlier
    attempt of the run staged, left out."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    doc_ids = rows.column(ID).to_pylist()
    texts = rows.column(TEXT).to_pylist()
    reasons = rows.column(REASON).to_pylist()
    todo = [i for i, r in enumerate(reasons) if r is None]
    hf = cached_tokenizer(model_path, max_length).tokenizer
    spans_of = dict(zip(todo, chunk_spans(hf, [texts[i] for i in todo], chunking), strict=True))
    staged = staged or {}
    take: list[int] = []
    # per output row: (id, chunk, char_start, char_end, text)
    chunks: list[tuple[str | None, int | None, int | None, int | None, str | None]] = []
    for i, doc in enumerate(doc_ids):
        if reasons[i] is not None:
            take.append(i)
            chunks.append((None if doc is None else str(doc), None, None, None, texts[i]))
            continue
        done = set(staged.get(doc, ()))
        for n, (a, b) in enumerate(spans_of[i]):
            if n not in done:
                take.append(i)
                chunks.append((chunk_id(doc, n), n, a, b, texts[i][a:b]))
    chunk_ids, ordinals, starts, ends, chunk_texts = zip(*chunks, strict=True) if chunks else ((),) * 5
    out = rows.take(pa.array(take, pa.int64()))
    docs = out.column(ID)
    out = out.drop_columns([ID, TEXT])
    chunk_columns = {
        ID: pa.array(chunk_ids, pa.string()),
        DOC_ID: docs,
        CHUNK: pa.array(ordinals, pa.int32()),
        CHAR_START: pa.array(starts, pa.int32()),
        CHAR_END: pa.array(ends, pa.int32()),
        TEXT: pa.array(chunk_texts, pa.string()),
    }
    for pos, (name, values) in enumerate(chunk_columns.items()):
        out = out.add_column(pos, name, values)
    return out


def check_rows(
    raw_values: Sequence[Any], id_values: Sequence[Any]
) -> tuple[list[str | None], list[str | None], list[str | None]]:
    """Each row's text (decoded, as a string), its content hash and why it is rejected (None: valid): a null
    id, or null / empty / whitespace-only / undecodable text. The one place a run's rows are judged, by
    ``prepare`` in the pipeline and by the job layer's no-change check before it (duplicate ids, which need the
    whole run's view, are the id registry's)."""
    texts: list[str | None] = []
    hashes: list[str | None] = []
    reasons: list[str | None] = []
    for value, id_value in zip(raw_values, id_values, strict=True):
        # undecodable bytes are kept, escaped, in the rejects table: the bytes can be recovered from it
        text, reason = decode_text(value)
        if reason is None:
            reason = "null id" if id_value is None else text_problem(text)
        if text is not None and not isinstance(text, str):
            text = str(text)  # the rejects table keeps it as text
        texts.append(text)
        hashes.append(content_hash(text) if isinstance(text, str) else None)
        reasons.append(reason)
    return texts, hashes, reasons


def _batch_digest(id_values: list[Any], hashes: list[str | None]) -> bytes:
    """8 bytes naming the batch by its ids and content hashes: the prefix of its rows' registry keys."""
    digest = hashlib.blake2b(digest_size=8)
    for id_value, h in zip(id_values, hashes, strict=True):
        digest.update(repr(id_value).encode())
        digest.update((h or "").encode())
    return digest.digest()


def _rows_to_keep(statuses: Sequence[str], reasons: list[str | None], *, keep_staged: bool = False) -> list[int]:
    """The positions of the rows the registry did not skip; a duplicate's or an existing id's reason is
    written into ``reasons``. ``keep_staged``: rows staged by an earlier attempt are kept too."""
    keep = []
    for i, status in enumerate(statuses):
        if status in SKIP and not (keep_staged and status == "staged"):
            continue  # unchanged since the table's version, or staged by an earlier attempt of this run
        if status == DUPLICATE:
            reasons[i] = "duplicate id (an earlier row with this id was kept)"
        elif status == EXISTS:
            reasons[i] = "id already in the table (append adds new ids only; mode = 'incremental' updates rows)"
        keep.append(i)
    return keep


def _token_columns(
    tokenizer: tuple[str, int | None], texts: list[str | None], reasons: list[str | None]
) -> tuple[pa.Array, pa.Array]:
    """The rows to embed as token ids (a list<int32> column, null where the row is rejected) and their
    truncation flags."""
    # Ray runs one prepare task per CPU: a tokenizer thread pool per task would oversubscribe the cores
    # (seen on 16 cores: prepare at 1,650 rows/s per task, the GPU waiting half the time)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = [i for i, r in enumerate(reasons) if r is None]
    values, offsets, truncated = cached_tokenizer(*tokenizer).tokenize_flat([texts[i] for i in rows])
    lengths = np.zeros(len(texts), dtype=np.int64)
    lengths[rows] = np.diff(offsets)
    cut = np.zeros(len(texts), dtype=bool)
    cut[rows] = truncated
    all_offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=all_offsets[1:])
    valid = np.zeros(len(texts), dtype=bool)
    valid[rows] = True
    ids = pa.ListArray.from_arrays(
        pa.array(all_offsets, pa.int32()), pa.array(values, pa.int32()), mask=pa.array(~valid)
    )
    return ids, pa.array(cut)


def load_encoder(
    model_path: str,
    config: EncoderConfig,
    pool: PoolPlan,
    *,
    calibration_uri: str | None = None,
    storage_options: dict[str, str] | None = None,
) -> ElasticEncoder:
    """The encoder of one actor pool slot: on CPU with the torch threads the pool gives this slot's node
    unless it holds a GPU, through the run's calibration (loaded from its stored URI) when it has one."""
    if not pool.uses_gpu:
        config = dataclasses.replace(config, device="cpu", num_threads=pool.threads_on(node_id()))
    from embedder import ElasticEncoder

    calibration = load_calibration(calibration_uri, storage_options=storage_options) if calibration_uri else None
    return ElasticEncoder.from_config(model_path, config, calibration=calibration)


class EncodeActor:
    """One per pool slot: loads the model once, embeds the rows ``prepare`` let through, and reports them:
    to the run's progress counter, and as Ray metrics (rows and tokens by node, rejected rows by reason)."""

    def __init__(
        self,
        *,
        model_path: str,
        config: EncoderConfig,
        pool: PoolPlan,
        vector_dtype: str,
        run_id: str,
        calibration_uri: str | None = None,
        storage_options: dict[str, str] | None = None,
        progress: Any = None,
        next_encoder: NextEncoder | None = None,
    ) -> None:
        note_timing(progress, ACTOR_INIT_AT, time.time())
        t0 = time.perf_counter()
        self.encoder = load_encoder(
            model_path,
            config,
            pool,
            calibration_uri=calibration_uri,
            storage_options=storage_options,
        )
        self.next = next_encoder
        self.storage_options = storage_options
        self.next_encoder = None
        if next_encoder is not None:  # a migration step: the new settings too
            self.next_encoder = load_encoder(
                next_encoder.model_path,
                next_encoder.encoder,
                pool,
                calibration_uri=next_encoder.calibration_uri,
                storage_options=storage_options,
            )
        self.vector_dtype = vector_dtype
        self.run_id = run_id
        self.node_id = node_id()
        self.progress = progress
        note_timing(progress, ACTOR_LOAD, time.perf_counter() - t0)
        note_timing(progress, ACTOR_READY_AT, time.time())

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        out = self._encode(batch)
        note_timing(self.progress, ACTOR_BUSY, time.perf_counter() - t0)
        return out

    def _encode(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        ok = pc.is_null(batch.column(REASON)).to_numpy(zero_copy_only=False)
        embedded = np.flatnonzero(ok)
        copied, old = self._old_vectors(batch, embedded)  # a migration step's old rows: read back, not embedded
        rows = np.setdiff1d(embedded, copied)
        texts = None if INPUT_IDS in batch.column_names else batch.column(TEXT).take(pa.array(rows)).to_pylist()
        tokens = np.zeros(n, dtype=np.int32)
        truncated = np.zeros(n, dtype=bool)
        vectors: dict[Any, np.ndarray] = {}
        if len(rows):
            if INPUT_IDS in batch.column_names:  # tokenized by the prepare tasks
                ids = batch.column(INPUT_IDS).combine_chunks().take(pa.array(rows, pa.int64()))
                offsets = ids.offsets.to_numpy()
                cut = batch.column(CUT).to_numpy(zero_copy_only=False)[rows]
                result = self.encoder.encode_tokenized(
                    tokenized_from_flat(ids.flatten().to_numpy(), offsets - offsets[0], cut)
                )
            else:
                result = self.encoder.encode_with_stats(texts)
            tokens[rows] = result.token_counts
            truncated[rows[list(result.stats.truncated_positions)]] = True
            vectors = result.vectors
        out = batch.drop_columns([c for c in (INPUT_IDS, CUT, ROWADDR) if c in batch.column_names])
        for g in self.encoder.granularities:
            full = np.zeros((n, g.dim), dtype=np.float32)  # rejected rows: zeros, dropped by the writer
            if g in vectors:
                full[rows] = vectors[g]
            if len(copied):
                full[copied] = old[g]
            out = out.append_column(vector_column(str(g)), vector_array(full, self.vector_dtype))
        now = pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC"))
        out = out.append_column(RUN_ID, pa.array([self.run_id] * n, pa.string()))
        out = out.append_column(EMBEDDED_AT, now)
        out = self._next_vectors(out, embedded, copied, tokens)
        out = out.append_column(TOKENS, pa.array(tokens))
        out = out.append_column(TRUNCATED, pa.array(truncated))
        self._report(batch, len(embedded), int(tokens.sum()))
        # per row, not per batch: Ray Data may merge the outputs of several actors into one write batch
        return out.append_column(NODE, pa.array([self.node_id] * n, pa.string()))

    def _old_vectors(self, batch: pa.Table, rows: np.ndarray) -> tuple[np.ndarray, dict[Any, np.ndarray]]:
        """A migration step: the positions among ``rows`` of old rows whose old vectors are read back from the
        table (their ``_rowaddr``), and those vectors; none when the batch has no such row, or the table
        answers with other rows than expected (they are embedded then)."""
        nothing = np.zeros(0, dtype=np.int64), {}
        nxt = self.next
        if nxt is None or nxt.table_uri is None or nxt.read_version is None or ROWADDR not in batch.column_names:
            return nothing
        addresses = batch.column(ROWADDR).to_pylist()
        have = np.asarray([k for k in rows if addresses[k] is not None], dtype=np.int64)
        if not len(have):
            return nothing
        ids = batch.column(ID).take(pa.array(have)).to_pylist()
        columns = {g: vector_column(str(g)) for g in self.encoder.granularities}
        got = old_vectors(
            nxt.table_uri,
            nxt.read_version,
            [addresses[k] for k in have],
            ids,
            list(columns.values()),
            self.storage_options,
        )
        if got is None:
            return nothing
        return have, {g: _matrix(got.column(c), g.dim) for g, c in columns.items()}

    def _next_vectors(self, out: pa.Table, rows: np.ndarray, copied: np.ndarray, tokens: np.ndarray) -> pa.Table:
        """A migration step: the new settings' vectors of the rows embedded, as ``next_vec_*`` columns; the rows
        whose old vectors were read back count the new settings' tokens (``tokens``, in place)."""
        if self.next_encoder is None or self.next is None:
            return out
        n = out.num_rows
        vectors = {}
        if len(rows):
            result = self.next_encoder.encode_with_stats(out.column(TEXT).take(pa.array(rows)).to_pylist())
            vectors = result.vectors
            counts = np.zeros(n, dtype=np.int32)
            counts[rows] = result.token_counts
            tokens[copied] = counts[copied]
        for g in self.next_encoder.granularities:
            full = np.zeros((n, g.dim), dtype=np.float32)
            if g in vectors:
                full[rows] = vectors[g]
            out = out.append_column(next_column(g), vector_array(full, self.next.vector_dtype))
        return out

    def _report(self, batch: pa.Table, embedded: int, tokens: int) -> None:
        rejected = batch.num_rows - embedded
        reasons: dict[str, int] = {}
        if rejected:
            counts = pc.value_counts(batch.column(REASON).drop_null()).to_pylist()
            reasons = {c["values"]: int(c["counts"]) for c in counts}
        record_embedded(self.run_id, self.node_id, rows=embedded, tokens=tokens)
        record_rejected(self.run_id, reasons)
        report(self.progress, done=_documents(batch), embedded=embedded, tokens=tokens, rejected=rejected)


def _matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A fixed-size-list vector column as an (n, dim) float32 array."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, dim)


def _documents(batch: pa.Table) -> int:
    """The input rows a batch finishes, for the progress against the input's row count: its rows, or in a chunked
    run the documents whose first chunk it holds (and its rejected rows, each one document)."""
    if CHUNK not in batch.column_names:
        return batch.num_rows
    chunk = batch.column(CHUNK)
    return int(pc.sum(pc.fill_null(pc.equal(chunk, 0), True).cast(pa.int64())).as_py() or 0)


def node_id() -> str:
    """This worker's Ray node id (hex); empty outside Ray."""
    if not in_ray():
        return ""
    import ray

    return ray.get_runtime_context().get_node_id()
