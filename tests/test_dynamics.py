"""The reduced k-dimensional dynamics against the explicit d-dimensional flow and GD."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from pipeline.engine import dynamics
from pipeline.engine.activations import dual_coefficients, get_activation
from pipeline.engine.frames import equiangular_gram, explicit_frame
from pipeline.engine.initial import explicit_weights, sample_initial
from pipeline.engine.integrate import Observation, StopRule, Tolerances, solve

D = 200
SNAPS = np.concatenate([[0.0], np.logspace(-2, 5, 40)])
TIGHT = Tolerances(rtol=1e-10, atol=1e-14)

CASES = {
    "h2": ("h2", "h2"),
    "h3": ("h3", "h3"),
    "h4": ("h4", "h4"),
    "mixture": ({3: 1.0, 5: 0.5, 6: 0.2}, {3: 0.8, 4: 0.3, 5: 0.6}),  # sigma != sigma*
}


def _problem(case, beta, rng, n=4, k=3):
    student, teacher = CASES[case]
    c = dual_coefficients(get_activation(student).coefficients,
                          get_activation(teacher).coefficients)
    gram = equiangular_gram(k, beta)
    draw = sample_initial(rng, n, D, gram, "positive")
    # A random orientation of frame and weights: the reduction must not rely on coordinates.
    Q = ortho_group.rvs(D, random_state=rng)
    V = Q @ explicit_frame(gram, D)
    W0 = explicit_weights(draw.z, draw.chi2, D, rng) @ Q.T
    y_red = np.column_stack([W0 @ V, draw.r])
    return c, gram, V, W0, y_red


@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["flow", "gd"])
def test_reduced_matches_full_d(case, beta, method, rng):
    c, gram, V, W0, y_red = _problem(case, beta, rng)
    kwargs = dict(method=method, lr=0.1 if method == "gd" else None, tolerances=TIGHT,
                  stop=StopRule(t_max=SNAPS[-1], gtol=1e-9, max_steps=200_000),
                  observe=Observation(0.5, SNAPS), threads=1)
    red = solve(dynamics.REDUCED, y_red, dynamics.reduced_args(gram, c), **kwargs)
    full = solve(dynamics.FULL, W0, dynamics.full_args(V, c), **kwargs)
    assert np.all(red.status == 0) and np.all(full.status == 0)
    # Whole trajectories, through the saddle, the escape and the convergence.
    assert np.max(np.abs(red.u_t - full.u_t)) <= 1e-6
    np.testing.assert_allclose(red.escape_time, full.escape_time, rtol=1e-6)
    np.testing.assert_allclose(red.y[:, :-1], full.y @ V, atol=1e-6)
    # The passenger r really is ||w_perp||.
    P = V @ np.linalg.solve(gram, V.T)
    r_full = np.linalg.norm(full.y - full.y @ P, axis=1)
    np.testing.assert_allclose(red.y[:, -1], r_full, atol=1e-6)
    if method == "gd":
        assert np.array_equal(red.steps, full.steps)


def test_reduced_gradient_norm_is_the_spherical_gradient(rng):
    c, gram, V, W0, y_red = _problem("mixture", 0.3, rng)
    args_r, args_f = dynamics.reduced_args(gram, c), dynamics.full_args(V, c)
    work = np.empty(4 * gram.shape[0])
    for yr, w in zip(y_red, W0, strict=True):
        # Explicit spherical gradient of L(w) = -sum_j g(v_j.w): -(I - w w^T) V g'(V^T w).
        u = V.T @ w
        a = np.polynomial.polynomial.polyval(u, np.polynomial.polynomial.polyder(c))
        grad = V @ a - (w @ V @ a) * w
        assert dynamics.grad_norm(dynamics.REDUCED, yr, args_r, work) == pytest.approx(
            np.linalg.norm(grad), rel=1e-10)
        assert dynamics.grad_norm(dynamics.FULL, w, args_f, work) == pytest.approx(
            np.linalg.norm(grad), rel=1e-10)


def test_one_gd_step_is_the_explicit_projected_step(rng):
    c, gram, V, W0, y_red = _problem("h3", 0.2, rng)
    args = dynamics.reduced_args(gram, c)
    work = np.empty(4 * gram.shape[0])
    out = np.empty(y_red.shape[1])
    lr = 0.7
    for yr, w in zip(y_red, W0, strict=True):
        u = V.T @ w
        a = 3 * u**2
        w_next = w + lr * (V @ a - (u @ a) * w)
        w_next /= np.linalg.norm(w_next)
        dynamics.gd_map(dynamics.REDUCED, yr, args, lr, work, out)
        np.testing.assert_allclose(out[:-1], V.T @ w_next, atol=1e-14)
        P = V @ np.linalg.solve(gram, V.T)
        assert out[-1] == pytest.approx(np.linalg.norm(w_next - P @ w_next), abs=1e-14)
