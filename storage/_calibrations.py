"""Calibrations kept next to a table: ``<table stem>_calibration/<fingerprint>.safetensors``.

Content-addressed, so a new calibration never overwrites the one older table
versions were embedded with; the table's provenance names the fingerprint it
uses. Local paths and ``s3://`` (with the table's Lance storage options).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from embedder import Calibration, CalibrationError

__all__ = ["calibration_dir", "calibration_uri", "list_calibrations", "load_calibration", "save_calibration"]

_SUFFIX = ".safetensors"


def calibration_dir(table_uri: str) -> str:
    """``out/articles.lance`` -> ``out/articles_calibration``."""
    stem = table_uri[: -len(".lance")] if table_uri.endswith(".lance") else table_uri.rstrip("/")
    return f"{stem}_calibration"


def calibration_uri(table_uri: str, fingerprint: str) -> str:
    return f"{calibration_dir(table_uri)}/{fingerprint}{_SUFFIX}"


def _filesystem(uri: str, storage_options: Mapping[str, str] | None) -> tuple[Any, str]:
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


def save_calibration(
    table_uri: str, calibration: Calibration, *, storage_options: Mapping[str, str] | None = None
) -> str:
    """Write the calibration (and its readable ``.json``) next to the table; returns its URI. Idempotent."""
    uri = calibration_uri(table_uri, calibration.fingerprint)
    fs, path = _filesystem(uri, storage_options)
    if not uri.startswith("s3://"):  # (on S3 it would only leave an empty marker object)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if fs.get_file_info(path).size:  # already there: same fingerprint, same content
        return uri
    meta = (json.dumps(calibration.describe(), indent=2) + "\n").encode()
    _write(fs, path[: -len(_SUFFIX)] + ".json", meta)
    _write(fs, path, calibration.to_bytes())  # last: a file with this name is complete
    return uri


def _write(fs: Any, path: str, data: bytes) -> None:
    """Readers never see part of a file: an S3 PUT is all-or-nothing; locally, write then rename."""
    from pyarrow.fs import LocalFileSystem

    if not isinstance(fs, LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def load_calibration(uri: str, *, storage_options: Mapping[str, str] | None = None) -> Calibration:
    """Read a calibration file (local or ``s3://``)."""
    fs, path = _filesystem(uri, storage_options)
    try:
        with fs.open_input_stream(path) as fh:
            data = fh.read()
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {uri!r} does not exist") from None
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration file {uri!r}: {exc}") from None
    return Calibration.from_bytes(data, source=uri)


def list_calibrations(table_uri: str, *, storage_options: Mapping[str, str] | None = None) -> list[Calibration]:
    """Every calibration stored next to the table, newest first; unreadable files are skipped."""
    from pyarrow import fs as pafs

    folder = calibration_dir(table_uri)
    fs, path = _filesystem(folder, storage_options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    found = []
    for info in infos:
        if info.type == pafs.FileType.File and info.base_name.endswith(_SUFFIX):
            uri = f"{folder}/{info.base_name}"
            try:
                found.append(load_calibration(uri, storage_options=storage_options))
            except CalibrationError:
                continue
    return sorted(found, key=lambda c: c.info.created_at, reverse=True)
