"""Granularities: a (layer, dim) pair naming one vector the encoder emits.

Layers are 1-based transformer blocks: layer k is the hidden state after block
k (Hugging Face ``hidden_states[k]``). ``dim`` is the Matryoshka prefix length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._errors import GranularityError

__all__ = ["STARBUCKS", "Granularity", "GranularitySpec", "parse_granularities", "resolve_granularities"]

_PATTERN = re.compile(r"^(?:vec_)?l(\d+)_d(\d+)$", re.IGNORECASE)

#: The fixed (layer, dim) pairs Starbucks trains (arXiv 2410.13230).
STARBUCKS: tuple[tuple[int, int], ...] = ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768))

PRESETS: dict[str, tuple[tuple[int, int], ...]] = {"starbucks": STARBUCKS}


@dataclass(frozen=True, order=True)
class Granularity:
    """One (layer, dim) pair. ``str(Granularity(6, 128)) == "l6_d128"``.

    >>> Granularity.parse("l3_d64")
    Granularity(layer=3, dim=64)
    >>> Granularity.parse((6, 384)).column
    'vec_l6_d384'
    """

    layer: int
    dim: int

    def __post_init__(self) -> None:
        for name in ("layer", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise GranularityError(f"granularity {name} must be an int >= 1, got {value!r}")
            if value < 1:
                raise GranularityError(f"granularity {name} must be >= 1, got {value}")

    def __str__(self) -> str:
        return f"l{self.layer}_d{self.dim}"

    @property
    def column(self) -> str:
        """The output table's column for this granularity, e.g. ``vec_l6_d128``."""
        return f"vec_{self}"

    @classmethod
    def parse(cls, value: Any) -> Granularity:
        """Build from ``"l6_d128"`` (or the column name ``"vec_l6_d128"``), ``(6, 128)`` or a Granularity."""
        if isinstance(value, Granularity):
            return value
        if isinstance(value, str):
            match = _PATTERN.match(value.strip())
            if not match:
                raise GranularityError(f"granularity {value!r} is not of the form 'l<layer>_d<dim>', e.g. 'l6_d128'")
            return cls(int(match.group(1)), int(match.group(2)))
        if isinstance(value, (tuple, list)) and len(value) == 2:
            layer, dim = value
            return cls(layer, dim)
        raise GranularityError(f"granularity {value!r} must be a string like 'l6_d128' or a (layer, dim) pair")


GranularitySpec = str | Iterable[str | tuple[int, int] | list[int] | Granularity]


def parse_granularities(spec: GranularitySpec) -> tuple[Granularity, ...]:
    """Parse a granularity spec into a sorted tuple with no duplicates.

    ``spec`` is a preset name (``"starbucks"``), a comma-separated string
    (``"l3_d64,l6_d384"``), or an iterable of strings, pairs or Granularity.
    A preset is returned unclipped; see :func:`resolve_granularities`.
    """
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in PRESETS:
            return tuple(Granularity(*pair) for pair in PRESETS[key])
        items: list[Any] = [part for part in spec.split(",") if part.strip()]
    elif isinstance(spec, Granularity):
        items = [spec]
    else:
        try:
            items = list(spec)
        except TypeError:
            raise GranularityError(
                f"granularities must be a preset name {sorted(PRESETS)}, a string like 'l6_d128' "
                f"or a list of them or of (layer, dim) pairs, got {spec!r}"
            ) from None
        if len(items) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            items = [tuple(items)]  # a single bare pair, e.g. (6, 128)
    grans = [Granularity.parse(item) for item in items]
    if not grans:
        raise GranularityError("at least one granularity is required, got none")
    seen: set[Granularity] = set()
    for g in grans:
        if g in seen:
            raise GranularityError(f"granularity {g} is listed twice")
        seen.add(g)
    return tuple(sorted(grans))


def resolve_granularities(
    spec: GranularitySpec, *, num_layers: int, hidden_size: int, model_name: str = "the model"
) -> tuple[Granularity, ...]:
    """Parse ``spec`` and check every granularity against the model's depth and width.

    A preset is clipped to the pairs the model can serve (an error if none
    fits); explicitly named granularities must all fit.
    """
    is_preset = isinstance(spec, str) and spec.strip().lower() in PRESETS
    grans = parse_granularities(spec)
    if is_preset:
        kept = tuple(g for g in grans if g.layer <= num_layers and g.dim <= hidden_size)
        if not kept:
            raise GranularityError(
                f"preset {spec!r} has no pair that {model_name} can serve "
                f"(it has layers 1..{num_layers} and dims 1..{hidden_size}; the preset is "
                f"{', '.join(str(g) for g in grans)})"
            )
        return kept
    for g in grans:
        if g.layer > num_layers:
            raise GranularityError(
                f"granularity {g}: layer {g.layer} is out of range; {model_name} has layers 1..{num_layers}"
            )
        if g.dim > hidden_size:
            raise GranularityError(
                f"granularity {g}: dim {g.dim} is out of range; {model_name} has dims 1..{hidden_size}"
            )
    return grans
