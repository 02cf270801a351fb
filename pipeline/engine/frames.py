"""Index-vector frames: the Gram matrix ``A = V^T V`` and, for validation, explicit ``V``.

The reduced dynamics only ever need ``A``; explicit ``d x k`` frames exist for the full-d
backend and the tests. Every Gram used by mimflow is validated here: symmetric, unit
diagonal, positive definite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError

#: Tolerance for symmetry and unit diagonal of a user Gram matrix.
GRAM_ATOL = 1e-12


def equiangular_gram(k: int, beta: float) -> np.ndarray:
    """Gram matrix of an equiangular frame: ones on the diagonal, ``beta`` elsewhere."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise SpecError("k", k, "an integer >= 1")
    if not (isinstance(beta, int | float | np.floating) and 0.0 <= beta < 1.0):
        raise SpecError("beta", beta, "a number in [0, 1) (0 is the orthogonal frame)")
    return (1.0 - beta) * np.eye(k) + beta * np.ones((k, k))


def has_booleans(value: Any) -> bool:
    """True when ``value`` is or holds a boolean (``float(True)`` is 1.0: flags are not numbers)."""
    if isinstance(value, bool | np.bool_):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype == bool or (value.dtype == object
                                       and any(has_booleans(x) for x in value.ravel()))
    if isinstance(value, list | tuple):
        return any(has_booleans(x) for x in value)
    return False


def validate_gram(gram, *, field: str = "gram") -> np.ndarray:
    """Validate a user Gram matrix and return it as a float array.

    Raises :class:`SpecError` unless it is a square, finite, symmetric matrix with unit
    diagonal that is positive definite (linearly independent unit index vectors).
    """
    if has_booleans(gram):  # float(True) is 1.0: a matrix of flags is not a Gram matrix
        raise SpecError(field, gram, "a square matrix of numbers (list of rows), not booleans")
    try:
        A = np.array(gram, dtype=float)
    except (TypeError, ValueError):
        raise SpecError(field, gram, "a square matrix of numbers (list of rows)") from None
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1:
        raise SpecError(field, gram, "a square k x k matrix (list of k rows of k numbers)")
    if not np.all(np.isfinite(A)):
        raise SpecError(field, gram, "finite entries")
    if not np.allclose(A, A.T, atol=GRAM_ATOL, rtol=0):
        raise SpecError(field, gram, "a symmetric matrix (A[i][j] == A[j][i])")
    if not np.allclose(np.diag(A), 1.0, atol=GRAM_ATOL, rtol=0):
        raise SpecError(field, gram, "unit diagonal (index vectors have norm 1)")
    A = 0.5 * (A + A.T)
    np.fill_diagonal(A, 1.0)
    try:
        np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise SpecError(
            field, gram, "a positive definite matrix (linearly independent index vectors)"
        ) from None
    return A


def explicit_frame(gram: np.ndarray, d: int) -> np.ndarray:
    """An explicit ``d x k`` frame ``V`` with ``V^T V = gram``.

    ``V = [L^T; 0]`` with ``gram = L L^T`` (Cholesky): the index vectors live in the first
    ``k`` coordinates, which is the basis the exact initial-condition sampler uses, so a
    reduced and a full-d run started from the same draw share their initial overlaps.
    """
    A = np.asarray(gram, dtype=float)
    k = A.shape[0]
    if d < k:
        raise SpecError("d", d, f"an integer >= k = {k}")
    V = np.zeros((int(d), k))
    V[:k] = np.linalg.cholesky(A).T
    return V


def max_overlap_norm(gram: np.ndarray) -> float:
    """Largest ``||V^T w||_2`` over unit ``w``: ``sqrt(lambda_max(A))``."""
    return float(np.sqrt(np.linalg.eigvalsh(gram)[-1]))
