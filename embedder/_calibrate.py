"""Fitting a calibration in-process, with an encoder that runs to full depth.

The encoder pools each chunk of the sample into :class:`CalibrationStats`
(:meth:`ElasticEncoder.add_calibration_rows`); one solve turns them into a
:class:`Calibration`. The job layer does the same through Ray actors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ._calibration import Calibration
from ._calibration_fit import heldout_mask
from ._encoder import ElasticEncoder

__all__ = ["fit_calibration"]


def fit_calibration(
    encoder: ElasticEncoder,
    texts: Sequence[str],
    *,
    layers: Iterable[int] | None = None,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    chunk_size: int = 1024,
    corpus: str = "",
    **solve_options: Any,
) -> Calibration:
    """Fit in-process on ``texts`` (the job layer does the same through Ray actors).

    ``encoder`` must run to full depth and pool ``layers`` (default: every
    layer below full depth); :meth:`ElasticEncoder.for_calibration` builds one.
    """
    stats = encoder.calibration_stats(layers)
    mask = heldout_mask(range(len(texts)), heldout_fraction, seed)
    for start in range(0, len(texts), chunk_size):
        stop = start + chunk_size
        encoder.add_calibration_rows(stats, texts[start:stop], mask[start:stop])
    return stats.solve(
        model_fingerprint=encoder.fingerprint,
        model_path=str(encoder.model_dir.root),
        pooling=encoder.pooling.value,
        max_length=encoder.max_length,
        corpus=corpus,
        seed=seed,
        **solve_options,
    )
