"""The MSE loss: reduced (Q, M) dynamics against explicit d-dimensional truth.

Independent references: the full-d flow in a random orientation, explicit d-dimensional
sampling (KS), the correlation flow at twice the time (n = 1), the closed (Q, M) equations
of docs/design.md §1.2 in numpy, and the paper's Figure 3 claim.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.stats import ortho_group

import pipeline
from pipeline.engine import dynamics, mse
from pipeline.engine.activations import get_activation
from pipeline.engine.frames import equiangular_gram, explicit_frame
from pipeline.engine.initial import (
    explicit_coupled_weights,
    orthogonal_rank,
    sample_initial,
    sample_initial_batch,
    sample_orthogonal_factor,
)
from pipeline.engine.integrate import Observation, StopRule, Tolerances, solve
from pipeline.engine.params import resolve_point
from pipeline.engine.status import CONVERGED
from pipeline.errors import AssumptionWarning

from conftest import random_frame, uniform_sphere

K = 2
TIGHT = Tolerances(rtol=1e-10, atol=1e-14)
SNAPS = np.concatenate([[0.0], np.logspace(-2, 4, 40)])


@pytest.fixture(autouse=True)
def _quiet_assumptions():
    # tanh has p* = 1 (Assumption 1.1): intended here, the MSE comparison does not need it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssumptionWarning)
        yield


def _coupled(act, n, d, beta, rng, init="uniform"):
    """One coupled draw: reduced state, and the same network explicitly in R^d, randomly
    rotated so that the reduction cannot lean on mimflow's choice of coordinates."""
    a = get_activation(act).coefficients
    A = equiangular_gram(K, beta)
    draw = sample_initial(rng, n, d, A, init)
    Z = sample_orthogonal_factor([rng], draw.r[None], d, K)[0]
    y = mse.pack_reduced(draw.u, Z)
    O = ortho_group.rvs(d, random_state=rng)
    V = O @ explicit_frame(A, d)
    W = explicit_coupled_weights(draw.z, draw.chi2, Z, d, rng) @ O.T
    return a, A, orthogonal_rank(n, d, K), y, V, W


def _run(model, y0, args, method="flow", t_max=SNAPS[-1]):
    return solve(model, np.atleast_2d(y0), args, method=method,
                 lr=0.05 if method == "gd" else None, tolerances=TIGHT,
                 stop=StopRule(t_max=t_max, gtol=1e-8, max_steps=400_000),
                 observe=Observation(0.5, SNAPS), threads=1)


@pytest.mark.parametrize("beta", [0.0, 0.3], ids=["orthogonal", "equiangular"])
@pytest.mark.parametrize("n", [1, 3, 10])
@pytest.mark.parametrize("act", ["h3", "h4", "tanh"])
def test_reduced_matches_full_d(act, n, beta, rng):
    a, A, m, y, V, W = _coupled(act, n, 25, beta, rng)
    red = _run(dynamics.MSE_REDUCED, y, mse.reduced_args(A, a, a, n, m))
    full = _run(dynamics.MSE_FULL, W.ravel(), mse.full_args(V, a, a, n))
    assert red.status[0] == full.status[0]
    # Whole trajectories: the overlaps and the loss at every snapshot, through the saddle.
    assert np.max(np.abs(red.u_t - full.u_t)) <= 1e-6
    assert np.max(np.abs(red.loss_t - full.loss_t)) <= 1e-6
    np.testing.assert_allclose(red.escape_time, full.escape_time, rtol=1e-6)
    Q, M = mse.gram_from_reduced(red.y[0], A, n)
    Wt = full.y[0].reshape(n, -1)
    np.testing.assert_allclose(Q, Wt @ Wt.T, atol=1e-6)
    np.testing.assert_allclose(M, Wt @ V, atol=1e-6)


@pytest.mark.parametrize("act,n,d", [("h3", 10, 6), ("h4", 4, 3), ("tanh", 3, 2)])
def test_rank_deficient_span(act, n, d, rng):
    """d - k < n: the perp parts span only d - k dimensions (none at all when d = k)."""
    a, A, m, y, V, W = _coupled(act, n, d, 0.2, rng)
    assert m == d - K
    red = _run(dynamics.MSE_REDUCED, y, mse.reduced_args(A, a, a, n, m))
    full = _run(dynamics.MSE_FULL, W.ravel(), mse.full_args(V, a, a, n))
    assert np.max(np.abs(red.u_t - full.u_t)) <= 1e-6
    assert np.max(np.abs(red.loss_t - full.loss_t)) <= 1e-6
    Q, _ = mse.gram_from_reduced(red.y[0], A, n)
    assert np.linalg.matrix_rank(Q, tol=1e-8) <= d


