"""The tables of a store: every estimator that applies, chosen from what the sweep varies.

:func:`analyze` is what ``mimflow analyze`` prints and what ``mimflow reproduce`` writes as
CSV; the other functions are the tables of single paper claims (status counts, Figure 3's
``v_last``, Figure 5's largest overlaps, Theorem 3.2's Hessian).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.engine.activations import dual_coefficients, get_activation
from pipeline.engine.status import STATUS_NAMES

from ._points import iter_points, point_params
from .bifurcation import BifurcationPoint
from .coupon import CouponCollector
from .escape import EscapeScaling, SampleComplexity
from .hessian import hessian_critical_beta
from .refine import refinement_table
from .theory import average_overlap, beta_c


def status_table(ds: xr.Dataset, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Status counts per point, one column per ``pipeline.engine.status.STATUS_NAMES`` entry
    (converged, t_max, max_steps, non_finite). ``table`` is ``point_params(ds)`` if known."""
    rows = []
    for params, sub in iter_points(ds, table):
        st = np.asarray(sub["status"].values).ravel()
        st = st[st >= 0]
        counts = np.bincount(st.astype(int), minlength=max(STATUS_NAMES) + 1)
        rows.append({**{k: params[k] for k in ("teacher", "loss", "d", "k", "n", "beta")
                        if k in params},
                     **{name: counts[code] for code, name in STATUS_NAMES.items()}})
    return pd.DataFrame(rows)


def collected_v_last(ds: xr.Dataset, threshold: float = 0.9,
                     table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Figure 3's claim: per loss, the fraction of seeds where some neuron ends with overlap
    above ``threshold`` with the last index vector (which no neuron collected at init).
    ``table`` is ``point_params(ds)`` if known."""
    rows = []
    for params, sub in iter_points(ds, table):
        u_last = np.asarray(sub["u"].values, dtype=float)[..., -1]   # (seed, neuron)
        u0_last = np.asarray(sub["u0"].values, dtype=float)
        init_collected = (np.argmax(u0_last, axis=-1) == u0_last.shape[-1] - 1).any(axis=-1)
        found = (u_last > threshold).any(axis=-1)
        rows.append({"loss": params["loss"], "teacher": params["teacher"], "n": params["n"],
                     "seeds": found.size, "collected_at_init": int(init_collected.sum()),
                     "learned_v_last": int(found.sum()), "fraction": float(found.mean())})
    return pd.DataFrame(rows)


def k_table(ds: xr.Dataset, tol: float = 1e-3, table: pd.DataFrame | None = None
            ) -> pd.DataFrame:
    """Figure 5: largest final overlap against k, next to the average point's overlap.
    ``table`` is ``point_params(ds)`` if known."""
    rows = []
    for params, sub in iter_points(ds, table):
        u = np.asarray(sub["u"].values, dtype=float)
        top = np.nanmax(u, axis=-1).ravel()
        spread = (np.nanmax(u, axis=-1) - np.nanmin(u, axis=-1)).ravel()
        k, beta, p_star = int(params["k"]), float(params["beta"]), int(params["p_star"])
        b_c = beta_c(p_star, k) if p_star >= 2 else np.nan  # as BifurcationPoint reports it
        rows.append({"teacher": params["teacher"], "p_star": p_star, "beta": beta, "k": k,
                     "median_max_overlap": float(np.median(top)),
                     "average_point_overlap": average_overlap(k, beta),
                     "fraction_at_average": float(np.mean(spread < tol)) if k > 1 else np.nan,
                     "beta_c": b_c, "beta_above_beta_c": beta > b_c})
    return pd.DataFrame(rows)


def hessian_table(ks: Iterable[int] = (2, 3, 5, 10, 20), p_stars: Iterable[int] = (3, 4, 5)
                  ) -> pd.DataFrame:
    """Theorem 3.2: beta_c from the explicit Hessian against the closed form."""
    rows = []
    for p in p_stars:
        a = get_activation(f"h{p}").coefficients
        c = dual_coefficients(a, a)
        for k in ks:
            b = hessian_critical_beta(c, k)
            rows.append({"p_star": p, "k": k, "beta_c_formula": beta_c(p, k),
                         "beta_c_hessian": b, "difference": b - beta_c(p, k)})
    return pd.DataFrame(rows)


def analyze(ds: xr.Dataset) -> dict[str, pd.DataFrame]:
    """Every estimator that applies to a store, chosen from what the sweep varies."""
    table = point_params(ds)
    varies = {c for c in table.columns if table[c].nunique(dropna=False) > 1}
    tables: dict[str, pd.DataFrame] = {"status": status_table(ds, table)}
    if "d" in varies:
        if (table["method"] != "sgd").any():  # escape times (flow, GD), never samples
            est = EscapeScaling().fit(ds)
            tables["escape_summary"], tables["escape_per_d"] = est.summary_, est.per_d_
        if (table["method"] == "sgd").any():  # samples to escape (SGD)
            est = SampleComplexity().fit(ds)
            tables["samples_summary"], tables["samples_per_d"] = est.summary_, est.per_d_
    if "beta" in varies and (table["loss"] == "correlation").all():
        est = BifurcationPoint().fit(ds)
        tables["beta_f"], tables["beta_f_fractions"] = est.summary_, est.fractions_
    refinement = refinement_table(ds)
    if refinement is not None:
        tables["refinement"] = refinement
    if varies & {"n", "gamma"} and (table["loss"] == "correlation").all():
        tables["coupon"] = CouponCollector().fit(ds).table_
    if (table["init"] == "uncollected").all() and (table["k"] >= 2).all():
        tables["v_last_learned"] = collected_v_last(ds, table=table)
    if "k" in varies and "beta" in varies and (table["n"] == 1).all():
        tables["k_bifurcation"] = k_table(ds, table=table)
    return tables
