"""The saddle-to-minimum transition (Theorem 3.2) from the explicit spherical Hessian."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.hessian import hessian_at_average, hessian_critical_beta, hessian_spectrum
from analysis.theory import beta_c, hessian_at_average_closed_form


def _pure(p):
    c = np.zeros(p + 1)
    c[p] = 1.0
    return c


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("p_star", [3, 4])
def test_hessian_sign_change_sits_at_beta_c(k, p_star):
    assert hessian_critical_beta(_pure(p_star), k) == pytest.approx(beta_c(p_star, k), abs=1e-3)


@pytest.mark.parametrize("beta", [0.0, 0.15, 0.5, 0.8])
def test_explicit_hessian_matches_equation_18(beta):
    c = np.array([0.1, 0.0, 0.2, 1.0, 0.0, 0.4])  # sigma != sigma*, several degrees
    k = 4
    inside, outside = hessian_at_average(c, k, beta)
    inside_cf, outside_cf = hessian_at_average_closed_form(c, k, beta)
    # k - 1 degenerate in-span eigenvalues (equiangular symmetry) and one outside the span.
    np.testing.assert_allclose(inside, np.full(k - 1, inside_cf), atol=1e-10)
    assert outside == pytest.approx(outside_cf, abs=1e-10)


def test_mixture_threshold_lies_between_the_theorem_bounds():
    # For a polynomial teacher of degree P: saddle below (p*-2)/(k+p*-2), minimum above
    # (P-2)/(k+P-2) (Theorem 3.2); the explicit threshold falls in between.
    c = np.array([0, 0, 0, 1.0, 0, 0.5])
    k = 3
    b = hessian_critical_beta(c, k)
    assert beta_c(3, k) <= b <= beta_c(5, k)


def test_spectrum_table():
    spec = hessian_spectrum(_pure(3), 2, np.linspace(0, 0.9, 10))
    assert list(spec.columns) == ["beta", "in_span", "outside_span"]
    assert (spec["outside_span"] > 0).all()  # never a maximum in d > k
    assert spec["in_span"].iloc[0] < 0 < spec["in_span"].iloc[-1]
