"""The elastic encoder: one pass, several (layer, dim) granularities.

Knows nothing about Ray, files or Lance.
"""

from __future__ import annotations

from ._lazy import lazy_exports

#: each public name by the private module that defines it, imported on first use (``embedder._lazy``)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_batching": ("Tokenized", "plan_batches", "tokenize"),
    "_calibrate": ("fit_calibration",),
    "_calibration": ("Calibration", "CalibrationInfo", "LayerFit"),
    "_calibration_fit": ("DEFAULT_ALPHAS", "CalibrationStats", "heldout_mask"),
    "_chunking": ("Chunking", "chunk_spans"),
    "_compat": ("COMPAT_FORMAT", "CompatInfo", "CompatMaps", "CompatSpace", "CompatStats", "MapFit", "PairCheck"),
    "_config": (
        "BACKENDS",
        "MODEL_DTYPES",
        "POOLINGS",
        "Backend",
        "EncoderConfig",
        "ModelDtype",
        "Pooling",
        "PoolingName",
        "resolve_device",
        "resolve_dtype",
    ),
    "_encoder": ("ElasticEncoder", "EncodeResult", "EncodeStats"),
    "_errors": (
        "CalibrationError",
        "CompatMapError",
        "EmbedderError",
        "EncoderConfigError",
        "GranularityError",
        "InvalidTextError",
        "ModelError",
        "UnsupportedModelError",
    ),
    "_granularity": ("STARBUCKS", "Granularity", "parse_granularities", "resolve_granularities"),
    "_hub": ("BUNDLED_MODELS", "LocalModel", "hub_cache_dir", "local_models", "resolve_model"),
    "_int8": ("int8_missing",),
    "_loading": ("find_blocks", "read_model_dir", "weight_files", "weights_fingerprint"),
    "_quality": (
        "agreement",
        "compat_recall",
        "neighbours",
        "pair_correlation",
        "recall_at_k",
        "recommend",
        "retrieval_recall",
        "spearman",
    ),
    "_text": (
        "EMPTY_TEXT",
        "NOT_A_STRING",
        "NULL_TEXT",
        "UNDECODABLE_TEXT",
        "WHITESPACE_ONLY_TEXT",
        "check_texts",
        "decode_text",
        "embeddable_text",
        "find_invalid_texts",
        "text_problem",
    ),
    "_tokenizer": ("TextTokenizer", "cached_tokenizer", "tokenized_from_flat"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
