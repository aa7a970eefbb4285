"""Compatibility maps between two embedding spaces: the settings a table's vectors were made with ("old") and
the settings it migrates to ("new").

While a table migrates, its migrated rows carry both vectors. Fitted on a sample of them, an affine ridge map per
granularity pair takes a new-model vector into an old column's space (``to_old``) and back (``to_new``), so a
query embedded with the new model alone can search the rows that have only old vectors: the old model can be
retired before the migration ends.

Fitting works like a calibration's (:mod:`._calibration_fit`): each shard of the sample adds its rows to a
:class:`CompatStats` (float64 sums of ``[old vectors, new vectors, 1]``'s outer products, kept apart for the
fitting rows and the held-out rows); shards add up (``a + b``, ``sum(shards)``) to exactly what one pass gives;
one :meth:`CompatStats.solve` picks each map's ridge strength on the held-out rows and refits on all rows
(:mod:`._ridge`, the same solve as the calibration's). :meth:`CompatMaps.checked` then measures the maps on
held-out rows' vectors: how close a mapped vector lands to the row's own vector, and the two spaces' score
scales that put a mapped query's cosines on the new column's scale (:meth:`CompatMaps.scores_to_new`).

Saved as one safetensors file (the maps, with the JSON metadata in its header), content-addressed by
:attr:`CompatMaps.fingerprint`; ``storage`` keeps it next to the table.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._calibration import _atomic_write, _header_metadata
from ._errors import CompatMapError
from ._granularity import Granularity
from ._ridge import (
    DEFAULT_ALPHAS,
    Penalty,
    RidgeMoments,
    SplitCounts,
)

__all__ = ["COMPAT_FORMAT", "CompatInfo", "CompatMaps", "CompatSpace", "CompatStats", "MapFit", "PairCheck"]

#: Written into every file; bumped when the layout changes.
COMPAT_FORMAT = "embedjob-compat/1"
_META_KEY = "embedjob_compat"

Direction = Literal["to_old", "to_new"]
GranularityLike = str | Granularity


def _grans(values: Iterable[GranularityLike]) -> tuple[Granularity, ...]:
    return tuple(sorted({Granularity.parse(v) for v in values}))


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.clip(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12, None)


# --------------------------------------------------------------------------- what a map is fitted between


@dataclass(frozen=True, kw_only=True)
class CompatSpace:
    """One side of a map: what made its vectors. JSON-able; ``settings`` fingerprints every setting that makes
    vectors comparable (storage: ``Provenance.settings_fingerprint``), the rest is there for people."""

    settings: str
    weights_fingerprint: str
    calibration: str | None = None
    model_path: str = ""
    normalize: bool = True
    granularities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "granularities", tuple(str(g) for g in self.granularities))


@dataclass(frozen=True, kw_only=True)
class MapFit:
    """How one direction of one pair was fitted: the ridge strength chosen on the held-out rows and how the
    fitting rows' map did on them."""

    direction: Direction
    source: str  # the granularity mapped from (a new one for "to_old")
    target: str
    alpha: float
    ridge: float
    heldout_r2: float  # share of the target's held-out variance the map explains
    heldout_rmse: float  # root of the mean squared error per held-out row (targets are unit vectors: 0..2)
    identity_r2: float | None = None  # the same R^2 for no map at all (source == target dims), for comparison


@dataclass(frozen=True, kw_only=True)
class PairCheck:
    """One pair measured on held-out rows' vectors (:meth:`CompatMaps.checked`).

    ``*_cosine``: mean cosine between a row's mapped vector and its own vector in the target column;
    ``*_top1``: share of rows whose own target vector is the nearest to their mapped vector among the checked
    rows. ``old_score_*`` / ``new_score_*``: mean and spread of the cosine between one row's mapped new vector and
    another row's old vector, and between the two rows' new vectors: the two scales a merged search equates.
    """

    old: str
    new: str
    rows: int
    to_old_cosine: float
    to_old_top1: float
    to_new_cosine: float
    to_new_top1: float
    old_score_mean: float
    old_score_std: float
    new_score_mean: float
    new_score_std: float


