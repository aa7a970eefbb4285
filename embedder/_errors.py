"""Errors raised by the elastic encoder.

User errors (a bad granularity, a model dir that does not exist, texts that
cannot be embedded) subclass :class:`ValueError` as well as
:class:`EmbedderError`, so callers can catch either. Every error keeps its
fields and survives pickling, because it may cross a Ray actor boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CalibrationError",
    "CompatMapError",
    "EmbedderError",
    "EncoderConfigError",
    "GranularityError",
    "InvalidTextError",
    "ModelError",
    "UnsupportedModelError",
]


class EmbedderError(Exception):
    """Base class of every error the embedder raises on purpose."""


class GranularityError(EmbedderError, ValueError):
    """A granularity that is malformed or that the model cannot serve."""


class EncoderConfigError(EmbedderError, ValueError):
    """An encoder setting (pooling, dtype, device, max_length, ...) that is not allowed."""


class CalibrationError(EmbedderError, ValueError):
    """A calibration that is malformed, too small to fit, or made for another model or layers."""


class CompatMapError(EmbedderError, ValueError):
    """A compatibility map that is malformed, too small to fit, or made for other settings or granularities."""


class ModelError(EmbedderError, ValueError):
    """A model directory that is missing or cannot be loaded."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"model {self.path!r}: {reason}")

    def __reduce__(self):  # keep fields across pickling (Ray actors)
        return (type(self), (self.path, self.reason))


class UnsupportedModelError(ModelError):
    """A model whose architecture or sentence-transformers modules we can't run."""


class InvalidTextError(EmbedderError, ValueError):
    """Some inputs are not embeddable text; ``positions`` and ``reasons`` say which and why."""

    _SHOWN = 10

    def __init__(self, positions: Sequence[int], reasons: Sequence[str], total: int) -> None:
        self.positions = [int(p) for p in positions]
        self.reasons = [str(r) for r in reasons]
        self.total = int(total)
        shown = "; ".join(
            f"position {p}: {r}" for p, r in zip(self.positions[: self._SHOWN], self.reasons, strict=False)
        )
        more = len(self.positions) - self._SHOWN
        tail = f"; and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(self.positions)} of {self.total} inputs are not embeddable text "
            f"(each must be a non-empty, non-whitespace str): {shown}{tail}"
        )

    def __reduce__(self):
        return (type(self), (self.positions, self.reasons, self.total))
