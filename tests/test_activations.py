"""Hermite expansions: closed forms against quadrature, orthonormality, parity, assumptions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss, hermeval
from scipy import integrate, special

from pipeline.engine.activations import (
    NAMED_ACTIVATIONS,
    check_assumptions,
    dual_activation,
    get_activation,
    hermite_table,
    information_exponent,
    quadrature_coefficients,
)
from pipeline.errors import AssumptionWarning, SpecError, TruncationWarning


def _quad_coefficient(f, p: int) -> float:
    """<f, h_p> by adaptive quadrature, independent of the Gauss-Hermite path."""
    hp = lambda x: hermeval(x, [0] * p + [1]) / math.sqrt(math.factorial(p))  # noqa: E731
    val, _ = integrate.quad(lambda x: f(x) * hp(x) * math.exp(-x * x / 2), -np.inf, np.inf,
                            limit=400, epsabs=1e-13, epsrel=1e-12)
    return val / math.sqrt(2 * math.pi)


def test_hermite_table_matches_numpy_and_is_orthonormal():
    x = np.linspace(-4, 4, 17)
    table = hermite_table(x, 12)
    for p in range(13):
        ref = hermeval(x, [0] * p + [1]) / math.sqrt(math.factorial(p))
        np.testing.assert_allclose(table[p], ref, rtol=1e-12, atol=1e-12)
    nodes, w = hermegauss(60)
    w = w / math.sqrt(2 * math.pi)
    H = hermite_table(nodes, 20)
    np.testing.assert_allclose((H * w) @ H.T, np.eye(21), atol=1e-12)


def test_relu_closed_form_matches_adaptive_quadrature():
    relu = get_activation("relu", 12)
    for p in range(13):
        ref = integrate.quad(
            lambda x, p=p: x * hermeval(x, [0] * p + [1]) * math.exp(-x * x / 2), 0, np.inf
        )[0] / math.sqrt(2 * math.pi * math.factorial(p))
        assert relu.coefficients[p] == pytest.approx(ref, abs=1e-12)
    # Known values: a_0 = 1/sqrt(2 pi), a_1 = 1/2, a_2 = 1/sqrt(4 pi); odd p >= 3 vanish.
    assert relu.coefficients[:3] == pytest.approx([1 / math.sqrt(2 * math.pi), 0.5,
                                                   1 / math.sqrt(4 * math.pi)])
    assert np.all(relu.coefficients[3::2] == 0)


def test_gauss_hermite_quadrature_accuracy():
    # Smooth activation: Gauss-Hermite is exact to round-off against the closed form.
    a_quad, norm2 = quadrature_coefficients(special.erf, 16)
    np.testing.assert_allclose(a_quad, get_activation("erf", 16).coefficients, atol=1e-13)
    assert norm2 == pytest.approx(2 / math.pi * math.asin(2 / 3), rel=1e-12)
    # Kinked activation: slow but controlled convergence (documented accuracy 1e-3).
    a_relu, _ = quadrature_coefficients(lambda x: np.maximum(x, 0.0), 16)
    np.testing.assert_allclose(a_relu, get_activation("relu", 16).coefficients, atol=1e-3)
    # Registered quadrature activations against adaptive quadrature.
    fns = {"tanh": np.tanh, "sigmoid": special.expit, "gelu": lambda x: x * special.ndtr(x),
           "softplus": lambda x: np.logaddexp(0.0, x)}
    for name, f in fns.items():
        act = get_activation(name, 10)
        for p in (1, 2, 3, 5, 8):
            assert act.coefficients[p] == pytest.approx(_quad_coefficient(f, p), abs=1e-10), name


def test_parity_zeroes_the_right_coefficients():
    # Even functions have zero odd coefficients; odd functions zero even ones.
    assert np.all(get_activation("abs").coefficients[1::2] == 0)
    for odd in ("tanh", "erf"):
        assert np.all(get_activation(odd).coefficients[0::2] == 0), odd
    # gelu(x) - x/2 and softplus(x) - x/2 are even: only a_1 survives among odd degrees.
    for name in ("gelu", "softplus"):
        a = get_activation(name).coefficients
        assert a[1] == pytest.approx(0.5 if name == "gelu" else 0.5, abs=1e-12)
        assert np.all(np.abs(a[3::2]) < 1e-13), name


def test_energy_and_tail_are_consistent():
    for name in NAMED_ACTIVATIONS:
        act = get_activation(name, 32)
        assert act.tail >= 0
        assert act.relative_tail < 5e-3, name
    assert get_activation("h5").norm2 == 1.0 and get_activation("h5").tail == 0.0


def test_truncation_warning_when_tail_is_large():
    with pytest.warns(TruncationWarning, match="relu"):
        get_activation("relu", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_activation("tanh", 16)


def test_mixture_and_evaluation():
    mix = get_activation({3: 1.0, "5": 0.5})
    assert mix.coefficients[3] == 1.0 and mix.coefficients[5] == 0.5
    assert mix.name == "mix{3:1,5:0.5}"
    x = np.array([-1.3, 0.2, 2.0])
    h3 = (x**3 - 3 * x) / math.sqrt(6)
    h5 = (x**5 - 10 * x**3 + 15 * x) / math.sqrt(120)
    np.testing.assert_allclose(mix(x), h3 + 0.5 * h5, rtol=1e-12)


def test_dual_activation_is_the_gaussian_correlation(rng):
    # g(rho) = E[sigma(w.x) sigma*(v.x)] with w.v = rho: check by Monte Carlo-free quadrature.
    a, b = get_activation("tanh", 24), get_activation("erf", 24)
    rho = 0.6
    nodes, w = hermegauss(80)
    w = w / math.sqrt(2 * math.pi)
    X, Y = np.meshgrid(nodes, nodes, indexing="ij")
    W = np.outer(w, w)
    direct = np.sum(W * np.tanh(X) * special.erf(rho * X + math.sqrt(1 - rho**2) * Y))
    assert dual_activation(a.coefficients, b.coefficients)(rho) == pytest.approx(direct, abs=1e-8)


@pytest.mark.parametrize(
    "spec",
    ["h-1", "swish", "", 3, {"x": 1.0}, {3: float("nan")}, {3: 0.0}, {99: 1.0}, {-1: 1.0}],
)
def test_invalid_activation_names_the_field(spec):
    with pytest.raises(SpecError, match="teacher"):
        get_activation(spec, field_name="teacher")


def test_information_exponent():
    assert information_exponent(get_activation("h4").coefficients) == 4
    assert information_exponent(get_activation("relu").coefficients) == 1
    assert information_exponent(get_activation({0: 1.0}).coefficients) is None


def test_assumption_checks_name_the_broken_assumption():
    relu = get_activation("relu").coefficients
    issues = check_assumptions(relu, relu)
    assert [i.assumption for i in issues] == ["1.1"] and "p* = 1" in issues[0].message
    h2 = get_activation("h2").coefficients
    assert any("rotationally" in i.message for i in check_assumptions(h2, h2))
    mixed = get_activation({3: 1.0, 5: 1.0}).coefficients
    neg = get_activation({3: 1.0, 5: -1.0}).coefficients
    assert [i.assumption for i in check_assumptions(neg, mixed)] == ["1.2"]
    h3 = get_activation("h3").coefficients
    gram = np.array([[1.0, -0.2], [-0.2, 1.0]])
    assert [i.assumption for i in check_assumptions(h3, h3, gram)] == ["1.4"]
    none = check_assumptions(get_activation("h4").coefficients, h3)
    assert none[0].severity == "error"
    assert check_assumptions(h3, h3, np.eye(3)) == []


def test_assumption_warning_reaches_simulate():
    import pipeline

    with pytest.warns(AssumptionWarning, match="1.1"):
        pipeline.simulate({"teacher": "relu", "d": 50, "k": 2}, 2)
    with pytest.raises(SpecError, match="no dynamics"):
        pipeline.simulate({"teacher": "h3", "student": "h4", "d": 50, "k": 2}, 2)
