"""Fitting a calibration from sufficient statistics.

Each shard of the sample (an actor's batch, a chunk of texts) adds its rows to
a :class:`CalibrationStats`: row counts, sums and Gram matrices in float64,
kept apart for the fitting part and the held-out part of the sample. Stats of
shards add up (``a + b``, or ``sum(shards)``) to exactly what one pass gives;
one :meth:`CalibrationStats.solve` on the driver turns the sum into a
:class:`Calibration`. The sample is never in memory at once.

The solve: the rotation is the eigenvectors of the target covariance (largest
first). Each exit layer's map is a ridge regression ``[x, 1] @ W ~ y @ R``,
solved from ``X'X`` and ``X'Y R`` by :mod:`._ridge` (the one ridge solve, shared
with the compatibility maps): the ridge strength is picked per layer from a
grid by the squared error on the held-out part (computable from its Gram
matrices alone), then the map is refitted on all rows with that strength.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ._calibration import Calibration, CalibrationInfo, LayerFit, _header_metadata
from ._errors import CalibrationError
from ._ridge import (
    DEFAULT_ALPHAS,
    Penalty,
    RidgeMoments,
    SplitCounts,
)

__all__ = ["DEFAULT_ALPHAS", "CalibrationStats", "heldout_mask"]


@dataclass(eq=False)
class CalibrationStats(SplitCounts):
    """Summed second-order statistics of a calibration sample, split [fit, held-out].

    ``input_gram[k]`` is ``[x, 1]' [x, 1]`` of layer ``k``'s pooled states,
    ``cross[k]`` is ``[x, 1]' y`` against the normalized full-depth vectors ``y``,
    ``target_gram`` is ``y' y``; each is stacked (2, ...): index 0 the fitting
    rows, 1 the held-out rows.
    """

    num_layers: int
    hidden_size: int
    layers: tuple[int, ...]
    count: np.ndarray
    target_sum: np.ndarray
    target_gram: np.ndarray
    input_gram: dict[int, np.ndarray]
    cross: dict[int, np.ndarray]

    @classmethod
    def empty(cls, *, num_layers: int, hidden_size: int, layers: Iterable[int]) -> CalibrationStats:
        chosen = tuple(sorted({int(k) for k in layers}))
        bad = [k for k in chosen if not 1 <= k < num_layers]
        if bad:
            raise CalibrationError(
                f"calibration layer(s) {', '.join(map(str, bad))} out of range; maps exist for layers "
                f"1..{num_layers - 1} (full depth {num_layers} needs none)"
            )
        h = hidden_size
        return cls(
            num_layers=num_layers,
            hidden_size=h,
            layers=chosen,
            count=np.zeros(2, dtype=np.int64),
            target_sum=np.zeros((2, h)),
            target_gram=np.zeros((2, h, h)),
            input_gram={k: np.zeros((2, h + 1, h + 1)) for k in chosen},
            cross={k: np.zeros((2, h + 1, h)) for k in chosen},
        )

    def add(
        self,
        states: Mapping[int, np.ndarray],
        target: np.ndarray,
        heldout: np.ndarray | Sequence[bool] | None = None,
    ) -> None:
        """Add rows: ``states[k]`` (n, H) pooled layer-``k`` states, ``target`` (n, H) full-depth vectors.

        ``target`` is used as given (callers pass normalized vectors).
        ``heldout`` (n,) marks the rows that go to the held-out part.
        """
        y = np.asarray(target, dtype=np.float64)
        h = self.hidden_size
        if y.ndim != 2 or y.shape[1] != h:
            raise CalibrationError(f"calibration targets have shape {y.shape}; expected (n, {h})")
        n = y.shape[0]
        mask = np.zeros(n, dtype=bool) if heldout is None else np.asarray(heldout, dtype=bool)
        if mask.shape != (n,):
            raise CalibrationError(f"held-out mask has shape {mask.shape}; expected ({n},)")
        xs = {}
        for k in self.layers:
            if k not in states:
                raise CalibrationError(f"no pooled states for layer {k}; the stats collect layers {list(self.layers)}")
            x = np.asarray(states[k], dtype=np.float64)
            if x.shape != (n, h):
                raise CalibrationError(f"layer {k} states have shape {x.shape}; expected ({n}, {h})")
            xs[k] = np.hstack([x, np.ones((n, 1))])
        for part, rows in ((0, ~mask), (1, mask)):
            if not rows.any():
                continue
            t = y[rows]
            self.count[part] += t.shape[0]
            self.target_sum[part] += t.sum(axis=0)
            self.target_gram[part] += t.T @ t
            for k, xa in xs.items():
                xr = xa[rows]
                self.input_gram[k][part] += xr.T @ xr
                self.cross[k][part] += xr.T @ t

    def __add__(self, other: CalibrationStats) -> CalibrationStats:
        if not isinstance(other, CalibrationStats):
            return NotImplemented
        if (self.num_layers, self.hidden_size, self.layers) != (other.num_layers, other.hidden_size, other.layers):
            raise CalibrationError(
                f"cannot add statistics for layers {list(other.layers)} of a {other.num_layers}x{other.hidden_size} "
                f"model to ones for layers {list(self.layers)} of a {self.num_layers}x{self.hidden_size} model"
            )
        return CalibrationStats(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            layers=self.layers,
            count=self.count + other.count,
            target_sum=self.target_sum + other.target_sum,
            target_gram=self.target_gram + other.target_gram,
            input_gram={k: self.input_gram[k] + other.input_gram[k] for k in self.layers},
            cross={k: self.cross[k] + other.cross[k] for k in self.layers},
        )

    def __radd__(self, other: Any) -> CalibrationStats:
        if other == 0:  # sum(shards) starts from 0
            return self
        return NotImplemented

    # ----------------------------------------------------------- transport
    def to_bytes(self) -> bytes:
        """safetensors bytes, for shipping from an actor to the driver."""
        import json

        from safetensors.numpy import save

        tensors = {"count": self.count, "target_sum": self.target_sum, "target_gram": self.target_gram}
        for k in self.layers:
            tensors[f"input_gram.{k}"] = self.input_gram[k]
            tensors[f"cross.{k}"] = self.cross[k]
        meta = {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "layers": list(self.layers)}
        return save(tensors, metadata={"stats": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> CalibrationStats:
        from safetensors.numpy import load

        meta = _header_metadata(data, "calibration statistics", key="stats")
        t = load(data)
        layers = tuple(meta["layers"])
        return cls(
            num_layers=meta["num_layers"],
            hidden_size=meta["hidden_size"],
            layers=layers,
            count=t["count"],
            target_sum=t["target_sum"],
            target_gram=t["target_gram"],
            input_gram={k: t[f"input_gram.{k}"] for k in layers},
            cross={k: t[f"cross.{k}"] for k in layers},
        )

    # ----------------------------------------------------------- solving
    def solve(
        self,
        *,
        model_fingerprint: str,
        pooling: str,
        max_length: int,
        model_path: str = "",
        corpus: str = "",
        seed: int | None = None,
        center: bool = True,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        penalty: Penalty = "standardized",
    ) -> Calibration:
        """Rotation from the covariance of all rows; per layer, the ridge strength with the least
        held-out error, then the map refitted on all rows."""
        problem = self.solve_problem("a calibration", "sample more rows", alphas)
        if problem:
            raise CalibrationError(problem)
        rotation, variance = self._rotation(center)
        maps: dict[int, np.ndarray] = {}
        fits: list[LayerFit] = []
        for k in self.layers:
            w, fit = self._fit_layer(k, rotation, alphas, penalty)
            maps[k] = w
            fits.append(fit)
        info = CalibrationInfo(
            model_fingerprint=model_fingerprint,
            model_path=model_path,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            pooling=str(pooling),
            max_length=int(max_length),
            sample_size=self.rows,
            heldout_size=self.heldout_rows,
            corpus=corpus,
            seed=seed,
            centered=center,
            fits=tuple(fits),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        return Calibration(rotation=rotation, maps=maps, variance=variance, info=info)

    def _rotation(self, center: bool) -> tuple[np.ndarray, np.ndarray]:
        n = self.rows
        gram = self.target_gram.sum(axis=0) / n
        if center:
            mean = self.target_sum.sum(axis=0) / n
            gram = gram - np.outer(mean, mean)
        evals, evecs = np.linalg.eigh((gram + gram.T) / 2)
        order = np.argsort(evals)[::-1]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        # a fixed sign per axis (its largest entry positive), so equal data gives equal files
        lead = evecs[np.argmax(np.abs(evecs), axis=0), np.arange(evecs.shape[1])]
        evecs = evecs * np.where(lead < 0, -1.0, 1.0)
        return evecs, evals

    def _fit_layer(
        self, k: int, rot: np.ndarray, alphas: Sequence[float], penalty: Penalty
    ) -> tuple[np.ndarray, LayerFit]:
        moments = RidgeMoments(
            xx=self.input_gram[k],
            xy=self.cross[k] @ rot,
            y_sum=self.target_sum @ rot,
            yy_held=rot.T @ self.target_gram[1] @ rot,
            count=(self.fit_rows, self.heldout_rows),
        )
        fit = moments.fit(alphas, penalty)
        if fit is None:
            raise CalibrationError(f"layer {k}: every ridge strength gave a singular system; sample more rows")
        d64 = slice(0, min(64, self.hidden_size))
        layer_fit = LayerFit(
            layer=k,
            alpha=fit.alpha,
            ridge=fit.ridge,
            heldout_r2=round(moments.r2(fit.fit_weights), 6),
            heldout_r2_d64=round(moments.r2(fit.fit_weights, d64), 6),
        )
        return fit.weights, layer_fit


def heldout_mask(keys: Sequence[Any], fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministic held-out assignment: the same key and seed always land in the same part."""
    import hashlib

    if not 0.0 < fraction < 1.0:
        raise CalibrationError(f"held-out fraction must be in (0, 1), got {fraction!r}")
    out = np.empty(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        d = hashlib.blake2b(f"{seed}|heldout|{key!r}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(d, "little") / 2**64 < fraction
    return out
