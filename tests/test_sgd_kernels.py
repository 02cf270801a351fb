"""The chain's own random numbers (engine/sgd_kernels.py) against scipy's distributions."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import stats

from pipeline.engine.activations import get_activation, hermite_table
from pipeline.engine.sgd import he_coefficients
from pipeline.engine.sgd_kernels import chi2, hermite_series, normal


@numba.njit
def _normals(state, n):
    spare = np.zeros(2)
    out = np.empty(n)
    for i in range(n):
        out[i] = normal(state, spare)
    return out


@numba.njit
def _chi2s(state, n, df):
    spare = np.zeros(2)
    out = np.empty(n)
    for i in range(n):
        out[i] = chi2(state, spare, df)
    return out


def _state(seed):
    return np.random.SeedSequence(seed).generate_state(4, np.uint64)


def test_ziggurat_normals_are_standard_gaussian_tails_included():
    x = _normals(_state(1), 2_000_000)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    # The tail beyond the ziggurat's base r = 3.654 has its own sampler: check its mass.
    tail = (np.abs(x) > 3.654).mean()
    expected = 2 * stats.norm.sf(3.654)
    assert abs(tail - expected) < 5 * np.sqrt(expected / x.size)


@pytest.mark.parametrize("df", [0.5, 1.0, 3.0, 37.0, 1e6, 1e12])
def test_chi_square_any_degrees_of_freedom(df):
    y = _chi2s(_state(2), 200_000, df)
    assert stats.kstest(y, "chi2", args=(df,)).pvalue > 1e-3


def test_chi_square_zero_degrees_of_freedom_is_zero():
    assert (_chi2s(_state(3), 10, 0.0) == 0).all()


def test_same_state_same_numbers():
    np.testing.assert_array_equal(_normals(_state(4), 1000), _normals(_state(4), 1000))


@pytest.mark.parametrize("name", ["h3", "relu", "tanh"])
def test_hermite_series_is_the_normalized_expansion(name):
    a = get_activation(name, 16).coefficients
    t = np.linspace(-3, 3, 13)
    expected = (a[:, None] * hermite_table(t, 16)).sum(axis=0)
    got = [hermite_series(he_coefficients(a), x) for x in t]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
