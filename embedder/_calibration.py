"""A fitted calibration: the Matryoshka rotation and the per-exit linear maps.

Most encoders were never trained to be elastic. Two training-free fixes make
them so (fitted by :mod:`._calibration_fit`):

- **Rotation (width axis).** The principal axes of the normalized full-depth
  embeddings, largest variance first. Rotating by them is orthogonal (cosine at
  full width is unchanged), and prefixes of the rotated vector keep the most
  variance, so cutting to ``dim`` loses the least.
- **Per-exit maps (depth axis).** For each exit layer ``k``, a ridge regression
  from the pooled layer-``k`` state (plus bias) to the rotated full-depth
  embedding. The vector for ``(k, d)`` is the first ``d`` values of the mapped
  state, re-normalized.

At full depth and full width the vector is left exactly as the model gives it:
a rotation there would change coordinates but no cosine.

A calibration is saved as one safetensors file (tensors, with the JSON
metadata in its header) plus a readable ``.json`` copy of the metadata beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import CalibrationError

__all__ = ["FORMAT", "Calibration", "CalibrationInfo", "LayerFit"]

#: Written into every file; bumped when the layout changes.
FORMAT = "embedjob-calibration/1"
_META_KEY = "embedjob_calibration"


@dataclass(frozen=True, kw_only=True)
class LayerFit:
    """How one exit layer's map was fitted: the ridge strength chosen on the held-out slice and how well it did."""

    layer: int
    alpha: float  # relative ridge strength (lambda / mean per-feature second moment / rows)
    ridge: float  # the lambda of the final solve
    heldout_r2: float  # share of the rotated target's held-out variance the map explains
    heldout_r2_d64: float  # the same over the first 64 rotated dims (what short prefixes see)


