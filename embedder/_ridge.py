"""The one ridge solve: an affine map ``[x, 1] @ W ~ y`` from summed second moments, its strength chosen on
held-out rows.

Calibrations (exit layer -> rotated full-depth space, :mod:`._calibration_fit`) and compatibility maps (one
model's space -> another's, :mod:`._compat`) both keep their sample's moments in two parts, the fitting rows and
the held-out rows, and solve here: for each ridge strength of a grid, solve on the fitting part and measure the
squared error on the held-out part (computable from its moments alone); keep the strength with the least error
and refit on all rows with it.

The penalty is on standardized features (each weight scaled by its feature's variance over all rows), so one
grid of relative strengths (``alpha``: lambda = alpha x rows) serves features of any scale; the bias is free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "DEFAULT_ALPHAS",
    "MIN_FIT_ROWS",
    "MIN_HELDOUT_ROWS",
    "Penalty",
    "RidgeFit",
    "RidgeMoments",
    "SplitCounts",
    "alphas_problem",
]

#: Relative ridge strengths tried on the held-out part: lambda = alpha x rows, on standardized features.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-8.0, 2.01, 0.5))
#: Fewest rows a solve accepts in each part of the sample.
MIN_FIT_ROWS, MIN_HELDOUT_ROWS = 8, 4

Penalty = Literal["standardized", "identity"]


def alphas_problem(alphas: Sequence[float]) -> str | None:
    """What is wrong with a grid of ridge strengths (each must be finite and > 0), or None."""
    if not alphas or any(not (a > 0 and math.isfinite(a)) for a in alphas):
        return f"ridge alphas must be finite and > 0, got {list(alphas)}"
    return None


class SplitCounts:
    """Sufficient statistics kept in two parts, the fitting rows (``count[0]``) and the held-out rows
    (``count[1]``): what calibration and compatibility-map statistics both count."""

    count: np.ndarray

    @property
    def fit_rows(self) -> int:
        return int(self.count[0])

    @property
    def heldout_rows(self) -> int:
        return int(self.count[1])

    @property
    def rows(self) -> int:
        return int(self.count.sum())

    def solve_problem(self, what: str, more: str, alphas: Sequence[float]) -> str | None:
        """Why these statistics cannot be solved with ``alphas`` (too few rows in a part, bad strengths): a
        message naming ``what`` is fitted and how to get ``more`` rows; None when they can."""
        if self.fit_rows < MIN_FIT_ROWS or self.heldout_rows < MIN_HELDOUT_ROWS:
            return (
                f"{what} needs at least {MIN_FIT_ROWS} fitting rows and {MIN_HELDOUT_ROWS} held-out rows; "
                f"the sample has {self.fit_rows} and {self.heldout_rows}: {more}"
            )
        return alphas_problem(alphas)


@dataclass(frozen=True, eq=False)
class RidgeFit:
    """The chosen strength, the map refitted on all rows with it, and how the fitting rows' map did held out."""

    alpha: float  # relative ridge strength (lambda / rows, on standardized features)
    ridge: float  # the lambda of the final solve (alpha x all rows)
    weights: np.ndarray  # (p + 1, q), fitted on all rows: what is kept
    fit_weights: np.ndarray  # (p + 1, q), fitted on the fitting rows only: what the held-out figures describe


@dataclass(frozen=True, eq=False)
class RidgeMoments:
    """Second moments of a regression ``[x, 1] @ W ~ y``, each stacked (2, ...): index 0 the fitting rows,
    1 the held-out rows. ``xx`` is ``[x, 1]' [x, 1]`` (the bias last), ``xy`` is ``[x, 1]' y``, ``y_sum`` the
    sum of ``y``; ``yy_held`` is ``y' y`` of the held-out rows only (its diagonal is what errors need)."""

    xx: np.ndarray  # (2, p + 1, p + 1)
    xy: np.ndarray  # (2, p + 1, q)
    y_sum: np.ndarray  # (2, q)
    yy_held: np.ndarray  # (q, q)
    count: tuple[int, int]

    @property
    def features(self) -> int:
        return int(self.xx.shape[-1]) - 1

    def heldout_error(self, w: np.ndarray, cols: slice = slice(None)) -> float:
        """Summed squared error of ``[x, 1] @ w`` on the held-out rows, over the target columns ``cols``."""
        wc = w[:, cols]
        return float(
            np.sum(wc * (self.xx[1] @ wc)) - 2 * np.sum(wc * self.xy[1][:, cols]) + np.trace(self.yy_held[cols, cols])
        )

    def baseline_error(self, cols: slice = slice(None)) -> float:
        """The same error for predicting the fitting rows' mean of ``y`` (what an R^2 is relative to)."""
        n_fit, n_held = self.count
        m = self.y_sum[0][cols] / n_fit
        return float(np.trace(self.yy_held[cols, cols]) - 2 * m @ self.y_sum[1][cols] + n_held * m @ m)

    def r2(self, w: np.ndarray, cols: slice = slice(None)) -> float:
        """Share of the held-out rows' variance (around the fitting rows' mean) that ``w`` explains."""
        return 1.0 - self.heldout_error(w, cols) / max(self.baseline_error(cols), 1e-30)

    def _penalty(self, penalty: Penalty) -> np.ndarray:
        p = self.features
        a_all, n = self.xx[0] + self.xx[1], sum(self.count)
        mean_x = a_all[:p, p] / n
        var_x = np.clip(np.diag(a_all)[:p] / n - mean_x**2, 1e-12, None)
        scale = var_x if penalty == "standardized" else np.full(p, var_x.mean())
        return np.diag(np.append(scale, 0.0))

    def fit(self, alphas: Sequence[float] = DEFAULT_ALPHAS, penalty: Penalty = "standardized") -> RidgeFit | None:
        """The strength of ``alphas`` with the least held-out error, and the maps for it; None when every
        strength gave a singular system (the caller names what it was fitting)."""
        pen = self._penalty(penalty)
        a_fit, b_fit = self.xx[0], self.xy[0]
        n_fit, n = self.count[0], sum(self.count)
        best: tuple[float, float] | None = None
        for alpha in alphas:
            try:
                w = np.linalg.solve(a_fit + alpha * n_fit * pen, b_fit)
            except np.linalg.LinAlgError:
                continue
            err = self.heldout_error(w)
            if math.isfinite(err) and (best is None or err < best[1]):
                best = (float(alpha), err)
        if best is None:
            return None
        alpha = best[0]
        w_fit = np.linalg.solve(a_fit + alpha * n_fit * pen, b_fit)
        w_all = np.linalg.solve(self.xx[0] + self.xx[1] + alpha * n * pen, self.xy[0] + self.xy[1])
        return RidgeFit(alpha=alpha, ridge=float(alpha * n), weights=w_all, fit_weights=w_fit)
