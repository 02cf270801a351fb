"""Exact initial overlaps against explicit d-dimensional sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from pipeline.engine.frames import equiangular_gram
from pipeline.engine.initial import (
    _sample_equiangular_g,
    explicit_weights,
    sample_initial,
    sample_initial_batch,
)
from pipeline.errors import SpecError

from conftest import random_frame, uniform_sphere

N = 4000
# KS rejection level. About a hundred KS tests run here, so the level is Bonferroni-sized;
# with fixed seeds the outcome is deterministic. `test_ks_has_power` shows it still bites.
ALPHA = 1e-4


def _explicit(gram, d, init, rng, n=N):
    """Overlaps V^T w of explicit uniform w in R^d (rejection for the conditioned inits)."""
    V = random_frame(gram, d, rng)
    k = gram.shape[0]
    out = []
    while sum(len(o) for o in out) < n:
        U = uniform_sphere(20 * n if init != "uniform" else n, d, rng) @ V
        if init == "positive":
            U = U[np.all(U > 0, axis=1)]
        elif init == "uncollected":
            U = U[np.argmax(U, axis=1) != k - 1]
        out.append(U)
    return np.concatenate(out)[:n]


def _ks(a, b):
    return stats.ks_2samp(a, b).pvalue


@pytest.mark.parametrize("d", [5, 50, 1000])
@pytest.mark.parametrize(
    "beta,init", [(0.0, "uniform"), (0.3, "uniform"), (0.0, "positive"), (0.3, "positive"),
                  (0.3, "uncollected")]
)
def test_initial_overlaps_match_explicit_sampling(d, beta, init, rng):
    k = 3
    gram = equiangular_gram(k, beta)
    draw = sample_initial(rng, N, d, gram, init)
    ref = _explicit(gram, d, init, rng)
    for j in range(k):
        assert _ks(draw.u[:, j], ref[:, j]) > ALPHA, f"marginal {j}"
    assert _ks(np.linalg.norm(draw.u, axis=1), np.linalg.norm(ref, axis=1)) > ALPHA
    # A statistic that mixes coordinates (dependence, not just marginals).
    assert _ks(draw.u[:, 0] - draw.u[:, 1], ref[:, 0] - ref[:, 1]) > ALPHA
    # r is the norm of the part outside span(V): u^T A^-1 u + r^2 = 1 exactly.
    quad = np.einsum("ij,jk,ik->i", draw.u, np.linalg.inv(gram), draw.u)
    np.testing.assert_allclose(quad + draw.r**2, 1.0, atol=1e-12)


def test_ks_has_power(rng):
    """The comparison detects a plausible bug: chi-square with d instead of d - k dof."""
    k, d = 3, 5
    z = rng.standard_normal((N, k))
    wrong = z / np.sqrt((z * z).sum(1) + rng.chisquare(d, N))[:, None]
    ref = _explicit(np.eye(k), d, "uniform", rng)
    assert _ks(np.linalg.norm(wrong, axis=1), np.linalg.norm(ref, axis=1)) < ALPHA


@pytest.mark.parametrize("gram", [
    [[1.0, 0.2, 0.0], [0.2, 1.0, 0.4], [0.0, 0.4, 1.0]],
    # equal negative off-diagonals: equiangular in shape but outside the beta-mixture sampler
    [[1.0, -0.3, -0.3], [-0.3, 1.0, -0.3], [-0.3, -0.3, 1.0]],
])
def test_general_gram_positive_matches_explicit(gram, rng):
    gram = np.array(gram)
    draw = sample_initial(rng, N, 40, gram, "positive")
    ref = _explicit(gram, 40, "positive", rng)
    assert np.all(draw.u > 0)
    for j in range(3):
        assert _ks(draw.u[:, j], ref[:, j]) > ALPHA


@pytest.mark.parametrize("k,beta", [(20, 0.1), (20, 0.5), (5, 0.9)])
def test_equiangular_positive_mixing_variable_is_exact(k, beta, rng):
    """The scalar g has density phi(g) Phi(c g)^k: compare with the CDF by quadrature."""
    c = math.sqrt(beta / (1 - beta))
    g = _sample_equiangular_g(rng, 3000, k, c)
    dens = lambda x: math.exp(-x * x / 2 + k * special.log_ndtr(c * x))  # noqa: E731
    Z = integrate.quad(dens, -np.inf, np.inf)[0]

    def cdf(xs):
        return np.array([integrate.quad(dens, -np.inf, x)[0] / Z for x in np.atleast_1d(xs)])

    assert stats.kstest(g, cdf).pvalue > ALPHA


def test_positive_init_works_for_k20_any_d(rng):
    gram = equiangular_gram(20, 0.2)
    for d in (20, 1000, 10**12):
        draw = sample_initial(rng, 200, d, gram, "positive")
        assert np.all(draw.u > 0) and np.all(np.isfinite(draw.u))
    # At d = 10^12 the overlaps are ~ d^-1/2 and r is 1 to ~1e-11.
    assert np.median(np.linalg.norm(draw.u, axis=1)) < 1e-4
    assert np.all(np.abs(draw.r - 1) < 1e-9)


def test_large_d_law_is_the_gaussian_limit(rng):
    # For d -> infinity, sqrt(d) u -> N(0, A): a check at d = 10^12 with no d-vector.
    gram = equiangular_gram(2, 0.4)
    draw = sample_initial(rng, N, 10**12, gram, "uniform")
    scaled = draw.u * 1e6
    assert _ks(scaled[:, 0], rng.standard_normal(N)) > ALPHA
    np.testing.assert_allclose(np.cov(scaled.T), gram, atol=0.06)


def test_batch_equals_per_seed(rng):
    gram = equiangular_gram(3, 0.3)
    seeds = [np.random.default_rng(s) for s in range(5)]
    again = [np.random.default_rng(s) for s in range(5)]
    batch = sample_initial_batch(seeds, 4, 100, gram, "positive")
    for i, r in enumerate(again):
        one = sample_initial(r, 4, 100, gram, "positive")
        assert np.array_equal(one.u, batch.u[i])


def test_explicit_weights_reproduce_the_overlaps(rng):
    from pipeline.engine.frames import explicit_frame

    gram = equiangular_gram(3, 0.25)
    draw = sample_initial(rng, 10, 300, gram, "positive")
    W = explicit_weights(draw.z, draw.chi2, 300, rng)
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-14)
    np.testing.assert_allclose(W @ explicit_frame(gram, 300), draw.u, atol=1e-14)


def test_d_equal_k_lies_in_the_span(rng):
    draw = sample_initial(rng, 100, 3, np.eye(3), "uniform")
    np.testing.assert_allclose(np.linalg.norm(draw.u, axis=1), 1.0, atol=1e-14)
    assert np.all(draw.r == 0)


def test_bad_init_is_named():
    with pytest.raises(SpecError, match="init"):
        sample_initial(np.random.default_rng(0), 3, 10, np.eye(2), "orthant")
    with pytest.raises(SpecError, match="init"):
        sample_initial(np.random.default_rng(0), 3, 10, np.eye(1), "uncollected")
