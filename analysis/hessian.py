"""Spherical Hessian of the correlation loss at the average point, computed explicitly.

The Riemannian Hessian on the sphere at ``w`` is ``P (grad^2 L - (w . grad L) I) P`` with
``P = I - w w^T``. It is built here from an explicit frame in ``R^(k+1)`` (one direction outside
span(V) is enough: all of them are equivalent), independently of the closed form (eq. 18), so
the two can check each other; the sign change of the in-span eigenvalue must sit at ``beta_c``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from pipeline.engine.frames import equiangular_gram, explicit_frame


def _average_point(k: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """An explicit equiangular frame in ``R^(k+1)`` and its normalized average ``w_bar``."""
    V = explicit_frame(equiangular_gram(k, beta), k + 1)
    w = V.sum(axis=1)
    return V, w / np.linalg.norm(w)


def _derivatives(c: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``g'(u_j)`` and ``g''(u_j)`` of the dual activation ``g(rho) = sum_p c_p rho^p``."""
    dg = np.polynomial.polynomial.polyder(c)
    return (np.polynomial.polynomial.polyval(u, dg),
            np.polynomial.polynomial.polyval(u, np.polynomial.polynomial.polyder(dg)))


def hessian_at_average(c: np.ndarray, k: int, beta: float) -> tuple[np.ndarray, float]:
    """The spherical Hessian at ``w_bar`` on its tangent space.

    ``c`` are the dual coefficients ``c_p``; the loss is ``L(w) = -sum_j sum_p c_p (v_j.w)^p``.
    Returns ``(in_span, outside)``: the ``k - 1`` eigenvalues for tangent directions inside
    span(V) (ascending) and the one for the direction outside it.
    """
    V, w = _average_point(k, beta)
    u = V.T @ w
    dg, d2g = _derivatives(np.asarray(c, dtype=float), u)
    grad = -V @ dg
    hess = -(V * d2g) @ V.T
    P = np.eye(k + 1) - np.outer(w, w)
    riem = P @ (hess - (w @ grad) * np.eye(k + 1)) @ P
    # Tangent directions inside span(V): orthonormal basis of span(V) minus w_bar; the last
    # coordinate axis is the one direction outside span(V) (V lives in the first k).
    Q = np.linalg.qr(np.column_stack([w, V]))[0][:, 1:k]
    e_out = np.zeros(k + 1)
    e_out[k] = 1.0
    return np.linalg.eigvalsh(Q.T @ riem @ Q), float(e_out @ riem @ e_out)


def hessian_in_span(c: np.ndarray, k: int, beta: float) -> float:
    """Smallest Hessian eigenvalue at ``w_bar`` among directions inside span(V)."""
    inside, _ = hessian_at_average(c, k, beta)
    return float(inside.min()) if inside.size else float("nan")


def hessian_critical_beta(c: np.ndarray, k: int, *, xtol: float = 1e-12) -> float:
    """The beta at which ``w_bar`` turns from a strict saddle into a local minimum.

    Root of the in-span Hessian eigenvalue in beta (bracketed on [0, 1)); ``nan`` if the sign
    never changes there.
    """
    f = lambda b: hessian_in_span(c, k, b)  # noqa: E731
    lo, hi = 0.0, 1.0 - 1e-9
    if k < 2 or f(lo) > 0 or f(hi) < 0:
        return float("nan")
    return float(brentq(f, lo, hi, xtol=xtol))


def hessian_spectrum(c: np.ndarray, k: int, betas: np.ndarray) -> pd.DataFrame:
    """The Hessian at ``w_bar`` against beta: smallest in-span and out-of-span eigenvalues."""
    rows = []
    for b in np.asarray(betas, dtype=float):
        inside, outside = hessian_at_average(c, k, b)
        rows.append({"beta": b, "in_span": float(inside.min()) if inside.size else np.nan,
                     "outside_span": outside})
    return pd.DataFrame(rows)
