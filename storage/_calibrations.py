"""Calibrations kept next to a table: ``<table stem>_calibration/<fingerprint>.safetensors``.

Content-addressed, so a new calibration never overwrites the one older table
versions were embedded with; the table's provenance names the fingerprint it
uses. Local paths and ``s3://`` (with the table's Lance storage options).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from embedder import Calibration, CalibrationError

from ._files import list_addressed, read_addressed, save_addressed, table_stem

__all__ = ["calibration_dir", "calibration_uri", "list_calibrations", "load_calibration", "save_calibration"]

_SUFFIX = ".safetensors"


def calibration_dir(table_uri: str) -> str:
    """``out/articles.lance`` -> ``out/articles_calibration``."""
    return f"{table_stem(table_uri)}_calibration"


def calibration_uri(table_uri: str, fingerprint: str) -> str:
    return f"{calibration_dir(table_uri)}/{fingerprint}{_SUFFIX}"


def save_calibration(
    table_uri: str, calibration: Calibration, *, storage_options: Mapping[str, str] | None = None
) -> str:
    """Write the calibration (and its readable ``.json``) next to the table; returns its URI. Idempotent."""
    uri = calibration_uri(table_uri, calibration.fingerprint)
    meta = (json.dumps(calibration.describe(), indent=2) + "\n").encode()
    return save_addressed(uri, calibration.to_bytes(), meta, storage_options)


def load_calibration(uri: str, *, storage_options: Mapping[str, str] | None = None) -> Calibration:
    """Read a calibration file (local or ``s3://``)."""
    data = read_addressed(uri, "calibration", CalibrationError, storage_options)
    return Calibration.from_bytes(data, source=uri)


def list_calibrations(table_uri: str, *, storage_options: Mapping[str, str] | None = None) -> list[Calibration]:
    """Every calibration stored next to the table, newest first; unreadable files are skipped."""

    def load(uri: str) -> Calibration:
        return load_calibration(uri, storage_options=storage_options)

    return list_addressed(calibration_dir(table_uri), _SUFFIX, load, CalibrationError, storage_options)
