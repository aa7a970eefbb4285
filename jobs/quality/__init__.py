"""The quality map of a job's or a table's model config, and the human-rated sets it is scored against.

``evaluate_job`` / ``evaluate_table`` measure every (layer, dim) on a sample:
agreement with the full vector, encode cost per layer, and correlation with
human ratings (the built-in Lee set, a user's own pairs file); ``embedjob
evaluate`` and bench/ use the same names. ``migration_quality`` measures a
migration's compatibility map by retrieval on real text.
"""

from __future__ import annotations

from ._compat import halves, migration_quality
from ._human import (
    LEE_INSTALL_HINT,
    PairsFileError,
    ScoredPairs,
    gensim_data_dir,
    lee_scored,
    lee_set,
    read_pairs,
    read_text_lines,
)
from ._map import (
    DEFAULT_DIMS,
    DEFAULT_K,
    DEFAULT_SAMPLE,
    DEFAULT_TIMING,
    GRIDS,
    METRICS,
    QualityMap,
    QualityRow,
    evaluate,
    evaluate_job,
    evaluate_table,
    quality_grid,
    sample_job_texts,
    write_heatmap,
)

__all__ = [
    "DEFAULT_DIMS",
    "DEFAULT_K",
    "DEFAULT_SAMPLE",
    "DEFAULT_TIMING",
    "GRIDS",
    "LEE_INSTALL_HINT",
    "METRICS",
    "PairsFileError",
    "QualityMap",
    "QualityRow",
    "ScoredPairs",
    "evaluate",
    "evaluate_job",
    "evaluate_table",
    "gensim_data_dir",
    "halves",
    "lee_scored",
    "lee_set",
    "migration_quality",
    "quality_grid",
    "read_pairs",
    "read_text_lines",
    "sample_job_texts",
    "write_heatmap",
]