@dataclass(frozen=True, kw_only=True)
class CompatInfo:
    """What the maps were fitted between and from. JSON-able; stored in the file's header."""

    old: CompatSpace
    new: CompatSpace
    rows: int
    heldout_rows: int
    source: str = ""
    seed: int | None = None
    fits: tuple[MapFit, ...] = ()
    checks: tuple[PairCheck, ...] = ()
    created_at: str = ""
    format: str = COMPAT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompatInfo:
        data = dict(data)
        known = set(cls.__dataclass_fields__)
        return cls(
            **{k: v for k, v in data.items() if k in known and k not in ("old", "new", "fits", "checks")},
            old=CompatSpace(**data["old"]),
            new=CompatSpace(**data["new"]),
            fits=tuple(MapFit(**f) for f in data.get("fits", ())),
            checks=tuple(PairCheck(**c) for c in data.get("checks", ())),
        )


# --------------------------------------------------------------------------- summed statistics


@dataclass(eq=False)
class CompatStats(SplitCounts):
    """Summed second moments of rows that have both an old and a new vector, split [fit, held-out].

    ``gram[part]`` is ``z' z`` for ``z = [old vectors (in ``old`` order), new vectors (in ``new`` order), 1]``;
    every pair's moments are blocks of it.
    """

    old: tuple[Granularity, ...]
    new: tuple[Granularity, ...]
    count: np.ndarray
    gram: np.ndarray

    @classmethod
    def empty(cls, *, old: Iterable[GranularityLike], new: Iterable[GranularityLike]) -> CompatStats:
        o, n = _grans(old), _grans(new)
        if not o or not n:
            raise CompatMapError(f"a compatibility map needs old and new granularities; got old {o}, new {n}")
        size = sum(g.dim for g in (*o, *n)) + 1
        return cls(old=o, new=n, count=np.zeros(2, dtype=np.int64), gram=np.zeros((2, size, size)))

    def _blocks(self) -> dict[tuple[str, Granularity], np.ndarray]:
        out, start = {}, 0
        for side, grans in (("old", self.old), ("new", self.new)):
            for g in grans:
                out[(side, g)] = np.arange(start, start + g.dim)
                start += g.dim
        return out

    def add(
        self,
        old: Mapping[GranularityLike, np.ndarray],
        new: Mapping[GranularityLike, np.ndarray],
        heldout: np.ndarray | Sequence[bool] | None = None,
    ) -> None:
        """Add rows: ``old[g]`` / ``new[g]`` (n, dim) vectors of the same n rows; ``heldout`` (n,) marks the rows
        that go to the held-out part."""
        sides = {
            "old": {Granularity.parse(k): v for k, v in old.items()},
            "new": {Granularity.parse(k): v for k, v in new.items()},
        }
        parts, n = [], None
        for side, grans in (("old", self.old), ("new", self.new)):
            for g in grans:
                if g not in sides[side]:
                    raise CompatMapError(
                        f"no {side} vectors for {g}; the stats collect {side} {[str(x) for x in grans]}"
                    )
                v = np.asarray(sides[side][g], dtype=np.float64)
                n = v.shape[0] if n is None else n
                if v.shape != (n, g.dim):
                    raise CompatMapError(f"{side} {g} vectors have shape {v.shape}; expected ({n}, {g.dim})")
                parts.append(v)
        mask = np.zeros(n, dtype=bool) if heldout is None else np.asarray(heldout, dtype=bool)
        if mask.shape != (n,):
            raise CompatMapError(f"held-out mask has shape {mask.shape}; expected ({n},)")
        z = np.hstack([*parts, np.ones((n, 1))])
        for part, rows in ((0, ~mask), (1, mask)):
            if rows.any():
                zr = z[rows]
                self.count[part] += zr.shape[0]
                self.gram[part] += zr.T @ zr

    def __add__(self, other: CompatStats) -> CompatStats:
        if not isinstance(other, CompatStats):
            return NotImplemented
        if (self.old, self.new) != (other.old, other.new):
            raise CompatMapError(
                f"cannot add statistics of old {[str(g) for g in other.old]} / new {[str(g) for g in other.new]} "
                f"to ones of old {[str(g) for g in self.old]} / new {[str(g) for g in self.new]}"
            )
        return CompatStats(old=self.old, new=self.new, count=self.count + other.count, gram=self.gram + other.gram)

    def __radd__(self, other: Any) -> CompatStats:
        if other == 0:  # sum(shards) starts from 0
            return self
        return NotImplemented

    def to_bytes(self) -> bytes:
        """safetensors bytes, for shipping from a worker to the driver."""
        from safetensors.numpy import save

        meta = {"old": [str(g) for g in self.old], "new": [str(g) for g in self.new]}
        return save({"count": self.count, "gram": self.gram}, metadata={"stats": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> CompatStats:
        from safetensors.numpy import load

        meta = _header_metadata(
            data, "compatibility statistics", key="stats", what="compatibility map", error=CompatMapError
        )
        t = load(data)
        return cls(old=_grans(meta["old"]), new=_grans(meta["new"]), count=t["count"], gram=t["gram"])

    # ----------------------------------------------------------- solving
    def moments(self, direction: Direction, source: Granularity, target: Granularity) -> RidgeMoments:
        """The ridge moments of one map: ``to_old`` from new ``source`` to old ``target``, ``to_new`` back."""
        blocks = self._blocks()
        src_side, dst_side = ("new", "old") if direction == "to_old" else ("old", "new")
        bias = self.gram.shape[-1] - 1
        ix = np.append(blocks[(src_side, source)], bias)
        iy = blocks[(dst_side, target)]
        return RidgeMoments(
            xx=self.gram[:, ix][:, :, ix],
            xy=self.gram[:, ix][:, :, iy],
            y_sum=self.gram[:, bias, iy],
            yy_held=self.gram[1][np.ix_(iy, iy)],
            count=(self.fit_rows, self.heldout_rows),
        )

    def solve(
        self,
        *,
        old_space: CompatSpace,
        new_space: CompatSpace,
        source: str = "",
        seed: int | None = None,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        penalty: Penalty = "standardized",
    ) -> CompatMaps:
        """Every (old, new) pair's two maps, each with the ridge strength of least held-out error, refitted on
        all rows."""
        problem = self.solve_problem("a compatibility map", "migrate or sample more rows", alphas)
        if problem:
            raise CompatMapError(problem)
        to_old: dict[tuple[Granularity, Granularity], np.ndarray] = {}
        to_new: dict[tuple[Granularity, Granularity], np.ndarray] = {}
        fits = []
        for o in self.old:
            for n in self.new:
                for direction, src, dst, out in (("to_old", n, o, to_old), ("to_new", o, n, to_new)):
                    w, fit = self._fit_map(direction, src, dst, alphas, penalty)
                    out[(src, dst)] = w
                    fits.append(fit)
        info = CompatInfo(
            old=old_space,
            new=new_space,
            rows=self.rows,
            heldout_rows=self.heldout_rows,
            source=source,
            seed=seed,
            fits=tuple(fits),
            created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        )
        return CompatMaps(to_old=to_old, to_new=to_new, info=info)

    def _fit_map(
        self, direction: Direction, src: Granularity, dst: Granularity, alphas: Sequence[float], penalty: Penalty
    ) -> tuple[np.ndarray, MapFit]:
        moments = self.moments(direction, src, dst)
        fit = moments.fit(alphas, penalty)
        if fit is None:
            raise CompatMapError(
                f"{direction} {src} -> {dst}: every ridge strength gave a singular system; sample more rows"
            )
        identity = None
        if src.dim == dst.dim:
            identity = round(moments.r2(np.vstack([np.eye(src.dim), np.zeros((1, src.dim))])), 6)
        err = max(moments.heldout_error(fit.fit_weights), 0.0)
        return fit.weights, MapFit(
            direction=direction,
            source=str(src),
            target=str(dst),
            alpha=fit.alpha,
            ridge=fit.ridge,
            heldout_r2=round(moments.r2(fit.fit_weights), 6),
            heldout_rmse=round(float(np.sqrt(err / self.heldout_rows)), 6),
            identity_r2=identity,
        )


# --------------------------------------------------------------------------- the fitted maps


@dataclass(frozen=True, eq=False)
class CompatMaps:
    """Affine maps between the old and the new space of one migration, one per (old, new) granularity pair and
    direction: ``to_old[(new_g, old_g)]`` is (new dim + 1, old dim), ``[v, 1] @ W`` the old-space estimate of the
    new vector ``v``; ``to_new[(old_g, new_g)]`` the other way.

    >>> maps = CompatMaps.load("out/t_compat/8c1e.safetensors")             # doctest: +SKIP
    >>> maps.to_old_space(new_query_vectors, new="l6_d256", old="l6_d384")  # doctest: +SKIP
    """

    to_old: Mapping[tuple[Granularity, Granularity], np.ndarray]
    to_new: Mapping[tuple[Granularity, Granularity], np.ndarray]
    info: CompatInfo
    _fingerprint: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        for name in ("to_old", "to_new"):
            maps = {}
            for (src, dst), w in getattr(self, name).items():
                src, dst = Granularity.parse(src), Granularity.parse(dst)
                w = np.ascontiguousarray(w, dtype=np.float32)
                if w.shape != (src.dim + 1, dst.dim):
                    raise CompatMapError(
                        f"{name} map {src} -> {dst} has shape {w.shape}; expected ({src.dim + 1}, {dst.dim})"
                    )
                maps[(src, dst)] = w
            object.__setattr__(self, name, dict(sorted(maps.items())))
        object.__setattr__(self, "_fingerprint", self._digest())

    # ------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the maps, the two spaces' settings and the score scales."""
        return self._fingerprint

    def _digest(self) -> str:
        d = hashlib.sha256()
        d.update(f"{COMPAT_FORMAT}|{self.info.old.settings}|{self.info.new.settings}".encode())
        for name in ("to_old", "to_new"):
            for (src, dst), w in getattr(self, name).items():
                d.update(f"{name}|{src}|{dst}".encode())
                d.update(w.tobytes())
        d.update(json.dumps([asdict(c) for c in self.info.checks], sort_keys=True).encode())
        return d.hexdigest()[:16]

    @property
    def pairs(self) -> tuple[tuple[Granularity, Granularity], ...]:
        """The (old, new) granularity pairs that have maps both ways."""
        return tuple(sorted((o, n) for n, o in self.to_old if (o, n) in self.to_new))

    @property
    def old_granularities(self) -> tuple[Granularity, ...]:
        return _grans(o for o, _ in self.pairs)

    @property
    def new_granularities(self) -> tuple[Granularity, ...]:
        return _grans(n for _, n in self.pairs)

    def __repr__(self) -> str:
        i = self.info
        pairs = ", ".join(f"{n}->{o}" for o, n in self.pairs)
        return f"CompatMaps({self.fingerprint}, {pairs}, {i.rows:,} rows, {i.heldout_rows:,} held out)"

    def fit(self, direction: Direction, source: GranularityLike, target: GranularityLike) -> MapFit:
        """How the ``direction`` map from ``source`` to ``target`` was fitted."""
        src, dst = str(Granularity.parse(source)), str(Granularity.parse(target))
        for f in self.info.fits:
            if (f.direction, f.source, f.target) == (direction, src, dst):
                return f
        raise CompatMapError(f"no {direction} map from {src} to {dst}; the maps have pairs {self._pair_names()}")

    def check(self, old: GranularityLike, new: GranularityLike) -> PairCheck | None:
        """The pair's held-out measurements; None before :meth:`checked`."""
        o, n = str(Granularity.parse(old)), str(Granularity.parse(new))
        return next((c for c in self.info.checks if (c.old, c.new) == (o, n)), None)

    def describe(self) -> dict[str, Any]:
        """The metadata, plus the fingerprint."""
        return {**self.info.to_dict(), "fingerprint": self.fingerprint}

    def _pair_names(self) -> str:
        return ", ".join(f"(old {o}, new {n})" for o, n in self.pairs) or "none"

    # ------------------------------------------------------------ applying
    def _weights(self, direction: Direction, src: GranularityLike, dst: GranularityLike) -> np.ndarray:
        key = (Granularity.parse(src), Granularity.parse(dst))
        maps = self.to_old if direction == "to_old" else self.to_new
        if key not in maps:
            old, new = (key[1], key[0]) if direction == "to_old" else key
            raise CompatMapError(
                f"no compatibility map for old {old} and new {new}; the maps have pairs {self._pair_names()} "
                f"(fit one for it: embedjob migrate fit-map TABLE --old {old})"
            )
        return maps[key]

    def _apply(
        self, direction: Direction, vectors: np.ndarray, src: GranularityLike, dst: GranularityLike
    ) -> np.ndarray:
        w = self._weights(direction, src, dst)
        v = np.asarray(vectors, dtype=np.float32)
        if v.shape[-1] != w.shape[0] - 1:
            raise CompatMapError(
                f"vectors of width {v.shape[-1]} cannot go through the {src} -> {dst} map (width {w.shape[0] - 1})"
            )
        out = v @ w[:-1] + w[-1]
        target = self.info.old if direction == "to_old" else self.info.new
        return _unit(out) if target.normalize else out

    def to_old_space(self, vectors: np.ndarray, *, new: GranularityLike, old: GranularityLike) -> np.ndarray:
        """New-space vectors at ``new`` -> estimates of their ``old`` column's vectors (re-normalized when the old
        space is); one vector (dim,) or rows (n, dim)."""
        return self._apply("to_old", vectors, new, old)

    def to_new_space(self, vectors: np.ndarray, *, old: GranularityLike, new: GranularityLike) -> np.ndarray:
        """Old-space vectors at ``old`` -> estimates of their ``new`` column's vectors."""
        return self._apply("to_new", vectors, old, new)

    def scores_to_new(self, scores: Any, *, old: GranularityLike, new: GranularityLike) -> np.ndarray:
        """Cosines of a mapped new-model query (:meth:`to_old_space`) against ``old`` vectors, put on the scale
        of the ``new`` column's cosines, so that the two can be ranked together.

        Linear equating: the mean and spread of the cosines between one held-out row's mapped vector and other
        rows' old vectors are matched to those between the rows' new vectors (:meth:`checked` measured both).
        A map without those measurements leaves the cosines as they are.
        """
        s = np.asarray(scores, dtype=np.float32)
        c = self.check(old, new)
        if c is None or c.old_score_std <= 0:
            return s
        return (c.new_score_mean + (s - c.old_score_mean) * (c.new_score_std / c.old_score_std)).astype(np.float32)

    # ------------------------------------------------------------ measuring
    def checked(
        self, old: Mapping[GranularityLike, np.ndarray], new: Mapping[GranularityLike, np.ndarray]
    ) -> CompatMaps:
        """These maps with :class:`PairCheck` measurements of every pair, on held-out rows' vectors (the same
        rows in ``old`` and ``new``; rows the maps were not fitted on, and a few hundred to a few thousand)."""
        old_v = {Granularity.parse(k): _unit(v) for k, v in old.items()}
        new_v = {Granularity.parse(k): _unit(v) for k, v in new.items()}
        checks = []
        for o, n in self.pairs:
            if o not in old_v or n not in new_v:
                raise CompatMapError(f"checking pair (old {o}, new {n}) needs old {o} and new {n} vectors")
            checks.append(self._check_pair(o, n, old_v[o], new_v[n]))
        return replace(self, info=replace(self.info, checks=tuple(checks)))

    def _check_pair(self, o: Granularity, n: Granularity, ov: np.ndarray, nv: np.ndarray) -> PairCheck:
        rows = len(ov)
        if rows < 2 or len(nv) != rows:
            raise CompatMapError(
                f"checking pair (old {o}, new {n}) needs the same >= 2 rows on both sides; got {rows} and {len(nv)}"
            )
        mapped_old = _unit(self.to_old_space(nv, new=n, old=o))
        mapped_new = _unit(self.to_new_space(ov, old=o, new=n))
        cross_old, cross_new, same_new = mapped_old @ ov.T, mapped_new @ nv.T, nv @ nv.T
        off = ~np.eye(rows, dtype=bool)
        idx = np.arange(rows)
        return PairCheck(
            old=str(o),
            new=str(n),
            rows=rows,
            to_old_cosine=round(float(np.mean(np.diag(cross_old))), 6),
            to_old_top1=round(float(np.mean(np.argmax(cross_old, axis=1) == idx)), 6),
            to_new_cosine=round(float(np.mean(np.diag(cross_new))), 6),
            to_new_top1=round(float(np.mean(np.argmax(cross_new, axis=1) == idx)), 6),
            old_score_mean=round(float(cross_old[off].mean()), 6),
            old_score_std=round(float(cross_old[off].std()), 6),
            new_score_mean=round(float(same_new[off].mean()), 6),
            new_score_std=round(float(same_new[off].std()), 6),
        )

    # ------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        """The safetensors serialization (metadata JSON in the header under ``embedjob_compat``)."""
        from safetensors.numpy import save

        tensors = {f"to_old.{s}.{d}": w for (s, d), w in self.to_old.items()}
        tensors.update({f"to_new.{s}.{d}": w for (s, d), w in self.to_new.items()})
        return save(tensors, metadata={_META_KEY: json.dumps(self.describe(), sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "compatibility map") -> CompatMaps:
        from safetensors.numpy import load

        meta = _header_metadata(data, source, _META_KEY, what="compatibility map", error=CompatMapError)
        if meta.get("format") != COMPAT_FORMAT:
            raise CompatMapError(
                f"{source}: compatibility map format {meta.get('format')!r} is not supported; this embedjob reads "
                f"{COMPAT_FORMAT}"
            )
        try:
            tensors = load(data)
        except Exception as exc:  # safetensors raises its own error type for malformed bytes
            raise CompatMapError(f"{source}: not a readable safetensors file: {exc}") from None
        maps: dict[str, dict] = {"to_old": {}, "to_new": {}}
        for key, w in tensors.items():
            name, src, dst = key.split(".")
            maps[name][(src, dst)] = w
        out = cls(to_old=maps["to_old"], to_new=maps["to_new"], info=CompatInfo.from_dict(meta))
        stored = meta.get("fingerprint")
        if stored and stored != out.fingerprint:
            raise CompatMapError(
                f"{source}: its maps hash to {out.fingerprint} but the header says {stored}; the file is damaged"
            )
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (``.safetensors`` added when missing) and a readable ``.json`` beside it, atomically."""
        target = Path(path)
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, self.to_bytes())
        _atomic_write(target.with_suffix(".json"), (json.dumps(self.describe(), indent=2) + "\n").encode())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompatMaps:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise CompatMapError(f"compatibility map file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise CompatMapError(f"cannot read compatibility map file {str(path)!r}: {exc}") from None
        return cls.from_bytes(data, source=str(path))
