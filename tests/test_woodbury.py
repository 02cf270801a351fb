"""Structured (Woodbury) solves with the Rosenbrock matrix of the reduced MSE field
(``woodbury.py``). Independent truth: numpy's dense solve with the closed-form Jacobian
(itself checked against differences in ``test_convergence_rule.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine import dynamics, mse, stiff, woodbury
from pipeline.engine.activations import get_activation


def _setup(teacher, gram, n, m, y):
    a = get_activation(teacher).coefficients
    args = mse.reduced_args(gram, a, a, n, m)
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    J = np.empty((y.size, y.size))
    stiff.reduced_jacobian(y, args, work, np.empty(y.size), J)
    return args, work, J


@pytest.mark.parametrize("teacher,n,m", [("h3", 10, 10), ("h4", 5, 5), ("relu", 4, 1)])
def test_structured_solve_is_the_dense_solve(teacher, n, m):
    """Random states (correlated teachers, rank-deficient perp part included), step sizes from
    stiff to long: the structured factorization solves alpha I - J to ~1e-12."""
    rng = np.random.default_rng(n)
    gram = np.array([[1.0, 0.2], [0.2, 1.0]])
    y = 0.4 * rng.standard_normal(n * (2 + m))
    args, work, J = _setup(teacher, gram, n, m, y)
    fac = woodbury.allocate(n, 2, 2 + m)
    assert not stiff._linearize(dynamics.MSE_REDUCED, y, args, work, np.empty(y.size),
                                np.empty((1, 1)), fac)  # the dense J is not built
    for alpha in (40.0, 1.0, 1e-2):
        assert stiff._structured(dynamics.MSE_REDUCED, 1.0 / (stiff.GAMMA * alpha), fac, n,
                                 2 + m)
        b = rng.standard_normal(y.size)
        x = b.copy()
        woodbury.solve(fac, x, n, 2 + m)
        ref = np.linalg.solve(alpha * np.eye(y.size) - J, b)
        np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_declines_where_p_is_singular():
    """A neuron orthogonal to everything (its row of C is zero) and a long step: P = alpha I
    + 2 C is near-singular, the structured form is declined (the dense LU is used)."""
    n, m = 3, 3
    M = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    Z = np.zeros((m, n))
    Z[0, 2] = 1.0
    y = mse.pack_reduced(M, Z)
    args, work, _ = _setup("h3", np.eye(2), n, m, y)
    fac = woodbury.allocate(n, 2, 2 + m)
    stiff._linearize(dynamics.MSE_REDUCED, y, args, work, np.empty(y.size), np.empty((1, 1)),
                     fac)
    assert not stiff._structured(dynamics.MSE_REDUCED, 1e12, fac, n, 2 + m)


@pytest.mark.parametrize("teacher,n,m", [("h3", 10, 10), ("relu", 4, 1)])
def test_structured_product_and_spectral_radius(teacher, n, m):
    """``jvp`` is the closed-form Jacobian times a vector, and the stage's power iteration on
    it gives the same spectral-radius estimate as on the dense matrix."""
    rng = np.random.default_rng(7)
    y = 0.4 * rng.standard_normal(n * (2 + m))
    args, work, J = _setup(teacher, np.eye(2), n, m, y)
    fac = woodbury.allocate(n, 2, 2 + m)
    stiff._linearize(dynamics.MSE_REDUCED, y, args, work, np.empty(y.size), np.empty((1, 1)),
                     fac)
    v = rng.standard_normal(y.size)
    out = np.empty(y.size)
    woodbury.jvp(fac, v, out, n, 2 + m)
    np.testing.assert_allclose(out, J @ v, rtol=0, atol=1e-13 * np.abs(J @ v).max())
    a, b = np.empty(y.size), np.empty(y.size)
    rho = stiff._spectral_radius(dynamics.MSE_REDUCED, np.empty((1, 1)), fac, n, a, b)
    rho_dense = stiff._spectral_radius(dynamics.MSE_FULL, J, fac, n, a, b)
    assert rho == pytest.approx(rho_dense, rel=1e-12)
    # An estimate from below of the true spectral radius, within the power iteration's reach.
    exact = np.abs(np.linalg.eigvals(J)).max()
    assert 0.5 * exact <= rho <= 1.5 * exact
