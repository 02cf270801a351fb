"""The stiff stage's Rosenbrock method (Rodas5P, ``stiff.py``).

Independent truth: the exponential (the stability function of the tables against e^z, its
L-stability), and for the compiled step on the reduced MSE field a reference solution by
scipy's DOP853 at rtol 1e-13: the method's order, its error estimate's order and its dense
output's order from step halving.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from pipeline.engine import dynamics, mse, reciprocal, stiff, woodbury
from pipeline.engine.activations import get_activation


def _stability(z: complex) -> complex:
    """R(z) = y_new / y of the tables for y' = lambda y (J = lambda, z = h lambda): each stage
    solves (1/gamma - z) k_s = z (y + sum_j a_sj k_j) + sum_j c_sj k_j (k in units of h)."""
    S = stiff.ROS_STAGES
    y = 1.0
    k = np.zeros(S, dtype=complex)
    k[0] = z * y / (1.0 / stiff.GAMMA - z)
    arg = y
    for s in range(1, S):
        arg = y + stiff.ROS_R[s - 1, :s] @ k[:s]
        k[s] = (z * arg + stiff.ROS_Q[s - 1, :s] @ k[:s]) / (1.0 / stiff.GAMMA - z)
    return arg + k[S - 1]


def test_stability_function_is_order_5_and_l_stable():
    # R(z) - e^z = O(z^6) at least (measured ~z^7: one order more on linear problems):
    # halving z divides the difference by >= ~2^6.
    err = [abs(_stability(z) - np.exp(z)) for z in (0.4, 0.2, 0.1)]
    for e0, e1 in zip(err, err[1:], strict=False):
        assert math.log2(e0 / e1) > 5.7, err
    # A-stable on the imaginary axis, L-stable at infinity.
    assert max(abs(_stability(1j * w)) for w in np.logspace(-2, 6, 200)) <= 1.0 + 1e-12
    assert abs(_stability(-1e12)) < 1e-9
    assert max(abs(_stability(complex(-x, y))) for x in np.logspace(-2, 4, 40)
               for y in (-x, 0.0, x)) <= 1.0


def _problem(n=3, seed=0, spread=0.3):
    """A reduced MSE state of h3 (k = 2, correlated teachers) away from rest."""
    a = get_activation("h3").coefficients
    args = mse.reduced_args(np.array([[1.0, 0.2], [0.2, 1.0]]), a, a, n, n)
    rng = np.random.default_rng(seed)
    return args, _on_spheres(spread * rng.standard_normal((n, 2)), rng)


def _on_spheres(M, rng):
    """The reduced state with overlaps ``M`` (n x 2) whose perp parts are a random orthogonal
    frame scaled to put every student on the unit sphere."""
    n = M.shape[0]
    Z = np.linalg.qr(rng.standard_normal((n, n)))[0] * np.sqrt(1 - np.sum(M ** 2, axis=1))
    return mse.pack_reduced(M, Z)


def _step(args, y, h, reciprocal_coordinates=False):
    """One compiled Rodas5P step: (new state, error estimate in units of y, dense output at
    x = 1/2, how many pole variables it took in reciprocal form, their kinds and exponents),
    those chosen by ``reciprocal.select`` if ``reciprocal_coordinates``, else none."""
    N = y.size
    n = mse.mse_n_neurons(args)
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    f0, J = np.empty(N), np.empty((N, N))
    fac = woodbury.allocate(n, 2, N // n)
    stiff._linearize(dynamics.MSE_REDUCED, y, args, work, f0, J, fac)
    k = np.empty((stiff.ROS_STAGES, N))
    ys, fs, yn = np.empty(N), np.empty(N), np.empty(N)
    rec = reciprocal.allocate(N)
    cnt = 0
    if reciprocal_coordinates:
        m_overlap, m_other = reciprocal.exponents(args)
        cnt = reciprocal.select(y, f0, h, np.full(N, 1e-14), n, N // n, 2, m_overlap,
                                m_other, fac, rec)
    ok, structured, _ = stiff._rodas_step(dynamics.MSE_REDUCED, False, y, f0, h, args, work,
                                          J, False, np.empty((N, N)),
                                          np.empty(N, dtype=np.int64), fac, k, ys, fs, yn, rec,
                                          cnt)
    assert ok and structured
    mid = np.empty(N)
    stiff._dense_at(True, y, k, np.empty((7, N)), 0.5, mid, rec, cnt)
    err = k[stiff.ROS_STAGES - 1].copy()
    reciprocal.error_in_y(err, y, yn, rec, cnt)
    return yn, err, mid, cnt, (list(rec.kind[:cnt]), list(rec.m[:cnt]))


def _field(args):
    """The reduced MSE field as a function for scipy's solvers."""
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))

    def f(_t, y):
        out = np.empty(y.size)
        dynamics.vector_field(dynamics.MSE_REDUCED, y, args, work, out)
        return out

    return f


