"""What every plan that runs a pool of encoder actors holds (embedding, calibration, backfill), once."""

from __future__ import annotations

from dataclasses import dataclass, field

from embedder import EncoderConfig

from ._pool import PoolRequest
from ._sources import Source

__all__ = ["CorpusPlan", "EncoderPlan", "NextEncoder"]


@dataclass(frozen=True, kw_only=True)
class EncoderPlan:
    """The model and the encoder's settings each actor loads, what the pool asks of the cluster, the store's
    options, and where the calibration the actors apply is stored."""

    model_path: str
    encoder: EncoderConfig
    pool: PoolRequest = field(default_factory=PoolRequest)
    storage_options: dict[str, str] | None = field(default=None, repr=False)
    #: where the run's calibration is stored (next to the table). Each actor loads it from there, so
    #: its constructor arguments stay small: a restarted actor whose large arguments were evicted from
    #: the object store fails to start (ray#53727).
    calibration_uri: str | None = None


@dataclass(frozen=True, kw_only=True)
class CorpusPlan(EncoderPlan):
    """An encoder plan that reads a corpus: where, and which columns hold the ids and the texts."""

    source: Source
    id_column: str
    text_column: str


@dataclass(frozen=True, kw_only=True)
class NextEncoder:
    """A migration step's new settings: a second encoder every actor loads, whose vectors go into the
    ``next_vec_*`` columns of the rows it embeds (the first encoder's keep the old settings' ``vec_*``)."""

    model_path: str
    encoder: EncoderConfig
    vector_dtype: str = "float32"
    #: where its calibration is stored (next to the table)
    calibration_uri: str | None = None
    #: the table and the version the step read: an old row it takes has its old vectors read back from there
    #: (``prepare`` gives each such row its address), not embedded again
    table_uri: str | None = None
    read_version: int | None = None
