"""Escape-time scaling in d (Theorem 2.1): ``T ~ d^(p*/2 - 1)`` for p* >= 3, ``T ~ log d`` for 2."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from ._points import group_columns, iter_points, point_params
from .theory import escape_exponent, sample_exponent

_STATS = {"median": np.median, "mean": np.mean}


class EscapeScaling:
    """Fit the escape time's growth with d, per group of points that differ only in d.

    Parameters
    ----------
    statistic:
        Robust summary of the escape times at each d: ``"median"`` (default) or ``"mean"``.
    n_resamples:
        Bootstrap resamples (seeds resampled independently at each d).
    confidence:
        Level of the bootstrap percentile intervals.
    random_state:
        Seed of the bootstrap, for reproducible intervals.

    Attributes
    ----------
    per_d_:
        One row per point: group parameters, ``d``, the statistic with its interval, the
        fraction of trajectories that escaped and the fraction that started escaped (time or
        samples 0: at small d a start can lie past the threshold).
    summary_:
        One row per group: fitted exponent ``alpha`` of ``T ~ d^alpha`` with interval, the
        slope of ``T`` against ``log d`` with interval, the theory (``p*/2 - 1``), and
        ``deviation`` (alpha minus theory) and ``theory_in_ci`` (the theory lies in the
        interval, which holds statistical error only, not the finite-d bias; None where
        there is no interval: when resamples whose statistic is 0, seeds that started
        escaped, have no exponent, the interval is NaN rather than one of the others).
    """

    #: The variable fitted and its theory exponent (subclasses fit other escape measures).
    _variable = "escape_time"
    _theory = staticmethod(escape_exponent)
    _log_law = "log d"

    def __init__(self, statistic: str = "median", n_resamples: int = 1000,
                 confidence: float = 0.95, random_state: int = 0) -> None:
        self.statistic = statistic
        self.n_resamples = n_resamples
        self.confidence = confidence
        self.random_state = random_state

    def fit(self, ds: xr.Dataset) -> EscapeScaling:
        """Estimate from a results dataset (a store or a ``simulate`` result)."""
        if self.statistic not in _STATS:
            raise ValueError(f"statistic must be one of {sorted(_STATS)}, got {self.statistic!r}")
        stat = _STATS[self.statistic]
        table = point_params(ds)
        samples, rows = [], []
        for params, sub in iter_points(ds, table):
            if self._variable not in sub:
                continue
            t = np.asarray(sub[self._variable].values, dtype=float).ravel()
            escaped = np.isfinite(t)
            t = t[escaped]
            samples.append(t)
            ci = self._interval((t,), lambda x, axis=-1: stat(x, axis=axis))
            rows.append({**params, "statistic": stat(t) if t.size else np.nan,
                         "lo": ci[0], "hi": ci[1], "escaped": escaped.mean(),
                         "escaped_at_start": float(np.sum(t <= 0) / max(escaped.size, 1)),
                         "trajectories": escaped.size})
        per_d = pd.DataFrame(rows)
        keys = group_columns(table, "d")
        if per_d.empty:
            self.per_d_, self.summary_ = per_d, pd.DataFrame()
            return self
        summary = []
        for key, grp in per_d.groupby(keys, dropna=False, sort=True):
            grp = grp.sort_values("d")
            ok = grp["statistic"].notna() & (grp["escaped"] >= 0.5)
            grp = grp[ok]
            if grp["d"].nunique() < 3:
                continue
            log_d = np.log(grp["d"].to_numpy(dtype=float))
            data = tuple(samples[i] for i in grp.index)

            def alpha(*xs, axis=-1, log_d=log_d):
                s = np.stack([stat(x, axis=axis) for x in xs], axis=-1)
                # A statistic of 0 (seeds that start past the threshold, at small d) has no
                # logarithm: that (re)sample has no exponent, and NaN says so.
                ok = np.all(s > 0, axis=-1)
                out = np.full(ok.shape, np.nan)
                if np.any(ok):
                    out[ok] = np.polyfit(log_d, np.log(s[ok]).T, 1)[0]
                return out

            def log_slope(*xs, axis=-1, log_d=log_d):
                s = np.stack([stat(x, axis=axis) for x in xs], axis=-1)
                return np.polyfit(log_d, s.T, 1)[0]

            p_star = int(grp["p_star"].iloc[0])
            theory = self._theory(p_star)
            a_lo, a_hi = self._interval(data, alpha)
            b_lo, b_hi = self._interval(data, log_slope)
            row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
            row.update({
                "d_min": grp["d"].min(), "d_max": grp["d"].max(), "n_d": len(grp),
                "alpha": float(alpha(*data)), "alpha_lo": a_lo, "alpha_hi": a_hi,
                "log_slope": float(log_slope(*data)), "log_slope_lo": b_lo,
                "log_slope_hi": b_hi, "theory_alpha": theory,
                "law": self._log_law if p_star == 2 else f"d^{theory:g}",
                "deviation": float(alpha(*data)) - theory if p_star > 2 else np.nan,
                # Only statistical error is in the interval; over a finite d range the O(1)
                # offset of the escape time also biases the slope by ~0.01-0.02.
                # None where the interval is undefined (resamples without an exponent).
                "theory_in_ci": (bool(a_lo <= theory <= a_hi)
                                 if p_star > 2 and np.isfinite(a_lo) and np.isfinite(a_hi)
                                 else None),
            })
            summary.append(row)
        self.per_d_ = per_d
        self.summary_ = pd.DataFrame(summary)
        return self

    def _interval(self, data: tuple[np.ndarray, ...], statistic) -> tuple[float, float]:
        if any(x.size < 2 for x in data):
            return (np.nan, np.nan)
        with warnings.catch_warnings():
            # Resamples without a value (below) make scipy warn that the interval cannot be
            # computed; that case is handled here.
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            res = stats.bootstrap(data, statistic, n_resamples=self.n_resamples,
                                  confidence_level=self.confidence, method="percentile",
                                  vectorized=True, random_state=self.random_state)
        if np.isnan(res.bootstrap_distribution).any():
            # Some resamples have no value (alpha above): a percentile interval of the rest
            # would be biased, so there is none.
            return (np.nan, np.nan)
        return float(res.confidence_interval.low), float(res.confidence_interval.high)


class SampleComplexity(EscapeScaling):
    """Online SGD's samples to escape against d: the exponent of ``n ~ d^alpha``.

    Fits ``escape_samples`` (SGD points only; flow points have none) exactly as
    :class:`EscapeScaling` fits escape times, per group of points that differ only in ``d``
    (one step-size law ``lr = c d^q`` is one group), beside the theory ``p* - 1`` at
    ``q = -p*/2`` (Ben Arous, Gheissari & Jagannath 2021). For ``p* = 2`` the law is
    ``d log d``: the exponent then sits slightly above 1 over a finite range, and
    ``log_slope`` is the slope of ``n`` against ``log d``.

    Parameters and fitted attributes are those of :class:`EscapeScaling`; ``theory_alpha``
    is ``p* - 1`` and the statistic is in samples.
    """

    _variable = "escape_samples"
    _theory = staticmethod(sample_exponent)
    _log_law = "d log d"
