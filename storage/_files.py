"""Small files next to a table (calibrations, staging records, the run lock), local or on S3.

One pyarrow filesystem built from the same storage options Lance gets, so a
table and its side files always live on the same store with the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "delete_tree",
    "filesystem",
    "list_dir",
    "read_bytes",
    "save_addressed",
    "table_stem",
    "write_bytes",
]


def table_stem(table_uri: str) -> str:
    """``out/articles.lance`` -> ``out/articles`` (side files are ``out/articles_<what>``)."""
    return table_uri[: -len(".lance")] if table_uri.endswith(".lance") else table_uri.rstrip("/")


def filesystem(uri: str, storage_options: Mapping[str, str] | None) -> tuple[Any, str]:
    """A pyarrow filesystem and the path in it, from the same options Lance gets."""
    from pyarrow import fs

    if not uri.startswith("s3://"):
        return fs.LocalFileSystem(), uri
    opts = dict(storage_options or {})
    endpoint = opts.get("aws_endpoint")
    scheme = "https"
    if endpoint and "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    return (
        fs.S3FileSystem(
            access_key=opts.get("aws_access_key_id"),
            secret_key=opts.get("aws_secret_access_key"),
            session_token=opts.get("aws_session_token"),
            region=opts.get("aws_region", "us-east-1"),
            endpoint_override=endpoint,
            scheme="http" if opts.get("allow_http") == "true" else scheme,
        ),
        uri.removeprefix("s3://"),
    )


def write_bytes(uri: str, data: bytes, storage_options: Mapping[str, str] | None = None) -> None:
    """Readers never see part of a file: an S3 PUT is all-or-nothing; locally, write then rename."""
    from pyarrow.fs import LocalFileSystem

    fs, path = filesystem(uri, storage_options)
    if not isinstance(fs, LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)  # (on S3 this would leave a marker object)
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def read_bytes(uri: str, storage_options: Mapping[str, str] | None = None) -> bytes:
    """The whole file; FileNotFoundError when it isn't there."""
    fs, path = filesystem(uri, storage_options)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def list_dir(uri: str, storage_options: Mapping[str, str] | None = None, *, dirs: bool = False) -> list[str]:
    """Names of the files (or, with ``dirs``, the sub-folders) directly in a folder; [] when it is missing."""
    from pyarrow import fs as pafs

    fs, path = filesystem(uri, storage_options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    want = pafs.FileType.Directory if dirs else pafs.FileType.File
    return sorted(i.base_name for i in infos if i.type == want and not i.base_name.endswith(".tmp"))


def delete_tree(uri: str, storage_options: Mapping[str, str] | None = None) -> None:
    """Remove a folder and everything in it; nothing happens when it is missing."""
    from pyarrow import fs as pafs

    fs, path = filesystem(uri, storage_options)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def save_addressed(uri: str, data: bytes, readable: bytes, storage_options: Mapping[str, str] | None = None) -> str:
    """Write a content-addressed side file (``<folder>/<fingerprint>.safetensors``, the name its content's hash)
    and its readable ``.json`` beside it; returns ``uri``. Idempotent: a file already there has this content.
    The data goes last, so a file with this name is complete."""
    fs, path = filesystem(uri, storage_options)
    if fs.get_file_info(path).size:
        return uri
    write_bytes(uri.rsplit(".", 1)[0] + ".json", readable, storage_options)
    write_bytes(uri, data, storage_options)
    return uri


def read_addressed(uri: str, what: str, error: type[Exception], storage_options: Mapping[str, str] | None = None):
    """The bytes of a content-addressed side file (local or ``s3://``); ``error`` naming ``what`` and ``uri``
    when it is missing or cannot be read."""
    try:
        return read_bytes(uri, storage_options)
    except FileNotFoundError:
        raise error(f"{what} file {uri!r} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {uri!r}: {exc}") from None


def list_addressed(folder: str, suffix: str, load, error: type[Exception], storage_options=None) -> list:
    """``load(uri)`` of every side file in ``folder`` whose name ends with ``suffix``, newest first (by their
    ``info.created_at``); a file ``load`` refuses with ``error`` is skipped."""
    found = []
    for name in list_dir(folder, storage_options):
        if name.endswith(suffix):
            try:
                found.append(load(f"{folder}/{name}"))
            except error:
                continue
    return sorted(found, key=lambda f: f.info.created_at, reverse=True)
