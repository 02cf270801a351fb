"""Double-double arithmetic and the MSE field computed with it (``ddouble.py``,
``mse.reduced_field_accurate``).

Independent truth: exact rational arithmetic (``fractions.Fraction``) on the same floats.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pipeline.engine import ddouble, dynamics, mse
from pipeline.engine.activations import get_activation

EPS = float(np.finfo(float).eps)


def test_error_free_transformations():
    """two_sum and two_prod return the rounding error exactly; the double-double sum and
    product are exact to ~eps^2 (a plain float would be off by ~eps)."""
    rng = np.random.default_rng(0)
    for a, b in rng.standard_normal((200, 2)) * np.array([1.0, 1e-7]):
        s, e = ddouble.two_sum(a, b)
        assert Fraction(s) + Fraction(e) == Fraction(a) + Fraction(b)
        p, e = ddouble.two_prod(a, b)
        assert Fraction(p) + Fraction(e) == Fraction(a) * Fraction(b)
        x = ddouble.two_prod(a, 1.0 / 3.0)
        y = ddouble.two_sum(b, 1e-20)
        for got, want in [(ddouble.add(*x, *y), (Fraction(x[0]) + Fraction(x[1])
                                                   + Fraction(y[0]) + Fraction(y[1]))),
                          (ddouble.mul(*x, *y), ((Fraction(x[0]) + Fraction(x[1]))
                                                  * (Fraction(y[0]) + Fraction(y[1]))))]:
            err = abs(Fraction(got[0]) + Fraction(got[1]) - want)
            assert err <= 4 * EPS * EPS * abs(want)


def exact_field(y, args):
    """The reduced MSE field of the float state ``y``, in exact rational arithmetic (the
    formulas of ``mse.py``'s module docstring), rounded once."""
    A, Ainv, _, extra = args
    k = A.shape[0]
    n = mse.mse_n_neurons(args)
    K = k + int(extra[mse._ROW_META, mse._META_M])
    meta = extra[mse._ROW_META]
    dss = [Fraction(float(c)) for c in extra[mse._ROW_DSS][:int(meta[mse._META_LDSS])]]
    dst = [Fraction(float(c)) for c in extra[mse._ROW_DST][:int(meta[mse._META_LDST])]]

    def poly(c, x):
        return sum(ci * x ** q for q, ci in enumerate(c))

    Y = [[Fraction(float(y[i * K + x])) for x in range(K)] for i in range(n)]
    Af = [[Fraction(float(v)) for v in row] for row in A]
    Ai = [[Fraction(float(v)) for v in row] for row in Ainv]
    G = [[sum(Y[i][l] * Ai[l][j] for l in range(k)) for j in range(k)] + Y[i][k:]
         for i in range(n)]
    Q = [[sum(G[i][x] * Y[l][x] for x in range(K)) for l in range(n)] for i in range(n)]
    a = [[poly(dst, Y[i][j]) for j in range(k)] for i in range(n)]
    C = [[Fraction(0)] * n for _ in range(n)]
    for i in range(n):
        C[i][i] = sum(Y[i][j] * a[i][j] for j in range(k))
    for i in range(n):
        for l in range(i + 1, n):
            b = poly(dss, Q[i][l])
            C[i][l] = C[l][i] = b
            C[i][i] -= b * Q[i][l]
            C[l][l] -= b * Q[i][l]
    out = np.empty(n * K)
    for i in range(n):
        for x in range(K):
            v = -2 * sum(C[i][l] * Y[l][x] for l in range(n))
            if x < k:
                v += 2 * sum(a[i][l] * Af[l][x] for l in range(k))
            out[i * K + x] = float(v)
    return out


def _rest_point():
    """A global minimum of the odd (h3) loss with orthonormal teachers, rounded to floats:
    two neurons on the teacher directions and an antipodal pair with O(1) overlaps (it
    cancels), so the velocity is a sum of O(1) terms that cancel."""
    M = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.3], [-0.6, -0.3]])
    Z = np.zeros((4, 4))
    Z[0, 2] = np.sqrt(1 - 0.45)
    Z[0, 3] = -Z[0, 2]
    return mse.pack_reduced(M, Z)


def _fields(y, args):
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    plain, dd = np.empty(y.size), np.empty(y.size)
    dynamics.vector_field(dynamics.MSE_REDUCED, y, args, work, plain)
    mse.reduced_field_accurate(y, args, work, dd)
    return plain, dd, exact_field(y, args)


@pytest.mark.parametrize("teacher", ["h3", "h4", "relu"])
def test_accurate_field_on_generic_states(teacher):
    """Away from rest (correlated teachers, random state) both fields agree with the exact
    one: the double-double field to ~eps of each component, the plain one to round-off."""
    a = get_activation(teacher).coefficients
    args = mse.reduced_args(np.array([[1.0, 0.1], [0.1, 1.0]]), a, a, 4, 4)
    y = 0.5 * np.random.default_rng(1).standard_normal(24)
    plain, dd, exact = _fields(y, args)
    assert np.all(np.abs(dd - exact) <= EPS * np.abs(exact) + 1e-29)
    assert np.max(np.abs(plain - exact)) <= 1e-13


def test_accurate_field_at_rest():
    """At a rest point the plain field is pure round-off (~eps times the O(1) terms, far
    above the exact velocity of the rounded state); the double-double field is the exact
    velocity to ~eps of itself (what lets Rosenbrock steps at rest grow, ``stiff.py``)."""
    a = get_activation("h3").coefficients
    args = mse.reduced_args(np.eye(2), a, a, 4, 4)
    plain, dd, exact = _fields(_rest_point(), args)
    assert np.all(np.abs(dd - exact) <= EPS * np.abs(exact) + 1e-30)
    assert np.max(np.abs(plain - exact)) > 10 * np.max(np.abs(exact))
