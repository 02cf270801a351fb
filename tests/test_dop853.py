"""The order-8 explicit method of the MSE stage (``dop853.py``).

Independent truth: scipy's DOP853 (``solve_ivp``'s, a separate implementation of the same
method) on the same field, step for step; the method's order from step halving.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import DOP853
from scipy.integrate._ivp import dop853_coefficients as scipy_tableau

from pipeline.engine import dop853, dynamics, mse
from pipeline.engine.activations import get_activation


def _problem(n=3, seed=0):
    """A reduced MSE state of h3 (k = 2, correlated teachers) away from rest, its field."""
    a = get_activation("h3").coefficients
    args = mse.reduced_args(np.array([[1.0, 0.2], [0.2, 1.0]]), a, a, n, n)
    rng = np.random.default_rng(seed)
    M = 0.3 * rng.standard_normal((n, 2))
    Z = np.linalg.qr(rng.standard_normal((n, n)))[0] * np.sqrt(1 - np.sum(M ** 2, axis=1))
    y0 = mse.pack_reduced(M, Z)
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))

    def f(y):
        out = np.empty(y.size)
        dynamics.vector_field(dynamics.MSE_REDUCED, y, args, work, out)
        return out

    return args, work, y0, f


def _step(args, work, y, h):
    K = np.empty((dop853.N_ROWS, y.size))
    ys, yn = np.empty(y.size), np.empty(y.size)
    dynamics.vector_field(dynamics.MSE_REDUCED, y, args, work, K[0])
    dop853.step(dynamics.MSE_REDUCED, y, h, args, work, K, ys, yn)
    return K, ys, yn


def test_tableau_is_scipys():
    for name in ("A", "B", "C", "E3", "E5", "D"):
        np.testing.assert_array_equal(getattr(dop853, name), getattr(scipy_tableau, name))


def test_one_step_and_dense_output_match_scipy():
    """A step that scipy's DOP853 accepts as its first: the same new state, error norm and
    dense output (to round-off)."""
    args, work, y0, f = _problem()
    h, rtol, atol = 0.05, 1e-8, 1e-12
    ref = DOP853(lambda _t, y: f(y), 0.0, y0, 10.0, rtol=rtol, atol=atol, first_step=h)
    ref.step()
    assert ref.t == h  # accepted at the first try
    K, ys, yn = _step(args, work, y0, h)
    np.testing.assert_allclose(yn, ref.y, rtol=0, atol=1e-15)
    scale = atol + rtol * np.maximum(np.abs(y0), np.abs(ref.y))
    assert np.isclose(dop853.error_norm(K, h, y0, yn, np.full(y0.size, atol), rtol),
                      ref._estimate_error_norm(ref.K, h, scale), rtol=1e-9)
    F = np.empty((7, y0.size))
    dop853.dense_prepare(dynamics.MSE_REDUCED, y0, yn, h, args, work, K, ys, F)
    dense = ref.dense_output()
    out = np.empty(y0.size)
    for x in (0.0, 0.3, 0.77, 1.0):
        dop853.dense(y0, F, x, out)
        np.testing.assert_allclose(out, dense(x * h), rtol=0, atol=1e-15)


def test_order_eight():
    """Global error at t = 1 with 8, 16, 32 fixed steps against 1024 steps: halving h
    divides it by ~2^8 (measured: 2^7.96, 2^8.25; errors 5e-9 to 7e-14)."""
    args, work, y0, _ = _problem(seed=1)
    T = 1.0

    def solve(steps):
        y = y0.copy()
        for _ in range(steps):
            _, _, y = _step(args, work, y, T / steps)
        return y

    ref = solve(1024)
    errs = [np.max(np.abs(solve(s) - ref)) for s in (8, 16, 32)]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert errs[-1] > 1e-14  # above round-off, so the ratios measure the method
    assert np.all((orders > 7.5) & (orders < 9.0)), (errs, orders)