@dataclass(frozen=True, kw_only=True)
class CalibrationInfo:
    """What a calibration was fitted for and from. JSON-able; stored in the file's header."""

    model_fingerprint: str
    model_path: str
    num_layers: int
    hidden_size: int
    pooling: str
    max_length: int
    sample_size: int
    heldout_size: int
    corpus: str = ""
    seed: int | None = None
    centered: bool = True
    fits: tuple[LayerFit, ...] = ()
    created_at: str = ""
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fits"] = [asdict(f) for f in self.fits]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationInfo:
        data = dict(data)
        fits = tuple(LayerFit(**f) for f in data.pop("fits", ()))
        known = set(cls.__dataclass_fields__)
        return cls(fits=fits, **{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, eq=False)
class Calibration:
    """Rotation and per-exit maps for one model; apply with ``ElasticEncoder(..., calibration=...)``.

    >>> cal = Calibration.load("tables/articles_calibration/3f2a.safetensors")   # doctest: +SKIP
    >>> enc = ElasticEncoder.from_pretrained(path, ["l2_d64", "l6_d384"], calibration=cal)  # doctest: +SKIP

    ``rotation`` is (H, H), column ``j`` the ``j``-th principal axis (largest
    variance first); ``maps[k]`` is (H + 1, H): ``[state_k, 1] @ maps[k]`` is
    layer ``k``'s estimate of the rotated full-depth embedding.
    ``variance`` holds the variance along each axis, descending.
    """

    rotation: np.ndarray
    maps: Mapping[int, np.ndarray]
    variance: np.ndarray
    info: CalibrationInfo
    _fingerprint: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        h = self.info.hidden_size
        rot = np.ascontiguousarray(self.rotation, dtype=np.float32)
        if rot.shape != (h, h):
            raise CalibrationError(f"calibration rotation has shape {rot.shape}; expected ({h}, {h})")
        maps: dict[int, np.ndarray] = {}
        for layer, w in sorted(self.maps.items()):
            layer = int(layer)
            if not 1 <= layer < self.info.num_layers:
                raise CalibrationError(
                    f"calibration has a map for layer {layer}; maps exist for layers 1..{self.info.num_layers - 1}"
                )
            w = np.ascontiguousarray(w, dtype=np.float32)
            if w.shape != (h + 1, h):
                raise CalibrationError(
                    f"calibration map for layer {layer} has shape {w.shape}; expected ({h + 1}, {h})"
                )
            maps[layer] = w
        object.__setattr__(self, "rotation", rot)
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "variance", np.asarray(self.variance, dtype=np.float64))
        object.__setattr__(self, "_fingerprint", self._digest())

    # ------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the tensors and the model settings they were fitted for."""
        return self._fingerprint

    def _digest(self) -> str:
        d = hashlib.sha256()
        i = self.info
        d.update(f"{FORMAT}|{i.model_fingerprint}|{i.pooling}|{i.max_length}|{i.hidden_size}".encode())
        d.update(self.rotation.tobytes())
        for layer, w in self.maps.items():
            d.update(str(layer).encode())
            d.update(w.tobytes())
        return d.hexdigest()[:16]

    @property
    def layers(self) -> tuple[int, ...]:
        """Exit layers that have a map (full depth needs none)."""
        return tuple(self.maps)

    def serves(self, layer: int) -> bool:
        return layer == self.info.num_layers or layer in self.maps

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Calibration({self.fingerprint}, model {i.model_fingerprint}, layers {list(self.layers)} -> "
            f"{i.num_layers}, hidden {i.hidden_size}, sample {i.sample_size:,} rows)"
        )

    def describe(self) -> dict[str, Any]:
        """The metadata, plus the fingerprint and the share of variance the first dims keep."""
        out = self.info.to_dict()
        out["fingerprint"] = self.fingerprint
        total = float(self.variance.sum()) or 1.0
        cum = np.cumsum(self.variance) / total
        h = self.info.hidden_size
        out["variance_kept"] = {str(d): round(float(cum[d - 1]), 4) for d in (16, 32, 64, 128, 256, 512, 768) if d < h}
        return out

    # ------------------------------------------------------------ checking
    def check_compatible(
        self,
        *,
        model_fingerprint: str,
        num_layers: int,
        hidden_size: int,
        pooling: str,
        layers: tuple[int, ...] = (),
        model_name: str = "the model",
    ) -> None:
        """Raise :class:`CalibrationError` naming what differs when this calibration can't serve the model."""
        i = self.info
        problems = []
        if i.model_fingerprint != model_fingerprint:
            problems.append(f"it was fitted for weights {i.model_fingerprint}, {model_name} has {model_fingerprint}")
        if (i.num_layers, i.hidden_size) != (num_layers, hidden_size):
            problems.append(
                f"it was fitted for {i.num_layers} layers x {i.hidden_size} dims, "
                f"{model_name} has {num_layers} x {hidden_size}"
            )
        if i.pooling != str(pooling):
            problems.append(f"it was fitted with {i.pooling} pooling, the encoder uses {pooling}")
        missing = [k for k in layers if not self.serves(k)]
        if missing:
            problems.append(
                f"it has no map for layer(s) {', '.join(map(str, missing))}; it has maps for layers "
                f"{', '.join(map(str, self.layers)) or 'none'} (and full depth {i.num_layers}); "
                f"fit one that covers them (embedjob calibrate --layers ...)"
            )
        if problems:
            raise CalibrationError(f"calibration {self.fingerprint} does not fit: {'; '.join(problems)}")

    # ------------------------------------------------------------ applying
    def project(self, layer: int, states: np.ndarray, dim: int | None = None) -> np.ndarray:
        """Reference (numpy) application: layer ``layer``'s pooled states -> the first ``dim`` calibrated values.

        Not normalized. The encoder does the same on the model's device; full
        depth at full width returns ``states`` unchanged.
        """
        h = self.info.hidden_size
        dim = h if dim is None else dim
        states = np.asarray(states, dtype=np.float32)
        if layer == self.info.num_layers:
            return states.copy() if dim == h else states @ self.rotation[:, :dim]
        if layer not in self.maps:
            raise CalibrationError(f"calibration {self.fingerprint} has no map for layer {layer}")
        w = self.maps[layer]
        return states @ w[:h, :dim] + w[h, :dim]

    # ------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        """The safetensors serialization (metadata JSON in the header under ``embedjob_calibration``)."""
        from safetensors.numpy import save

        tensors = {"rotation": self.rotation, "variance": self.variance}
        tensors.update({f"map.{layer}": w for layer, w in self.maps.items()})
        meta = self.info.to_dict()
        meta["fingerprint"] = self.fingerprint
        return save(tensors, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "calibration") -> Calibration:
        from safetensors.numpy import load

        meta = _header_metadata(data, source)
        try:
            tensors = load(data)
        except Exception as exc:  # safetensors raises its own error type for malformed bytes
            raise CalibrationError(f"{source}: not a readable safetensors file: {exc}") from None
        fmt = meta.get("format")
        if fmt != FORMAT:
            raise CalibrationError(
                f"{source}: calibration format {fmt!r} is not supported; this embedjob reads {FORMAT}"
            )
        for name in ("rotation", "variance"):
            if name not in tensors:
                raise CalibrationError(f"{source}: the file has no {name!r} tensor")
        maps = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("map.")}
        cal = cls(
            rotation=tensors["rotation"],
            maps=maps,
            variance=tensors["variance"],
            info=CalibrationInfo.from_dict(meta),
        )
        stored = meta.get("fingerprint")
        if stored and stored != cal.fingerprint:
            raise CalibrationError(
                f"{source}: its tensors hash to {cal.fingerprint} but the header says {stored}; the file is damaged"
            )
        return cal

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (``.safetensors`` is added when missing) and a readable ``.json`` beside it.

        Written to a temporary file and renamed, so a reader never sees half a file.
        """
        target = Path(path)
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, self.to_bytes())
        _atomic_write(target.with_suffix(".json"), (json.dumps(self.describe(), indent=2) + "\n").encode())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        target = Path(path)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise CalibrationError(f"calibration file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise CalibrationError(f"cannot read calibration file {str(path)!r}: {exc}") from None
        return cls.from_bytes(data, source=str(path))


def _header_metadata(
    data: bytes,
    source: str,
    key: str = _META_KEY,
    *,
    what: str = "calibration",
    error: type[Exception] = CalibrationError,
) -> dict[str, Any]:
    """The JSON stored under ``key`` in a safetensors header's metadata (8-byte little-endian length, then JSON);
    ``error`` naming ``source`` when the bytes are no embedjob ``what``."""
    if len(data) < 8:
        raise error(f"{source}: not a safetensors file ({len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise error(f"{source}: not a safetensors file (header length {size} exceeds the file)")
    try:
        header = json.loads(data[8 : 8 + size])
        return json.loads(header["__metadata__"][key])
    except (ValueError, KeyError, TypeError):
        raise error(f"{source}: a safetensors file, but not an embedjob {what}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
