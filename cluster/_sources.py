"""Input corpora: resolve a URI (local path, glob, ``s3://``), infer the format,
read the schema without reading the data, and build the Ray dataset.
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage import ObjectStore, error_line
from storage.vocab import INPUT_FORMATS

from ._errors import SourceError

__all__ = ["Source", "resolve_source"]

_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".lance": "lance",
}
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    uri: str
    format: str
    paths: tuple[str, ...]  # files to read (one entry, the dataset URI, for lance)
    store: ObjectStore | None = field(default=None, repr=False)

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def filesystem(self) -> Any:
        if not self.is_s3:
            return None
        return (self.store or ObjectStore.from_env()).filesystem()

    def schema(self) -> pa.Schema:
        """The columns and types, from file footers or the first lines: the data is not read."""
        first = self.paths[0]
        fs = self.filesystem()
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                return pq.read_schema(_open(first, fs))
            if self.format == "lance":
                import lance

                opts = self.store.lance_options() if (self.store and self.is_s3) else None
                return lance.dataset(first, storage_options=opts).schema
            if self.format == "csv":
                import pyarrow.csv as pcsv

                with _open(first, fs) as fh:
                    return pcsv.open_csv(fh).schema
            if self.format == "jsonl":
                import pyarrow.json as pjson

                with _open(first, fs) as fh:
                    head = b"".join(fh.readline() for _ in range(200))
                return pjson.read_json(pa.BufferReader(head)).schema
        except (OSError, pa.ArrowInvalid, ValueError) as exc:
            raise SourceError(f"cannot read the schema of {first!r} as {self.format}: {exc}") from None
        raise SourceError(f"input format {self.format!r} is not supported; allowed: {', '.join(INPUT_FORMATS)}")

    def head(self, n: int = 200) -> pa.Table:
        """The first ``n`` rows of the first file (fewer if it holds fewer), read without Ray."""
        first = self.paths[0]
        fs = self.filesystem()
        try:
            if self.format == "lance":
                import lance

                opts = self.store.lance_options() if (self.store and self.is_s3) else None
                return lance.dataset(first, storage_options=opts).head(n)
            if self.format == "jsonl":
                import pyarrow.json as pjson

                with _open(first, fs) as fh:
                    lines = b"".join(fh.readline() for _ in range(n))
                return pjson.read_json(pa.BufferReader(lines))
            if self.format == "parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(_open(first, fs))
                batch = next(pf.iter_batches(batch_size=max(n, 1)), None)
                return pf.schema_arrow.empty_table() if batch is None else pa.Table.from_batches([batch]).slice(0, n)
            import pyarrow.csv as pcsv

            with _open(first, fs) as fh:
                reader = pcsv.open_csv(fh)
                rows: list[pa.RecordBatch] = []
                for batch in reader:
                    rows.append(batch)
                    if sum(b.num_rows for b in rows) >= n:
                        break
                return pa.Table.from_batches(rows, schema=reader.schema).slice(0, n)
        except (OSError, pa.ArrowInvalid, ValueError) as exc:
            raise SourceError(f"cannot read the first rows of {first!r} as {self.format}: {exc}") from None

    def batches(self, columns: Sequence[str], batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        """Every row's ``columns``, file by file, read in this process without Ray (what ``embedjob plan``
        reads); a damaged file is named."""
        fs = self.filesystem()
        for path in self.paths:
            try:
                yield from self._file_batches(path, list(columns), batch_size, fs)
            except (OSError, pa.ArrowInvalid, ValueError) as exc:
                raise SourceError(f"cannot read {path!r} as {self.format}: {error_line(exc)}") from None

    def _file_batches(self, path: str, columns: list[str], batch_size: int, fs: Any) -> Iterator[pa.RecordBatch]:
        if self.format == "lance":
            import lance

            opts = self.store.lance_options() if (self.store and self.is_s3) else None
            yield from lance.dataset(path, storage_options=opts).to_batches(columns=columns, batch_size=batch_size)
        elif self.format == "parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(_open(path, fs)).iter_batches(batch_size=batch_size, columns=columns)
        elif self.format == "csv":
            import pyarrow.csv as pcsv

            with _open(path, fs) as fh:
                opts = pcsv.ConvertOptions(include_columns=columns)
                yield from pcsv.open_csv(fh, convert_options=opts)
        else:
            import pyarrow.json as pjson

            with _open(path, fs) as fh:
                yield from pjson.read_json(fh).select(columns).to_batches(max_chunksize=batch_size)

    def check_readable(self, max_files: int = 256) -> None:
        """Every parquet file's footer can be read (up to ``max_files`` files): a truncated or damaged file is
        named here, before any work, instead of failing a run with an error that names no file. (A damaged
        data page behind a good footer is found when the run reads it: :meth:`explain_read_error`.)"""
        if self.format != "parquet":
            return
        import pyarrow.parquet as pq

        fs = self.filesystem()
        for path in self.paths[:max_files]:
            try:
                with _open(path, fs) as fh:
                    pq.ParquetFile(fh).metadata  # noqa: B018  (reads the footer)
            except (OSError, pa.ArrowInvalid, ValueError) as exc:
                raise SourceError(
                    f"input file {path!r} is not a readable parquet file ({error_line(exc, 200)}); fix or remove it"
                ) from None

    def explain_read_error(self, exc: BaseException) -> SourceError | None:
        """A failed read whose error names one of this input's files (Ray: "Failed to read fragment PATH"),
        as one line naming that file; None when it names none."""
        texts = [str(exc), str(getattr(exc, "cause", "") or "")]
        for path in self.paths:
            bare = path.removeprefix("s3://")
            if any(bare in t for t in texts):
                cause = getattr(exc, "cause", None) or exc
                return SourceError(
                    f"input file {path!r} cannot be read as {self.format} ({error_line(cause, 200)}); nothing was "
                    f"committed: fix or remove the file and run again"
                )
        return None

    def row_count(self) -> int | None:
        """Rows in the input when the format says so cheaply (parquet footers, lance), else None."""
        try:
            if self.format == "parquet" and len(self.paths) <= 256:
                import pyarrow.parquet as pq

                fs = self.filesystem()
                return sum(pq.ParquetFile(_open(p, fs)).metadata.num_rows for p in self.paths)
            if self.format == "lance":
                import lance

                opts = self.store.lance_options() if (self.store and self.is_s3) else None
                return lance.dataset(self.paths[0], storage_options=opts).count_rows()
        except (OSError, pa.ArrowInvalid, ValueError):
            return None
        return None

    def read(self, columns: Sequence[str], *, num_blocks: int | None = None) -> Any:
        """A lazy Ray dataset of ``columns``."""
        import ray.data

        fs = self.filesystem()
        cols = list(dict.fromkeys(columns))
        paths = list(self.paths)
        if self.format == "parquet":
            return ray.data.read_parquet(paths, filesystem=fs, override_num_blocks=num_blocks).select_columns(cols)
        if self.format == "lance":
            opts = self.store.lance_options() if (self.store and self.is_s3) else None
            return ray.data.read_lance(paths[0], columns=cols, storage_options=opts, override_num_blocks=num_blocks)
        if self.format == "jsonl":
            ds = ray.data.read_json(paths, lines=True, filesystem=fs, override_num_blocks=num_blocks)
        else:
            ds = ray.data.read_csv(paths, filesystem=fs, override_num_blocks=num_blocks)
        return ds.select_columns(cols)


def _open(path: str, fs: Any):
    if fs is None:
        return open(path, "rb")
    return fs.open(path.removeprefix("s3://"), "rb")


def infer_format(uri: str) -> str:
    base = uri.rstrip("/")
    for pattern_char in _GLOB_CHARS:
        base = base.replace(pattern_char, "x")  # "parts/*.parquet" -> "parts/x.parquet"
    suffix = Path(base).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    raise SourceError(
        f"cannot tell the format of input {uri!r} from its suffix; set input.format to one of "
        f"{', '.join(INPUT_FORMATS)} (suffixes: {', '.join(sorted(_SUFFIXES))})"
    )


def resolve_source(uri: str, fmt: str | None = None, *, store: ObjectStore | None = None) -> Source:
    """Check that ``uri`` names something readable and list its files.

    A directory means every file in it with the format's suffix; a glob is
    expanded; ``s3://`` URIs are listed through s3fs.
    """
    fmt = _input_format(uri, fmt)
    if fmt == "lance":
        return Source(uri=uri, format=fmt, paths=(uri,), store=store)
    suffixes = tuple(s for s, f in _SUFFIXES.items() if f == fmt)
    paths = _list_s3(uri, suffixes, store) if uri.startswith("s3://") else _list_local(uri, suffixes)
    if not paths:
        raise SourceError(f"input {uri!r} matches no {fmt} files")
    return Source(uri=uri, format=fmt, paths=paths, store=store)


def _input_format(uri: str, fmt: str | None) -> str:
    """The checked input format: the one given (``json`` meaning jsonl), else the one ``uri``'s suffix names."""
    fmt = (fmt or infer_format(uri)).lower()
    if fmt == "json":
        fmt = "jsonl"
    if fmt not in INPUT_FORMATS:
        raise SourceError(f"input format {fmt!r} is not supported; allowed: {', '.join(INPUT_FORMATS)}")
    return fmt


def _list_s3(uri: str, suffixes: tuple[str, ...], store: ObjectStore | None) -> tuple[str, ...]:
    """The ``s3://`` files ``uri`` names: a glob's matches, a prefix's files with ``suffixes``, or one object."""
    fs = (store or ObjectStore.from_env()).filesystem()
    key = uri.removeprefix("s3://")
    try:
        if _GLOB_CHARS & set(key):
            found = sorted(fs.glob(key))
        elif fs.isdir(key):
            found = sorted(p for p in fs.find(key) if p.lower().endswith(suffixes))
        elif fs.exists(key):
            found = [key]
        else:
            found = []
    except OSError as exc:
        raise SourceError(f"cannot list input {uri!r}: {exc}") from None
    return tuple(f"s3://{p}" for p in found)


def _list_local(uri: str, suffixes: tuple[str, ...]) -> tuple[str, ...]:
    """The local files ``uri`` names: a glob's matches, a directory's files with ``suffixes``, or one file."""
    p = Path(uri).expanduser()
    if _GLOB_CHARS & set(uri):
        return tuple(sorted(globlib.glob(str(p), recursive=True)))
    if p.is_dir():
        return tuple(sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes))
    if p.is_file():
        return (str(p),)
    return ()


def describe_columns(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)
