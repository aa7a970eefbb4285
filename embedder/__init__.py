"""The elastic encoder: one pass, several (layer, dim) granularities.

Knows nothing about Ray, files or Lance.
"""

from __future__ import annotations

from ._batching import find_invalid_texts
from ._config import EncoderConfig, Pooling
from ._encoder import ElasticEncoder, EncodeResult, EncodeStats
from ._errors import (
    EmbedderError,
    EncoderConfigError,
    GranularityError,
    InvalidTextError,
    ModelError,
    UnsupportedModelError,
)
from ._granularity import STARBUCKS, Granularity, parse_granularities, resolve_granularities
from ._loading import read_model_dir, weights_fingerprint

__all__ = [
    "STARBUCKS",
    "ElasticEncoder",
    "EmbedderError",
    "EncodeResult",
    "EncodeStats",
    "EncoderConfig",
    "EncoderConfigError",
    "Granularity",
    "GranularityError",
    "InvalidTextError",
    "ModelError",
    "Pooling",
    "UnsupportedModelError",
    "find_invalid_texts",
    "parse_granularities",
    "read_model_dir",
    "resolve_granularities",
    "weights_fingerprint",
]
