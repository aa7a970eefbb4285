"""The elastic encoder: one pass, several (layer, dim) granularities.

Knows nothing about Ray, files or Lance.
"""

from __future__ import annotations

from ._batching import Tokenized, plan_batches, tokenize
from ._calibrate import fit_calibration
from ._calibration import Calibration, CalibrationInfo, LayerFit
from ._calibration_fit import DEFAULT_ALPHAS, CalibrationStats, heldout_mask
from ._chunking import Chunking, chunk_spans
from ._compat import COMPAT_FORMAT, CompatInfo, CompatMaps, CompatSpace, CompatStats, MapFit, PairCheck
from ._config import (
    BACKENDS,
    MODEL_DTYPES,
    POOLINGS,
    Backend,
    EncoderConfig,
    ModelDtype,
    Pooling,
    PoolingName,
    resolve_device,
    resolve_dtype,
)
from ._encoder import ElasticEncoder, EncodeResult, EncodeStats
from ._errors import (
    CalibrationError,
    CompatMapError,
    EmbedderError,
    EncoderConfigError,
    GranularityError,
    InvalidTextError,
    ModelError,
    UnsupportedModelError,
)
from ._granularity import STARBUCKS, Granularity, parse_granularities, resolve_granularities
from ._hub import BUNDLED_MODELS, LocalModel, hub_cache_dir, local_models, resolve_model
from ._int8 import int8_missing
from ._loading import find_blocks, read_model_dir, weight_files, weights_fingerprint
from ._quality import (
    agreement,
    compat_recall,
    neighbours,
    pair_correlation,
    recall_at_k,
    recommend,
    retrieval_recall,
    spearman,
)
from ._text import (
    EMPTY_TEXT,
    NOT_A_STRING,
    NULL_TEXT,
    UNDECODABLE_TEXT,
    WHITESPACE_ONLY_TEXT,
    check_texts,
    decode_text,
    embeddable_text,
    find_invalid_texts,
    text_problem,
)
from ._tokenizer import TextTokenizer, cached_tokenizer, tokenized_from_flat

__all__ = [
    "BACKENDS",
    "BUNDLED_MODELS",
    "COMPAT_FORMAT",
    "DEFAULT_ALPHAS",
    "EMPTY_TEXT",
    "MODEL_DTYPES",
    "NOT_A_STRING",
    "NULL_TEXT",
    "POOLINGS",
    "STARBUCKS",
    "UNDECODABLE_TEXT",
    "WHITESPACE_ONLY_TEXT",
    "Backend",
    "Calibration",
    "CalibrationError",
    "CalibrationInfo",
    "CalibrationStats",
    "Chunking",
    "CompatInfo",
    "CompatMapError",
    "CompatMaps",
    "CompatSpace",
    "CompatStats",
    "ElasticEncoder",
    "EmbedderError",
    "EncodeResult",
    "EncodeStats",
    "EncoderConfig",
    "EncoderConfigError",
    "Granularity",
    "GranularityError",
    "InvalidTextError",
    "LayerFit",
    "LocalModel",
    "MapFit",
    "ModelDtype",
    "ModelError",
    "PairCheck",
    "Pooling",
    "PoolingName",
    "TextTokenizer",
    "Tokenized",
    "UnsupportedModelError",
    "agreement",
    "cached_tokenizer",
    "check_texts",
    "chunk_spans",
    "compat_recall",
    "decode_text",
    "embeddable_text",
    "find_blocks",
    "find_invalid_texts",
    "fit_calibration",
    "heldout_mask",
    "hub_cache_dir",
    "int8_missing",
    "local_models",
    "neighbours",
    "pair_correlation",
    "parse_granularities",
    "plan_batches",
    "read_model_dir",
    "recall_at_k",
    "recommend",
    "resolve_device",
    "resolve_dtype",
    "resolve_granularities",
    "resolve_model",
    "retrieval_recall",
    "spearman",
    "text_problem",
    "tokenize",
    "tokenized_from_flat",
    "weight_files",
    "weights_fingerprint",
]