@pytest.mark.parametrize("act", ["h3", "tanh"])
def test_gd_map_matches_full_d(act, rng):
    a, A, m, y, V, W = _coupled(act, 5, 30, 0.25, rng)
    red = _run(dynamics.MSE_REDUCED, y, mse.reduced_args(A, a, a, 5, m), "gd", t_max=300.0)
    full = _run(dynamics.MSE_FULL, W.ravel(), mse.full_args(V, a, a, 5), "gd", t_max=300.0)
    assert np.array_equal(red.steps, full.steps) and red.status[0] == full.status[0]
    # Snapshots past the stop are NaN (status t_max) in both; compare the others.
    assert np.array_equal(np.isnan(red.u_t), np.isnan(full.u_t))
    assert np.nanmax(np.abs(red.u_t - full.u_t)) <= 1e-6


def test_one_step_and_gradient_are_the_explicit_spherical_ones(rng):
    """Velocity, gradient norm, one GD step and the loss against explicit formulas in R^d,
    with a student that differs from the teacher (and has p = 0 and p = 1 terms)."""
    student, teacher = {3: 1.0, 4: 0.4, 1: 0.2, 0: 0.3}, {3: 0.7, 4: 0.5, 5: 0.3, 0: -0.2}
    n, d = 6, 40
    _, A, m, y, V, W = _coupled("h3", n, d, 0.3, rng)
    a, b = get_activation(student).coefficients, get_activation(teacher).coefficients
    args = mse.reduced_args(A, a, b, n, m)
    P = np.polynomial.polynomial
    M, Q = W @ V, W @ W.T
    B = P.polyval(Q, P.polyder(a * a))
    np.fill_diagonal(B, 0.0)
    # Euclidean gradient of E[(f - f*)^2] for w_i, then projected on the sphere.
    euclid = 2 * (B @ W) - 2 * P.polyval(M, P.polyder(a * b)) @ V.T
    G = -(euclid - np.sum(euclid * W, axis=1, keepdims=True) * W)
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    dy = np.empty_like(y)
    dynamics.vector_field(dynamics.MSE_REDUCED, y, args, work, dy)
    np.testing.assert_allclose(mse.unpack_reduced(dy, n, K)[0], G @ V, atol=1e-12)
    assert dynamics.grad_norm(dynamics.MSE_REDUCED, y, args, work) == pytest.approx(
        np.linalg.norm(G), rel=1e-10)
    lr = 0.3
    W1 = W + lr * G
    W1 /= np.linalg.norm(W1, axis=1, keepdims=True)
    out = np.empty_like(y)
    dynamics.gd_map(dynamics.MSE_REDUCED, y, args, lr, work, out)
    Q1, M1 = mse.gram_from_reduced(out, A, n)
    np.testing.assert_allclose(M1, W1 @ V, atol=1e-13)
    np.testing.assert_allclose(Q1, W1 @ W1.T, atol=1e-13)
    # The loss the kernels record is E[(f - f*)^2] itself: a Monte Carlo estimate agrees.
    x = rng.standard_normal((100_000, d))
    f = get_activation(student)(x @ W.T).sum(1) - get_activation(teacher)(x @ V).sum(1)
    loss = mse.loss_from_overlaps(Q, M, A, a, b)
    assert loss == pytest.approx(np.mean(f**2), rel=3e-2)
    obs = np.empty(n * K + 1)
    dynamics.observables(dynamics.MSE_REDUCED, y, args, obs)
    assert obs[-1] == pytest.approx(loss, rel=1e-12)


def test_reduced_coordinates_follow_the_closed_qm_equations(rng):
    """d/dt (M A^-1 M^T + Z^T Z) from the kernel equals dQ/dt of the (Q, M) system
    (docs/design.md §1.2)."""
    act = {3: 1.0, 5: 0.3, 2: 0.2}
    a, A, m, y, V, W = _coupled(act, 7, 12, 0.3, rng)
    args = mse.reduced_args(A, a, a, 7, m)
    dy = np.empty_like(y)
    dynamics.vector_field(dynamics.MSE_REDUCED, y, args,
                          np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args)), dy)
    M, Z = mse.unpack_reduced(y, 7, K)
    dM, dZ = mse.unpack_reduced(dy, 7, K)
    Ainv = np.linalg.inv(A)
    dQ = dM @ Ainv @ M.T + M @ Ainv @ dM.T + dZ.T @ Z + Z.T @ dZ
    Q = M @ Ainv @ M.T + Z.T @ Z
    dQ_ref, dM_ref = mse.qm_velocity(Q, M, A, a, a)
    np.testing.assert_allclose(dM, dM_ref, atol=1e-12)
    np.testing.assert_allclose(dQ, dQ_ref, atol=1e-12)
    assert np.allclose(np.diag(dQ_ref), 0.0, atol=1e-12)  # the flow stays on the spheres


