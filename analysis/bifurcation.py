"""beta_f against beta_c (Theorem 3.2, Figure 2): when does the flow settle on the average?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import binomtest

import pipeline

from ._points import dual_c, finished, group_columns, iter_points, point_params
from .hessian import hessian_critical_beta
from .theory import beta_c


def at_average(u: np.ndarray, status: np.ndarray, tol: float = 1e-3,
               done: np.ndarray | None = None) -> np.ndarray:
    """Which converged neurons sit at the average point: all overlaps equal within ``tol``.

    ``done`` overrides which trajectories count as finished (default: status 0)."""
    spread = np.nanmax(u, axis=-1) - np.nanmin(u, axis=-1)
    done = (status == 0) if done is None else done
    return (spread < tol) & (np.nanmin(u, axis=-1) > 0) & done


class BifurcationPoint:
    """Locate beta_f, the smallest beta at which at least half the initializations converge
    to the average point, on a sweep over beta; compare with beta_c.

    Parameters
    ----------
    tol:
        A converged neuron is at the average when its overlaps agree within ``tol``.
    threshold:
        The fraction that defines beta_f (the paper's "at least half": 0.5).
    confidence:
        Level of the Wilson intervals on the fractions.
    sgd_tol:
        ``tol`` for online SGD points, whose final state fluctuates around its limit (a chain
        that spent its sample budget counts as finished).

    Attributes
    ----------
    fractions_:
        One row per point: beta, the fraction of neurons at the average with its interval,
        the mean final largest overlap.
    summary_:
        One row per group (points differing only in beta): the grid interval
        ``(beta_f_lo, beta_f_hi]`` containing beta_f, beta_c from Theorem 3.2 (pure Hermite
        teacher) and from the explicit Hessian at the average point.
    """

    def __init__(self, tol: float = 1e-3, threshold: float = 0.5,
                 confidence: float = 0.95, sgd_tol: float = 0.1) -> None:
        self.tol = tol
        self.sgd_tol = sgd_tol
        self.threshold = threshold
        self.confidence = confidence

    def fit(self, ds: xr.Dataset) -> BifurcationPoint:
        """Estimate from a results dataset whose points sweep ``beta``."""
        table = point_params(ds)
        rows = []
        for params, sub in iter_points(ds, table):
            u = np.asarray(sub["u"].values, dtype=float)
            status = np.asarray(sub["status"].values)
            tol = self.sgd_tol if params.get("method") == "sgd" else self.tol
            hits = at_average(u, status, tol, finished(params, status))
            ci = binomtest(int(hits.sum()), hits.size).proportion_ci(self.confidence, "wilson")
            rows.append({**params, "at_average": hits.mean(), "lo": ci.low, "hi": ci.high,
                         "max_overlap": float(np.nanmean(np.nanmax(u, axis=-1)))})
        self.fractions_ = fractions = pd.DataFrame(rows)
        keys = group_columns(table, "beta")
        summary = []
        for key, grp in fractions.groupby(keys, dropna=False, sort=True):
            grp = grp.sort_values("beta")
            above = grp["at_average"].to_numpy() >= self.threshold
            betas = grp["beta"].to_numpy(dtype=float)
            if above.any():
                first = int(np.argmax(above))
                lo = betas[first - 1] if first > 0 else np.nan
                hi = betas[first]
            else:
                lo, hi = betas[-1], np.nan
            params = grp.iloc[0].to_dict()
            k, p_star = int(params["k"]), int(params["p_star"])
            row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
            row.update({
                "beta_f_lo": lo, "beta_f_hi": hi,
                "beta_c": beta_c(p_star, k) if p_star >= 2 else np.nan,
                "beta_c_hessian": hessian_critical_beta(dual_c(params), k),
                "n_beta": len(grp),
            })
            summary.append(row)
        self.summary_ = pd.DataFrame(summary)
        return self


def bisect_beta_f(point: Mapping[str, Any], seeds: int = 64, *, lo: float = 0.0,
                  hi: float = 0.95, tol: float = 1e-3, threshold: float = 0.5,
                  average_tol: float = 1e-3) -> tuple[float, float]:
    """Bracket beta_f by bisection, simulating directly (no store).

    ``point`` fixes everything but ``beta``. Assumes the fraction at the average increases
    with beta across the bracket (true on the paper's examples); returns ``(lo, hi)`` with
    the fraction below ``threshold`` at ``lo`` and at least ``threshold`` at ``hi``.
    """
    def fraction(beta: float) -> float:
        ds = pipeline.simulate({**point, "beta": beta}, seeds)
        return float(at_average(ds["u"].values, ds["status"].values, average_tol).mean())

    if fraction(hi) < threshold:
        raise ValueError(f"no beta_f below beta = {hi}: the fraction there is < {threshold}")
    if fraction(lo) >= threshold:
        return (lo, lo)
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if fraction(mid) >= threshold:
            hi = mid
        else:
            lo = mid
    return lo, hi