def _reciprocal_errors(args, y0, hs, atol):
    """One step of each ``h`` in ``hs`` from ``y0``, plain and with reciprocal coordinates,
    against DOP853 at rtol 1e-13, in units of ``atol + 1e-8 |y|`` (max over coordinates):
    rows (plain step, step, its error estimate, its dense output at h / 2, pole variables,
    their kinds and exponents) per ``h``."""
    ref = solve_ivp(_field(args), (0.0, max(hs)), y0, method="DOP853", rtol=1e-13,
                    atol=1e-22, dense_output=True)

    def scaled(x, h):
        return (np.abs(x) / (atol + 1e-8 * np.abs(ref.sol(h)))).max()

    rows = []
    for h in hs:
        yn, e, mid, cnt, kinds = _step(args, y0, h, reciprocal_coordinates=True)
        rows.append((scaled(_step(args, y0, h)[0] - ref.sol(h), h), scaled(yn - ref.sol(h), h),
                     scaled(e, h), scaled(mid - ref.sol(h / 2), h / 2), cnt, kinds))
    return rows


def test_step_error_estimate_and_dense_output_orders():
    """Local errors of one step of h = 0.2 ... 0.025 against DOP853 at rtol 1e-13: the step is
    of order 5 (local error ~h^6; measured rates 6.9, 6.5, 6.2), the error estimate ~h^5
    (embedded order 4; 4.8, 5.0, 5.0) and the dense output at the midpoint ~h^5 (order 4;
    5.1, 5.1, 5.1)."""
    args, y0 = _problem()
    hs = [0.2, 0.1, 0.05, 0.025]
    ref = solve_ivp(_field(args), (0.0, hs[0]), y0, method="DOP853", rtol=1e-13, atol=1e-15,
                    dense_output=True)
    step, est, dense = [], [], []
    for h in hs:
        yn, e, mid, _, _ = _step(args, y0, h)
        step.append(np.abs(yn - ref.sol(h)).max())
        est.append(np.abs(e).max())
        dense.append(np.abs(mid - ref.sol(h / 2)).max())
    for errs, order in ((step, 6), (est, 5), (dense, 5)):
        rates = [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
        assert min(rates) > order - 0.4, (errs, rates)
    assert step[-1] < 1e-11


@pytest.mark.parametrize("h", [0.05, 5.0, 5e3])
def test_structured_and_dense_steps_agree(h):
    """The same Rodas5P step through the Woodbury factorization and through the dense LU of
    the closed-form Jacobian (the fallback, built lazily) agree to round-off, at a state away
    from rest (n = 10, k = 2) and step sizes from non-stiff to far beyond stability."""
    args, y0 = _problem(n=10, seed=3, spread=0.2)
    assert np.all(np.isfinite(y0))
    N = y0.size
    n = mse.mse_n_neurons(args)
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    out = {}
    for path in ("structured", "dense"):
        f0, J = np.empty(N), np.empty((N, N))
        fac = woodbury.allocate(n, 2, N // n)
        stiff._linearize(dynamics.MSE_REDUCED, y0, args, work, f0, J, fac)
        if path == "dense":  # P = alpha I + 2 C = 0: Woodbury declines, J is built
            fac.C[:] = -0.5 / (stiff.GAMMA * h) * np.eye(n)
        k = np.empty((stiff.ROS_STAGES, N))
        yn = np.empty(N)
        ok, structured, jac_dense = stiff._rodas_step(
            dynamics.MSE_REDUCED, False, y0, f0, h, args, work, J, False, np.empty((N, N)),
            np.empty(N, dtype=np.int64), fac, k, np.empty(N), np.empty(N), yn,
            reciprocal.allocate(N), 0)
        assert ok and structured == (path == "structured") and jac_dense != structured
        out[path] = (yn, k[-1].copy())
    scale = np.abs(out["dense"][0]).max()
    np.testing.assert_allclose(out["structured"][0], out["dense"][0], rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(out["structured"][1], out["dense"][1], rtol=0,
                               atol=1e-12 * scale)


def _saddle(n, spread, seed=1, teacher="h3"):
    """Reduced MSE args with orthonormal index vectors (k = 2) and a state at the saddle:
    every overlap positive and ~``spread``, so that each grows like a pole (h3: u' ~ u^2)."""
    a = get_activation(teacher).coefficients
    args = mse.reduced_args(np.eye(2), a, a, n, n)
    rng = np.random.default_rng(seed)
    return args, _on_spheres(spread * np.abs(rng.standard_normal((n, 2))), rng)


def test_reciprocal_exponents_follow_the_lowest_live_degree():
    """m = p - 2 for the lowest Hermite degree p of the couplings: h3 -> 1, h4 -> 2; relu
    (degree 1 live: no pole) -> 0."""
    for teacher, m in (("h3", 1.0), ("h4", 2.0), ("relu", 0.0)):
        a = get_activation(teacher).coefficients
        assert reciprocal.exponents(mse.reduced_args(np.eye(2), a, a, 3, 3)) == (m, m)


@pytest.mark.parametrize("teacher, m", [("h3", 1), ("h4", 2)])
def test_reciprocal_step_crosses_a_pole_that_the_plain_step_cannot(teacher, m):
    """A wait at the saddle (overlaps ~1e-5): each grows like a pole, u' ~ a u^(m+1) (h3:
    m = 1; h4: m = 2), the nearest blow-up at T = 1 / (m max(u'/u)) (~1.3e4 for h3). One
    Rodas5P step of 0.3 T in the original coordinates is off by > 1e3 tolerances (h3: 2.5e4,
    h4: 5e3); the same
    step with the overlaps in z = |u|^-m is within 1e-2 of its tolerance, and so are its error
    estimate and dense output (against DOP853 at rtol 1e-13). From 0.6 T to 0.3 T its error
    falls by more than 2^5: the step is of high order in the new coordinates (a wrong Jacobian
    of the transformed field would make it of order ~2)."""
    args, y0 = _saddle(3, 1e-5, teacher=teacher)
    assert reciprocal.exponents(args) == (m, m)
    rate = (_field(args)(0.0, y0) / y0).reshape(3, -1)[:, :2]
    assert np.all(rate > 0)
    T = 1.0 / (m * rate.max())
    (_, far, _, _, cnt0, _), (plain, near, est, dense, cnt1, _) = _reciprocal_errors(
        args, y0, [0.6 * T, 0.3 * T], 1e-14)
    # h4's rates spread as u^2: the slowest overlaps (< 0.1 of the fastest) stay in u.
    assert cnt0 == cnt1 >= 4 and est < 1.0 and dense < 1.0
    assert plain > 1e3 and near < 1e-2, (plain, near)
    assert math.log2(far / near) > 5.0, (far, near)


def test_reciprocal_pair_step_crosses_a_pair_formation():
    """Two surplus students about to pair up antipodally (h3, Gram entry Q_01 = -1e-4, the
    other entries smaller and of the other sign; overlaps ~1e-9): Q_01 grows like a pole,
    u' ~ -Q^2, with T = Q / Q' ~ 830. Each student's coordinate along the other's initial
    direction carries half of it, from its own start, so neither is a pole: the step takes
    their sum, the Gram entry to leading order, in z = 1 / u and their difference as it is.
    One step of 0.6 T: off by > 100 tolerances in the original coordinates, within 0.1 of
    one as a pair (error estimate and dense output within one); its error falls by > 2^5
    from 0.6 T to 0.3 T."""
    a = get_activation("h3").coefficients
    args = mse.reduced_args(np.eye(2), a, a, 3, 3)
    M = np.full((3, 2), 1e-9)
    Z = np.eye(3)
    Z[0, 1], Z[1, 0], Z[0, 2], Z[2, 1] = -0.6e-4, -0.4e-4, 0.3e-4, 0.2e-4
    Z *= (np.sqrt(1 - np.sum(M ** 2, axis=1)) / np.linalg.norm(Z, axis=1))[:, None]
    y0 = mse.pack_reduced(M, Z)
    K = y0.size // 3
    v = _field(args)(0.0, y0)
    T = (Z @ Z.T)[0, 1] / (v[2 + 1] + v[K + 2])
    assert 500 < T < 1500
    rows = _reciprocal_errors(args, y0, [0.6 * T, 0.3 * T], 1e-8)
    for _, _, est, dense, cnt, kinds in rows:
        assert cnt == 1 and kinds == ([reciprocal.PAIR], [1.0]) and est < 1.0 and dense < 1.0
    (plain, far, *_), (_, near, *_) = rows
    assert plain > 100 and far < 0.1, (plain, far)
    assert math.log2(far / near) > 5.0, (far, near)


def test_reciprocal_direction_step_follows_a_turn_towards_a_pair():
    """Two students at the teachers, an antipodal pair of surplus students (2, 3) along
    (e_2 - e_3) / sqrt 2 and student 4 at e_4 turning towards the pair's axis (h3, n = 5; the
    state relaxed for t = 50 onto the slow manifold; the shape of a wait of the issue's
    workload, h3, n = 10, d = 1e12): the pair's members follow student 4, each along e_4,
    slaved to it and relaxing on their own, so no coordinate or pair's sum feeds on itself;
    and the pair cancels h3's odd coupling, so the turn grows like u' ~ u^3, not u^2. select
    takes one direction across the four growing coordinates with its own exponent m = 2
    (T = u / (m u') below). Its steps of 0.2 T and 0.1 T are > 10x more accurate than the
    plain ones (measured: 12x, 13x), of high order (error / 88 from 0.2 T to 0.1 T), within
    tolerance at 0.1 T with its error estimate and dense output (against DOP853 at
    rtol 1e-13)."""
    a = get_activation("h3").coefficients
    n = 5
    args = mse.reduced_args(np.eye(2), a, a, n, n)
    M = np.zeros((n, 2))
    M[0, 0] = M[1, 1] = 1.0
    M[2:] = 1e-9
    axis = np.zeros(n)
    axis[2], axis[3] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    Z = np.zeros((n, n))
    Z[2], Z[3] = axis, -axis
    Z[2, 4], Z[3, 4] = -1.1e-4, 1.1e-4
    Z[4] = -1.9e-4 * axis
    Z[4, 4] = 1.0
    Z[2:] *= (np.sqrt(1 - np.sum(M[2:] ** 2, axis=1)) / np.linalg.norm(Z[2:], axis=1))[:, None]
    y0 = solve_ivp(_field(args), (0.0, 50.0), mse.pack_reduced(M, Z), method="Radau",
                   rtol=1e-12, atol=1e-20).y[:, -1]
    K = y0.size // n
    turning = [4 * K + 2 + 2, 4 * K + 2 + 3, 2 * K + 2 + 4, 3 * K + 2 + 4]
    rate = _field(args)(0.0, y0)[turning] / y0[turning]
    assert np.all(rate > 0)
    T = 1.0 / (2 * rate.max())
    rows = _reciprocal_errors(args, y0, [0.2 * T, 0.1 * T], 1e-14)
    for plain, err, _, _, cnt, kinds in rows:
        assert cnt == 1 and kinds == ([reciprocal.DIRECTION], [2.0])
        assert plain > 10 * err, (plain, err)
    (_, far, *_), (plain, near, est, dense, *_) = rows
    assert plain > 1.0 and near < 0.2 and est < 1.0 and dense < 1.0, (plain, near, est, dense)
    assert math.log2(far / near) > 5.0, (far, near)


def test_reciprocal_selection_takes_only_growing_poles():
    """select takes small overlaps that grow by feeding on themselves, not those shrinking
    towards zero, not those below FLOOR times their tolerance, not one whose growth is forced
    (as fast as the fastest overlap's, but with df/du <= 0: its 1 / u would go through
    infinity), and nothing under relu (no pole)."""
    args, y0 = _saddle(3, 1e-5)
    N = y0.size
    K = N // 3
    y0 = y0.copy()
    y0[0] = -y0[0]  # h3: a negative overlap shrinks towards the saddle
    y0[K] = 1e-30  # noise
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    f0, J = np.empty(N), np.empty((N, N))
    fac = woodbury.allocate(3, 2, K)
    stiff._linearize(dynamics.MSE_REDUCED, y0, args, work, f0, J, fac)
    rec = reciprocal.allocate(N)
    h = 0.2 / np.max(f0[[1, K + 1, 2 * K, 2 * K + 1]] / y0[[1, K + 1, 2 * K, 2 * K + 1]])
    cnt = reciprocal.select(y0, f0, h, np.full(N, 1e-14), 3, K, 2, 1.0, 1.0, fac, rec)
    assert sorted(rec.g[:cnt]) == [1, K + 1, 2 * K, 2 * K + 1]
    # The entries of the structured Jacobian that select reads are the dense one's.
    stiff.reduced_jacobian(y0, args, work, np.empty(N), J)
    for g in range(N):
        for e in range(N):
            assert woodbury.entry(fac, g, e, K) == pytest.approx(J[g, e], rel=1e-12, abs=1e-14)
    assert reciprocal.select(y0, f0, h, np.full(N, 1e-14), 3, K, 2, 0.0, 0.0, fac, rec) == 0
    # A coordinate pushed from outside: as fast as the fastest overlap (relative rate), its
    # df/du < 0 (it relaxes), far below a pole's 2 f / u: it is not taken.
    M = 1e-5 * np.abs(np.random.default_rng(1).standard_normal((3, 2)))
    Z = np.eye(3) + 1e-4 * (1.0 - np.eye(3))  # students near their initial directions
    Z *= (np.sqrt(1 - np.sum(M ** 2, axis=1)) / np.linalg.norm(Z, axis=1))[:, None]
    y1 = mse.pack_reduced(M, Z)
    forced = 2 * K + 2  # student 2 along student 0's initial direction, ~1e-4
    overlaps = [0, 1, K, K + 1, 2 * K, 2 * K + 1]
    stiff._linearize(dynamics.MSE_REDUCED, y1, args, work, f0, J, fac)
    rate = np.max(f0[overlaps] / y1[overlaps])
    f0[forced] = rate * y1[forced]
    assert woodbury.entry(fac, forced, forced, K) < reciprocal.POLE * 2 * rate
    h = 0.2 / rate
    cnt = reciprocal.select(y1, f0, h, np.full(N, 1e-14), 3, K, 2, 1.0, 1.0, fac, rec)
    assert sorted(rec.g[:cnt]) == overlaps