# ---------------------------------------------------------------------------------------------
# Initial conditions.

N_SAMPLES = 4000
ALPHA = 1e-4  # Bonferroni-sized KS level (about 40 tests here); deterministic with fixed seeds


def _random_frame(gram, d, rng):
    """A frame with Gram ``gram`` in a random orientation, at O(d k^2) cost (the uniform
    rows it is tested against are rotation invariant, so any orientation is truth)."""
    if d <= 50:
        return random_frame(gram, d, rng)
    basis, _ = np.linalg.qr(rng.standard_normal((d, gram.shape[0])))
    return basis @ np.linalg.cholesky(gram).T


def _gram_stats(Q, M):
    """Statistics of one coupled draw (rows): entries, a mixed one, and the spectrum of Q."""
    ev = np.linalg.eigvalsh(Q)
    return {"Q01": Q[:, 0, 1], "Q23": Q[:, 2, 3], "M00": M[:, 0, 0], "M31": M[:, 3, 1],
            "Q01*M11": Q[:, 0, 1] * M[:, 1, 1], "lmin": ev[:, 0], "lmax": ev[:, -1],
            "trace Q^2": np.einsum("sij,sij->s", Q, Q)}


@pytest.mark.parametrize("d,beta,init", [(3, 0.0, "uniform"), (3, 0.3, "uncollected"),
                                         (20, 0.3, "uniform"), (20, 0.0, "uncollected"),
                                         (1000, 0.0, "uniform")])
def test_initial_overlaps_match_explicit_sampling(d, beta, init, rng):
    n = 4  # d = 3: the perp parts span d - k = 1 < n dimensions (rank-deficient Gram)
    A = equiangular_gram(K, beta)
    draw = sample_initial_batch([rng] * N_SAMPLES, n, d, A, init)
    Z = sample_orthogonal_factor([rng] * N_SAMPLES, draw.r, d, K)
    Q, M = mse.gram_from_reduced(mse.pack_reduced(draw.u, Z), A, n)
    # Explicit: n uniform unit vectors in R^d per draw, conditioned neuron by neuron.
    V = _random_frame(A, d, rng)
    chunks, got = [], 0
    while got < N_SAMPLES * n:
        w = uniform_sphere(4000, d, rng)
        if init == "uncollected":
            w = w[np.argmax(w @ V, axis=1) != K - 1]
        chunks.append(w)
        got += len(w)
    We = np.concatenate(chunks)[:N_SAMPLES * n].reshape(N_SAMPLES, n, d)
    ref = _gram_stats(We @ np.swapaxes(We, 1, 2), We @ V)
    for name, sample in _gram_stats(Q, M).items():
        if name == "lmin" and d - K < n:
            # rank(Q) <= d < n: the smallest eigenvalue is exactly zero in both.
            assert np.max(np.abs(sample)) < 1e-12 and np.max(np.abs(ref[name])) < 1e-12
            continue
        assert stats.ks_2samp(sample, ref[name]).pvalue > ALPHA, name
    np.testing.assert_allclose(np.diagonal(Q, axis1=1, axis2=2), 1.0, atol=1e-12)


def test_initial_gram_ks_has_power(rng):
    """The statistics above do see a plausible bug: perp parts taken mutually orthogonal
    (the neurons' interaction through the Wishart Gram forgotten)."""
    A, n, d = np.eye(K), 4, 20
    draw = sample_initial_batch([rng] * N_SAMPLES, n, d, A, "uniform")
    Z = draw.r[:, None, :] * np.eye(n)  # wrong: Z^T Z diagonal
    Q, _ = mse.gram_from_reduced(mse.pack_reduced(draw.u, Z), A, n)
    We = uniform_sphere(N_SAMPLES * n, d, rng).reshape(N_SAMPLES, n, d)
    Qe = We @ np.swapaxes(We, 1, 2)
    assert stats.ks_2samp(Q[:, 0, 1], Qe[:, 0, 1]).pvalue < ALPHA


