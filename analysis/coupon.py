"""Coupon-collector failure against n/k (Section 2.3): does every index vector get a neuron?"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import binomtest

from ._points import finished, iter_points
from .theory import coupon_failure_exact, coupon_limit, coupon_lower_bound, coupon_union_bound


class CouponCollector:
    """Empirical probability that some index vector is matched by no neuron at convergence.

    Parameters
    ----------
    match_threshold:
        Index vector ``v_j`` is matched when some converged neuron has overlap ``u_j`` at
        least this large.
    confidence:
        Level of the Wilson intervals.

    Attributes
    ----------
    table_:
        One row per point: ``k, n, gamma = n/k``, seeds, failures, the estimate with its Wilson
        interval, ``failure_at_init`` (failures predicted from the initial largest overlaps,
        Proposition 2.2), the exact coupon-collector probability, the union bound
        ``k e^{-n/k}``, the lower bound ``(1-1/k)^n``, the limit ``e^{-gamma}``, and ``z``, the
        distance from the exact value in binomial standard errors.
    """

    def __init__(self, match_threshold: float = 0.9, confidence: float = 0.95) -> None:
        self.match_threshold = match_threshold
        self.confidence = confidence

    def fit(self, ds: xr.Dataset) -> CouponCollector:
        """Estimate from a results dataset (a store or a ``simulate`` result)."""
        rows = []
        for params, sub in iter_points(ds):
            k, n = int(params["k"]), int(params["n"])
            u = np.asarray(sub["u"].values, dtype=float)          # (seed, neuron, index)
            converged = finished(params, sub["status"].values)  # (seed, neuron)
            matched = ((u >= self.match_threshold) & converged[..., None]).any(axis=1)
            failed = ~matched.all(axis=1)
            u0 = np.asarray(sub["u0"].values, dtype=float)
            collected = np.zeros((u0.shape[0], k), dtype=bool)
            np.put_along_axis(collected, np.argmax(u0, axis=2), True, axis=1)
            seeds, failures = failed.size, int(failed.sum())
            ci = binomtest(failures, seeds).proportion_ci(self.confidence, method="wilson")
            exact = coupon_failure_exact(n, k)
            se = np.sqrt(exact * (1 - exact) / seeds)
            rows.append({
                **{c: params[c] for c in ("teacher", "init", "beta", "d", "method")
                   if c in params},
                "k": k, "n": n, "gamma": n / k, "seeds": seeds, "failures": failures,
                "failure": failures / seeds, "lo": ci.low, "hi": ci.high,
                "failure_at_init": float((~collected.all(axis=1)).mean()),
                "exact": exact, "union_bound": coupon_union_bound(n, k),
                "lower_bound": coupon_lower_bound(n, k), "limit": coupon_limit(n / k),
                "z": (failures / seeds - exact) / se if se > 0 else 0.0,
            })
        self.table_ = pd.DataFrame(rows)
        return self
