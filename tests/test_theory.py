"""Closed forms of the paper against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from analysis.theory import (
    average_overlap,
    beta_c,
    coupon_failure_exact,
    coupon_limit,
    coupon_lower_bound,
    coupon_union_bound,
    escape_exponent,
)


@pytest.mark.parametrize("n,k", [(1, 1), (3, 2), (4, 3), (6, 3), (5, 4)])
def test_coupon_exact_by_enumeration(n, k):
    # Every assignment of n neurons to k index vectors is equally likely.
    fails = sum(len(set(a)) < k for a in itertools.product(range(k), repeat=n))
    assert coupon_failure_exact(n, k) == pytest.approx(fails / k**n, abs=1e-12)


@pytest.mark.parametrize("n,k", [(2, 2), (8, 4), (40, 8), (64, 16), (10, 20)])
def test_coupon_bounds_bracket_the_exact_value(n, k):
    exact = coupon_failure_exact(n, k)
    assert coupon_lower_bound(n, k) <= exact + 1e-15
    assert exact <= min(1.0, k * (1 - 1 / k) ** n) + 1e-15 <= coupon_union_bound(n, k) + 1e-15


def test_coupon_limit_is_the_proportional_limit():
    gamma = 2.0
    k = 10**5
    assert coupon_lower_bound(int(gamma * k), k) == pytest.approx(coupon_limit(gamma), rel=1e-4)


def test_beta_c_and_exponents():
    assert beta_c(3, 2) == pytest.approx(1 / 3)
    assert beta_c(4, 10) == pytest.approx(2 / 12)
    assert escape_exponent(3) == 0.5 and escape_exponent(4) == 1.0 and escape_exponent(2) == 0
    with pytest.raises(ValueError):
        beta_c(1, 2)


def test_average_overlap_is_the_normalized_mean():
    from pipeline.engine.frames import equiangular_gram, explicit_frame

    for k, beta in [(2, 0.3), (5, 0.1), (20, 0.6)]:
        V = explicit_frame(equiangular_gram(k, beta), k)
        w = V.sum(1) / np.linalg.norm(V.sum(1))
        np.testing.assert_allclose(V.T @ w, average_overlap(k, beta), atol=1e-12)
    assert average_overlap(4, 0.0) == pytest.approx(0.5)
    assert math.isclose(average_overlap(7, 1.0), 1.0)
