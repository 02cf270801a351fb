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

from pipeline.frames import equiangular_gram, explicit_frame


def hessian_at_average(c: np.ndarray, k: int, beta: float) -> np.ndarray:
    """Eigenvalues of the spherical Hessian at ``w_bar`` on its tangent space (ascending).

    ``c`` are the dual coefficients ``c_p``; the loss is ``L(w) = -sum_j sum_p c_p (v_j.w)^p``.
    Returns ``k`` eigenvalues: ``k - 1`` for directions in span(V) and one outside it.
    """
    V = explicit_frame(equiangular_gram(k, beta), k + 1)
    w = V.sum(axis=1)
    w /= np.linalg.norm(w)
    u = V.T @ w
    c = np.asarray(c, dtype=float)
    p = np.arange(len(c))
    dg = np.array([np.sum(c[1:] * p[1:] * uj ** (p[1:] - 1)) for uj in u])
    d2g = np.array([np.sum(c[2:] * p[2:] * (p[2:] - 1) * uj ** (p[2:] - 2)) for uj in u])
    grad = -V @ dg
    hess = -(V * d2g) @ V.T
    P = np.eye(k + 1) - np.outer(w, w)
    riem = P @ (hess - (w @ grad) * np.eye(k + 1)) @ P
    # Restrict to the tangent space: an orthonormal basis of w's complement.
    basis = np.linalg.svd(P)[0][:, :k]
    return np.linalg.eigvalsh(basis.T @ riem @ basis)


def hessian_in_span(c: np.ndarray, k: int, beta: float) -> float:
    """Smallest Hessian eigenvalue at ``w_bar`` among directions inside span(V)."""
    V = explicit_frame(equiangular_gram(k, beta), k + 1)
    w = V.sum(axis=1) / np.linalg.norm(V.sum(axis=1))
    evals = hessian_at_average(c, k, beta)
    if k == 1:
        return float("nan")
    # The out-of-span direction e_{k+1} has eigenvalue -w.grad L; the others lie in the span.
    outside = _outside_eigenvalue(c, V, w)
    inside = np.delete(evals, np.argmin(np.abs(evals - outside)))
    return float(inside.min())


def _outside_eigenvalue(c, V, w) -> float:
    u = V.T @ w
    p = np.arange(len(c))
    return float(sum(np.sum(c[1:] * p[1:] * uj ** p[1:]) for uj in u))


def hessian_critical_beta(c: np.ndarray, k: int, *, xtol: float = 1e-12) -> float:
    """The beta at which ``w_bar`` turns from a strict saddle into a local minimum.

    Root of the in-span Hessian eigenvalue in beta (bracketed on [0, 1)); ``nan`` if the sign
    never changes there.
    """
    f = lambda b: hessian_in_span(c, k, b)  # noqa: E731
    lo, hi = 0.0, 1.0 - 1e-9
    if f(lo) > 0 or f(hi) < 0:
        return float("nan")
    return float(brentq(f, lo, hi, xtol=xtol))


def hessian_spectrum(c: np.ndarray, k: int, betas: np.ndarray) -> pd.DataFrame:
    """The Hessian at ``w_bar`` against beta: in-span and out-of-span eigenvalues."""
    rows = []
    for b in np.asarray(betas, dtype=float):
        V = explicit_frame(equiangular_gram(k, b), k + 1)
        w = V.sum(axis=1) / np.linalg.norm(V.sum(axis=1))
        rows.append({"beta": b, "in_span": hessian_in_span(c, k, b),
                     "outside_span": _outside_eigenvalue(c, V, w)})
    return pd.DataFrame(rows)
