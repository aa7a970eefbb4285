"""How a table's vectors were made, kept in its schema metadata.

A table never mixes vectors of two models or configs: a run compares its own
provenance with the table's before it writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["METADATA_KEY", "Provenance"]

METADATA_KEY = b"embedjob"

# Fields whose change means the vectors are not comparable any more.
_CONFIG_FIELDS = (
    "weights_fingerprint",
    "granularities",
    "pooling",
    "normalize",
    "max_length",
    "calibration",
    "vector_dtype",
    "chunking",
    "backend",
)

#: the backend of tables written before there was a choice (and the default)
DEFAULT_BACKEND = "torch"


@dataclass(frozen=True, kw_only=True)
class Provenance:
    model_path: str
    weights_fingerprint: str
    granularities: tuple[str, ...]
    pooling: str
    normalize: bool
    max_length: int
    num_layers: int
    hidden_size: int
    vector_dtype: str
    calibration: str | None = None
    #: how long texts were cut into chunks (``embedder.Chunking.describe()``); None: one row per text
    chunking: str | None = None
    #: how the forward pass ran: "torch", or "int8" (``embedder.BACKENDS``); int8 vectors are close to torch's,
    #: not equal, so a change of backend is a change of settings
    backend: str = DEFAULT_BACKEND
    embedjob_version: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "granularities", tuple(self.granularities))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Provenance:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def settings_fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of every setting whose change makes vectors not comparable, but which
        granularities are kept: two provenances with one fingerprint made vectors of one space, column for column
        (what a compatibility map is fitted for; a column added later does not change it)."""
        values = {name: getattr(self, name) for name in _CONFIG_FIELDS if name != "granularities"}
        if values["backend"] == DEFAULT_BACKEND:
            del values["backend"]  # the fingerprints of tables from before the backend was recorded stay as they were
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()[:16]

    def differences(self, other: Provenance) -> list[str]:
        """Human-readable list of config fields that differ, e.g. ``"pooling: mean -> cls"``."""
        out = []
        for name in _CONFIG_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if isinstance(mine, tuple):
                    mine, theirs = ",".join(mine), ",".join(theirs)
                out.append(f"{name}: {mine} -> {theirs}")
        return out