def test_explicit_weights_realize_the_reduced_draw(rng):
    A = equiangular_gram(K, 0.4)
    for d, n in [(2, 3), (5, 6), (300, 4)]:
        draw = sample_initial(rng, n, d, A, "uniform")
        Z = sample_orthogonal_factor([rng], draw.r[None], d, K)[0]
        W = explicit_coupled_weights(draw.z, draw.chi2, Z, d, rng)
        Q, M = mse.gram_from_reduced(mse.pack_reduced(draw.u, Z), A, n)
        V = explicit_frame(A, d)
        np.testing.assert_allclose(W @ V, M, atol=1e-14)
        np.testing.assert_allclose(W @ W.T, Q, atol=1e-14)


def test_huge_d_sampling_costs_nothing(rng):
    A = np.eye(K)
    draw = sample_initial_batch([rng] * 8, 10, 10**12, A, "uniform")
    Z = sample_orthogonal_factor([rng] * 8, draw.r, 10**12, K)
    Q, M = mse.gram_from_reduced(mse.pack_reduced(draw.u, Z), A, 10)
    off = Q[:, ~np.eye(10, dtype=bool)]
    assert np.all(np.abs(off) < 1e-4) and np.all(np.abs(M) < 1e-4)  # ~ d^-1/2 = 1e-6
    np.testing.assert_allclose(np.diagonal(Q, axis1=1, axis2=2), 1.0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Through simulate: the paper's comparisons.


@pytest.mark.parametrize("act", ["h3", "h4", {3: 1.0, 4: 0.5}])
def test_single_neuron_mse_is_correlation_at_twice_the_speed(act):
    """n = 1: g_ss(|w|^2) is constant on the sphere, so L_mse = const + 2 L_corr."""
    base = {"teacher": act, "d": 400, "k": 3, "beta": 0.2, "n": 1,
            "rtol": 1e-10, "atol": 1e-14, "gtol": 1e-8}
    times = np.logspace(-1, 3.5, 30)
    ms = pipeline.simulate({**base, "loss": "mse"}, 12, snapshots=times)
    co = pipeline.simulate(base, 12, snapshots=2 * times)
    assert np.array_equal(ms.u0, co.u0)
    # .values: the two time coordinates differ by design (t against 2t).
    assert np.max(np.abs(ms.u_t.values - co.u_t.values)) <= 1e-6
    np.testing.assert_allclose(ms.escape_time, co.escape_time / 2, rtol=1e-6)
    # L_mse = g_ss(1) + 2 L_corr + sum_jj' g_tt(A_jj') (the loss variables say which is which)
    a = get_activation(act).coefficients
    const = a @ a + np.polynomial.polynomial.polyval(equiangular_gram(3, 0.2), a**2).sum()
    np.testing.assert_allclose(ms.loss.values, const + 2.0 * co.loss.values, atol=1e-9)


def _figure_3(act, loss, seeds=24):
    ds = pipeline.simulate({"teacher": act, "d": 1000, "k": 2, "n": 10, "loss": loss,
                            "init": "uncollected"}, seeds)
    # The init really is uncollected: no neuron starts closest to v_2.
    assert bool((ds.u0.argmax("index") != 1).all())
    return ds, (ds.u.sel(index=1) > 0.9).any("neuron")


@pytest.mark.parametrize("act", ["h3", "tanh"])
def test_figure_3_mse_collects_what_correlation_cannot(act, record_property):
    corr, corr_found = _figure_3(act, "correlation")
    mse_ds, mse_found = _figure_3(act, "mse")
    assert not bool(corr_found.any())  # correlation: no neuron ever ends near v_2
    fraction = float(mse_found.mean())
    record_property(f"mse_fraction_{act}", fraction)
    print(f"\nFigure 3 ({act}, 24 seeds): v_2 found by MSE {fraction:.3f}, by correlation 0")
    assert fraction >= 0.5
    assert bool((mse_ds.status == CONVERGED).all())
    # MSE converges although surplus neurons never reach the escape threshold ...
    assert bool(mse_ds.escape_time.isnull().any())
    # ... and converges to the target: E[(f - f*)^2] -> 0 in the runs that found v_2.
    assert float(mse_ds.loss.where(mse_found).max()) < 1e-6


def test_convergence_is_not_declared_while_a_neuron_is_still_at_the_saddle():
    """h4, d = 1e5: after the first neuron has learned v_1 the second still sits at the saddle
    with a gradient ~ d^-3/2 < gtol; stopping there would report loss 2 instead of 0."""
    point = {"teacher": "h4", "d": 10**5, "k": 2, "n": 2, "loss": "mse", "t_max": 1e9}
    seeds = [0, 1, 3, 5]
    ds = pipeline.simulate(point, seeds)
    assert bool((ds.status == CONVERGED).all())
    assert bool(ds.escape_time.notnull().all())
    np.testing.assert_allclose(ds.loss.isel(neuron=0), 0.0, atol=1e-9)
    first = ds.escape_time.min("neuron").values
    assert np.all(ds.t_final.isel(neuron=0).values > ds.escape_time.max("neuron").values)
    # The guard is what kept it going: soon after the first escape the gradient test alone
    # would pass, but the other neuron's overlaps are growing (dynamics.settled says no).
    a = get_activation("h4").coefficients
    args = mse.reduced_args(np.eye(K), a, a, 2, 2)
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    for s, t in zip(seeds, first, strict=True):
        cut = pipeline.simulate({**point, "t_max": float(t) + 20.0}, [s])
        Q, M = cut.q.values[0], cut.u.values[0]
        lam, U = np.linalg.eigh(Q - M @ M.T)  # perp Gram (A = I); near-singular: w_1 ~ v_1
        Z = np.sqrt(np.clip(lam, 0.0, None))[:, None] * U.T  # its coordinates, up to rotation
        y = mse.pack_reduced(M, Z)
        assert float(cut.loss[0, 0]) == pytest.approx(2.0, abs=0.05)  # one of two learned
        assert dynamics.grad_norm(dynamics.MSE_REDUCED, y, args, work) < 1e-6
        assert not dynamics.settled(dynamics.MSE_REDUCED, y, args, work, 0.5)


def test_simulate_mse_dataset():
    point = {"teacher": "h3", "d": 300, "k": 2, "n": 4, "loss": "mse", "beta": 0.1}
    times = [0.0, 1.0, 30.0, 1e4]
    ds = pipeline.simulate(point, [3, 8, 5], snapshots=times)
    assert dict(ds.sizes) == {"seed": 3, "neuron": 4, "index": 2, "time": 4, "neuron2": 4}
    assert ds.q.dims == ("seed", "neuron", "neuron2")
    assert ds.loss_t.dims == ("seed", "time")
    for name in ("t_final", "steps", "status", "loss"):  # per seed, repeated over neurons
        assert bool((ds[name] == ds[name].isel(neuron=0)).all()), name
    q = ds.q.values
    np.testing.assert_allclose(q, np.swapaxes(q, 1, 2), atol=1e-12)
    np.testing.assert_allclose(np.diagonal(q, axis1=1, axis2=2), 1.0, atol=1e-6)
    assert np.all(np.linalg.eigvalsh(q) > -1e-9)
    np.testing.assert_array_equal(ds.u_t.isel(time=0), ds.u0)
    assert float(ds.loss.min()) >= -1e-12
    converged = ds.status.isel(neuron=0) == CONVERGED
    np.testing.assert_allclose(ds.loss_t.isel(time=-1).where(converged),
                               ds.loss.isel(neuron=0).where(converged), atol=1e-12)
    assert np.all(np.diff(ds.loss_t.values, axis=1) <= 1e-12)  # gradient flow descends
    # Common random numbers with the correlation point, and seeds independent of blocks.
    corr = pipeline.simulate({**point, "loss": "correlation"}, [3, 8, 5])
    assert np.array_equal(ds.u0, corr.u0)
    again = pipeline.simulate(point, [5], snapshots=times, threads=1)
    for name in ds.data_vars:
        assert np.array_equal(ds[name].sel(seed=[5]), again[name], equal_nan=True), name
    p = resolve_point(point)
    assert p.hash != resolve_point({**point, "loss": "correlation"}).hash
    assert "MSE" in ds.loss.attrs["long_name"]


def test_full_backend_through_simulate():
    point = {"teacher": {3: 1.0, 4: 0.3}, "d": 60, "k": 2, "n": 5, "loss": "mse",
             "beta": 0.2, "rtol": 1e-10, "atol": 1e-14, "gtol": 1e-8, "init": "uncollected"}
    red = pipeline.simulate(point, 3, snapshots=True)
    full = pipeline.simulate({**point, "backend": "full"}, 3, snapshots=True)
    np.testing.assert_allclose(full.u0, red.u0, atol=1e-14)
    assert float(np.abs(red.u_t - full.u_t).max()) <= 1e-6
    assert float(np.abs(red.loss_t - full.loss_t).max()) <= 1e-6
    np.testing.assert_allclose(red.q, full.q, atol=1e-6)


def test_mse_gd_through_simulate_descends():
    ds = pipeline.simulate({"teacher": "tanh", "d": 50, "k": 2, "n": 3, "loss": "mse",
                            "method": "gd", "lr": 0.05}, 2, snapshots=np.linspace(0, 50, 11))
    assert bool((ds.status == CONVERGED).all())
    assert np.all(np.diff(ds.loss_t.values, axis=1) <= 1e-12)
