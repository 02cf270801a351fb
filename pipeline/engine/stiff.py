"""The coupled (MSE) flow after the explicit kernel's handover, compiled: stiff steps and the
continuation check of the convergence rule (``continuation.py``), one trajectory per thread.

Why a switching integrator. Once some neurons of the MSE flow have converged they relax on an
O(1) time scale (Jacobian eigenvalues ~ -1) while neurons still at the initial saddle move on
the rescaled clock t ~ d^((p*-2)/2). Dormand-Prince is then stability-limited to steps ~ 1 and
needs ~ d^((p*-2)/2) of them. A Rosenbrock method (Steinebach's Rodas5P: 8 stages, order 5,
embedded order 4, stiffly accurate, L-stable, 4th-order dense output, in the form of Hairer &
Wanner's RODAS) takes steps limited by accuracy alone, i.e. ~ the slow time scale itself, so
the step count no longer grows like a power of d. What remains are the waits before escapes:
an overlap growing like 1 / (T - t) needs a fixed number of steps per e-fold of T - t, ~ln
sqrt(d) e-folds per escape, fewer the higher the order (order 5: 666 accepted Rosenbrock
steps per trajectory at d = 1e12, h3, n = 10, median of 64, where RODAS's order 4 took 1,083),
and few where a step takes the growing overlaps (and the Gram entries of pairs forming) in
reciprocal coordinates, in which the pole is a straight line (``reciprocal.py``; the step's
matrix is this one's conjugate plus a low-rank term, a correction of its factorization:
:func:`_recip_factor`).
A Rosenbrock step costs a Jacobian and an LU factorization (N = n(k + m) <= n^2 + nk
unknowns; for the reduced model the Jacobian is kept in Woodbury's structured form and the LU
is of 65 capacitance unknowns at n = 10, k = 2, ``woodbury.py``), ~5 explicit steps' worth at
n = 10, so where the flow is not stiff (an escape, which runs on an O(1) clock at every d)
the stage steps explicitly, with DOP853 (order 8, ``dop853.py``, for the same reason):

* explicit -> Rosenbrock: Hairer's h|lambda| test on the last two DOP853 evaluations says the
  step size is stability-limited (``dop853.STIFF_HLAMBDA``, ``integrate.STIFF_COUNT`` such
  steps);
* Rosenbrock -> explicit: the accepted step is within DOP853's stability region for the
  Jacobian's spectral radius (power iteration) within ``COST_RATIO`` explicit steps,
  ``NONSTIFF_STEPS`` times in a row.

The Jacobian of ``MSE_REDUCED`` is in closed form (:func:`reduced_jacobian`). ``MSE_FULL``
(validation at small d) continues with DOP853 only (:func:`implicit_applies`); its
forward-difference Jacobian (``continuation.jacobian``) serves ``mode = ROSENBROCK`` on
request.

The round-off floor of the absolute tolerance (``continuation.ROUNDOFF_SAFETY``): the field is
computed with round-off ~ eps * (its largest cancelling terms), so no step of length h can be
more accurate than h times that; without this floor the error of a state at rest is pure
round-off and an L-stable method, whose steps are not stability-limited, grows h until the
round-off fails the test, then oscillates. The floor is per neuron
(``continuation.row_scales``): a neuron still at the saddle has cancelling terms, and a
velocity, orders of magnitude below the converged neurons'; with one floor from the largest
terms of all, its overlaps (~1e-5 at d = 1e12) were held only to ~1e-10 absolute in the long
steps of a wait, and the next escape came 2e-4 to 1.4e-3 of the wait late (h3, n = 10, against
scipy's Radau at rtol 1e-12). The floor is capped (``ROUNDOFF_CAP``); beyond the cap, i.e. for
the long steps at rest late in time, the reduced model's Rosenbrock stages take the velocity in
double-double arithmetic (``mse.reduced_field_accurate``, ~eps relative to the velocity
itself): with the plain field the round-off, carried along the flow's neutral directions
(antipodal pairs, the rotation of the perp coordinates), held h at ~3e8, so that a verification
window [t_c, 10 t_c] at t_c ~ 1e10-1e11 (d = 1e12) took ~1,000-3,000 steps while the state
drifted by up to ~1e-5; it now takes ~50 at any t, and 5 of 64 seeds of h3, n = 10, d = 1e12
that never confirmed (status 1 after up to 56,000 steps) now do.

Everything a trajectory computes depends only on its own inputs (no shared state, fixed
operation order): results do not depend on the batch, the threads or their number.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from . import dop853, mse, reciprocal, woodbury
from . import integrate as dp
from ._jit import jit as njit
from ._jit import jit_named
from .continuation import (
    IMPLICIT_MAX_SIZE,
    ROUNDOFF_SAFETY,
    VERIFY_FACTOR,
    VERIFY_GROWTH,
    VERIFY_LATE_ERRORS,
    VERIFY_LOSS_TOL,
    VERIFY_NOISE_ERRORS,
    VERIFY_OVERLAP_TOL,
    VERIFY_POLE_MARGIN,
    VERIFY_POLE_NOISE,
    WINDOW_SAMPLES,
    blow_up_time,
    row_scales,
    steady_growth,
)
from .continuation import jacobian as difference_jacobian
from .dynamics import (
    MSE_FULL,
    MSE_REDUCED,
    grad_norm_given,
    observables,
    overlap_norm,
    settled,
    vector_field,
    work_size,
)
from .linalg import DOT_MATH, _lu, _lu_solve
from .status import CONVERGED

EPS = dp.EPS

# Rodas5P (Steinebach 2023, BIT 63:27; 8 stages, order 5, embedded order 4, stiffly
# accurate, L-stable, 4th-order dense output) in the form of Hairer & Wanner's RODAS
# (Solving ODEs II, IV.7) for an autonomous field:
# (I/(gamma h) - J) k_i = f(y + sum_j a_ij k_j) + sum_j c_ij k_j / h.
GAMMA = 0.21193756319429014
_A6 = [-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
       0.030198172008377946]
# Row s - 2 for stage s = 2..8. Stages 7 and 8 take stage 6's argument plus k6 (and k7):
# the method is stiffly accurate, y_new = stage 8's argument + k8, and k8 is the error.
ROS_R = np.array([
    [3.0, 0, 0, 0, 0, 0, 0],
    [2.849394379747939, 0.45842242204463923, 0, 0, 0, 0, 0],
    [-6.954028509809101, 2.489845061869568, -10.358996098473584, 0, 0, 0, 0],
    [2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641, 0, 0,
     0],
    _A6 + [0, 0],
    _A6 + [1.0, 0],
    _A6 + [1.0, 1.0]])
ROS_Q = np.array([
    [-14.155112264123755, 0, 0, 0, 0, 0, 0],
    [-17.97296035885952, -2.859693295451294, 0, 0, 0, 0, 0],
    [147.12150275711716, -1.41221402718213, 71.68940251302358, 0, 0, 0, 0],
    [165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306, 0, 0, 0],
    [24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
     -0.6610691825249471, 0, 0],
    [30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
     -19.097331116725623, -28.087943162872662, 0],
    [37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
     -40.06618937091002, -54.66780262877968, -9.48861652309627]])
ROS_STAGES = 8
# Dense output y(t + s h) = y (1 - s) + s (y_new + (1 - s) (d_1 + s (d_2 + s d_3))),
# d_r = sum_j H[r - 1, j] k_j.
ROS_H = np.array([
    [25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
     0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493],
    [-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
     20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372],
    [11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
     -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722]])
#: The controller's exponent: 1 / (order of the error estimate + 1).
ERR_EXPO = 0.2
# Step-size controller (Gustafsson's predictive controller).
R_SAFE, R_FAC_UP, R_FAC_DOWN = 0.9, 5.0, 1.0 / 6.0

#: Rosenbrock steps in a row inside DOP853's stability region before the stage steps
#: explicitly again.
NONSTIFF_STEPS = 3
#: ``finish``'s ``mode``: DOP853 only, switching, Rosenbrock only.
EXPLICIT, SWITCHING, ROSENBROCK = 0, 1, 2
#: The stage steps explicitly again once a Rosenbrock step is shorter than this many stable
#: DOP853 steps (``h rho(J) <= SWITCH_LIMIT``). A Rosenbrock step at n = 10 costs ~5 DOP853
#: steps (~9-14 with RODAS and the dense Jacobian, when this was tuned), yet every switch also
#: costs a wait of ``integrate.STIFF_COUNT`` stability-limited steps and a Jacobian, and near
#: escapes the stage went back and forth. Measured then (``bench_mse_d.py``, h3, n = 10,
#: d = 1e12): 2 and 8 gave the same wall time within 5% (0.19 s per trajectory, 64 seeds)
#: with median steps 1,884 and 2,499 (4: 2,076 on 32); not re-tuned for Rodas5P.
COST_RATIO = 2.0
#: DOP853's stability boundary on the negative real axis is h |lambda| ~ 6.
SWITCH_LIMIT = 6.0 * COST_RATIO
POWER_ITERATIONS = 8
# Every switch to Rosenbrock waits for ``integrate.STIFF_COUNT`` stability-limited explicit
# steps. (Doubling that wait after short Rosenbrock stretches, up to 960, spent 1,365 of a
# trajectory's 3,922 steps at d = 1e12 on stability-limited Dormand-Prince steps, when the
# stage stepped with Dormand-Prince; without it: 3,314 steps for 3% more CPU time.)
#: Largest round-off floor of the absolute tolerance per step. Uncapped, the floor grows with
#: h (steps ~ t ~ 1e11 at d = 1e12): its allowance let overlaps drift along flat directions
#: (antipodal pairs) by more than ``VERIFY_OVERLAP_TOL`` per window, and no window confirmed.
ROUNDOFF_CAP = 1e-7

#: What :func:`finish` counts per trajectory into its ``stats`` row (``finish_batch``'s
#: ``stats``; the per-phase breakdown of ``benchmarks/bench_mse_d.py``): accepted /
#: rejected Rosenbrock and DOP853 steps, Jacobians, LU factorizations, power
#: iterations, verification windows opened and restarted, switches each way, the time
#: covered by Rosenbrock steps, the accepted explicit (DOP853) steps that the stiffness
#: test found stability-limited, and the Rosenbrock attempts with the double-double field and
#: with the dense LU (Woodbury declined).
(ST_ROS, ST_ROS_REJ, ST_DP, ST_DP_REJ, ST_JAC, ST_LU, ST_RHO, ST_WINDOWS, ST_RESTARTS,
 ST_TO_STIFF, ST_TO_EXPLICIT, ST_ROS_TIME, ST_DP_STIFF, ST_ACCURATE, ST_DENSE,
 ST_RECIPROCAL) = range(16)
N_STATS = 16


@njit
def reduced_jacobian(y, args, work, dy, J):
    """Closed-form Jacobian of the ``MSE_REDUCED`` field (rows ``xi_i = (M_i, z_i)``).

    With ``P = diag(A^-1, I)``, ``G_i = P xi_i``, ``Q_il = G_i . xi_l`` and the field
    ``dxi_i = -2 sum_l C_il xi_l + 2 (A a_i, 0)`` (``mse.py``)::

        d dxi_i / d xi_m = -2 C_im I                                       (every i, m)
                         + 2 (A diag(a'_i), 0) - 2 xi_i (a_i + M_i a'_i, 0)^T   (m = i)
                         + sum_{l != i} 2 (e_il xi_i - b'_il xi_l) G_l^T        (m = i)
                         + 2 (e_il xi_i - b'_il xi_l) G_i^T                     (m = l != i)

    with ``a' = g_st''(M)``, ``b'_il = g_ss''(Q_il)``, ``e_il = b'_il Q_il + B_il`` (the
    derivative of ``s_i`` in ``Q_il``, sign flipped). The velocity is written to ``dy``.
    """
    A = args[0]
    extra = args[3]
    k = A.shape[0]
    n = mse.mse_n_neurons(args)
    K = mse._width(mse.MSE_REDUCED, args)
    mse.mse_vector_field(mse.MSE_REDUCED, y, args, work, dy)
    oa, oQ, oC, _, _, _ = mse._layout(mse.MSE_REDUCED, args)
    dss = extra[mse._ROW_DSS]
    dst = extra[mse._ROW_DST]
    Lss = int(extra[mse._ROW_META, mse._META_LDSS])
    Lst = int(extra[mse._ROW_META, mse._META_LDST])
    J[:, :] = 0.0
    for i in range(n):
        for m in range(n):
            c = -2.0 * work[oC + i * n + m]
            for x in range(K):
                J[i * K + x, m * K + x] += c
    for i in range(n):
        r = i * K
        for jp in range(k):
            mij = y[r + jp]
            ap = mse._dpoly(dst, Lst, mij)
            ds = work[oa + i * k + jp] + mij * ap
            for j in range(k):
                J[r + j, r + jp] += 2.0 * A[jp, j] * ap
            for x in range(K):
                J[r + x, r + jp] -= 2.0 * y[r + x] * ds
        for l in range(n):
            if l == i:
                continue
            q = work[oQ + min(i, l) * n + max(i, l)]
            bp = mse._dpoly(dss, Lss, q)
            e = bp * q + work[oC + i * n + l]
            o = l * K
            for x in range(K):
                cx = 2.0 * (e * y[r + x] - bp * y[o + x])
                for z in range(K):
                    J[r + x, r + z] += cx * work[z + o]
                    J[r + x, o + z] += cx * work[z + r]


@njit
def _jacobian(model, y, args, work, dy, J):
    """The Jacobian of the field at ``y`` into ``J``, its velocity into ``dy``."""
    if model == MSE_REDUCED:
        reduced_jacobian(y, args, work, dy, J)
    else:
        J[:, :] = difference_jacobian(model, y, args, work)
        vector_field(model, y, args, work, dy)


@njit
def _linearize(model, y, args, work, dy, J, fac):
    """The velocity at ``y`` into ``dy`` and its Jacobian: the reduced model's in Woodbury's
    structured form (``woodbury.prepare``, into ``fac``; the dense ``J`` is built only where a
    factorization falls back to it), other models' densely into ``J``. Returns whether ``J``
    now holds the Jacobian at ``y``."""
    if model == MSE_REDUCED:
        vector_field(model, y, args, work, dy)
        woodbury.prepare(y, args, work, fac)
        return False
    _jacobian(model, y, args, work, dy, J)
    return True


@njit
def _stiff_field(model, accurate, y, args, work, dy):
    """The velocity for a Rosenbrock stage: ``MSE_REDUCED``'s in double-double
    (``mse.reduced_field_accurate``) when ``accurate``, else the plain field."""
    if accurate and model == MSE_REDUCED:
        mse.reduced_field_accurate(y, args, work, dy)
    else:
        vector_field(model, y, args, work, dy)


@njit(fastmath=DOT_MATH)
def _spectral_radius(model, J, fac, n, v, w):
    """Power-iteration estimate of the largest |eigenvalue| of the Jacobian (fixed start
    vector; ``n`` neurons): the reduced model's by products with its structured form
    (``woodbury.jvp``), other models' with the dense ``J``."""
    N = v.size
    v[:] = 1.0 / math.sqrt(N)
    rho = 0.0
    for _ in range(POWER_ITERATIONS):
        if model == MSE_REDUCED:
            woodbury.jvp(fac, v, w, n, N // n)
        else:
            for i in range(N):
                acc = 0.0
                for j in range(N):
                    acc += J[i, j] * v[j]
                w[i] = acc
        nw = 0.0
        for i in range(N):
            nw += w[i] * w[i]
        rho = math.sqrt(nw)
        if rho == 0.0:
            return 0.0
        for i in range(N):
            v[i] = w[i] / rho
    return rho


@njit
def _add_abs(acc, e):
    """``acc += |e|``, element by element."""
    for i in range(acc.size):
        acc[i] += abs(e[i])


@njit
def _error(y, yn, e, atol, rtol):
    """RMS of ``e`` in units of ``atol[i] + rtol max(|y_i|, |yn_i|)``."""
    acc = 0.0
    for i in range(y.size):
        sk = atol[i] + rtol * max(abs(y[i]), abs(yn[i]))
        acc += (e[i] / sk) ** 2
    return math.sqrt(acc / y.size)


@njit
def _round_off_floors(atol, per_scale, row_scale, out):
    """``out``: the absolute tolerance of each coordinate, ``atol`` (per coordinate) plus its
    neuron's round-off floor ``per_scale * row_scale[i]`` (capped at ``ROUNDOFF_CAP``)."""
    n = row_scale.size
    K = out.size // n
    for i in range(n):
        a = min(per_scale * row_scale[i], ROUNDOFF_CAP)
        for x in range(K):
            out[i * K + x] = atol[i * K + x] + a


@njit
def _structured(model, h, fac, n, K):
    """Factor ``I/(gamma h) - J`` of the reduced model by Woodbury (``woodbury.py``, from
    :func:`_linearize`'s ``fac``): an LU of its 65 (n = 10) capacitance unknowns instead of
    the 120 of the dense matrix. False where that form is ill-conditioned (the caller factors
    the dense matrix)."""
    if model != MSE_REDUCED:
        return False
    if not woodbury.factor(1.0 / (GAMMA * h), fac, n, K):
        return False
    return woodbury.lu_checked(fac.S, fac.spiv)


@njit
def _solve(structured, W, piv, fac, b, n, K):
    if structured:
        woodbury.solve(fac, b, n, K)
    else:
        _lu_solve(W, piv, b)


@njit
def _recip_factor(structured, W, piv, fac, n, K, rec, cnt):
    """The Woodbury correction of the step in reciprocal coordinates (``reciprocal.py``): with
    ``B = alpha I - J`` as factored, pole variables ``u_c = w_c . y`` in coordinates ``g_c``,
    the step's matrix is ``T (B - E diag(delta) E^T) T^-1`` (``T = dz/dy`` at the step's
    start; ``E = [w_c]``: ``e_g``, ``e_g + e_o`` for a pair, a direction; ``delta`` over
    ``|w_c|^2``).
    Returns ``X = B^-1 E`` (rows, into ``rec``) and the LU of the capacitance matrix
    ``diag(delta)^-1 - E^T X`` with its pivots ((0 x 0) if singular)."""
    delta, X = rec.delta, rec.X
    for c in range(cnt):
        X[c, :] = 0.0
        for s in range(rec.ns[c]):
            X[c, rec.sup[c, s]] = rec.w[c, s]
        _solve(structured, W, piv, fac, X[c], n, K)
    cap = np.empty((cnt, cnt))
    for a_ in range(cnt):
        for c in range(cnt):
            cap[a_, c] = -reciprocal.pole_part(X[c], rec, a_)
        cap[a_, a_] += 1.0 / delta[a_]
    cpiv = np.empty(cnt, dtype=np.int64)
    if not _lu(cap, cpiv):
        return np.empty((0, 0)), cpiv
    return cap, cpiv


@njit
def _step_solve(structured, W, piv, fac, b, n, K, rec, cnt, cap, cpiv):
    """``b <- (alpha I - J~)^-1 b`` for the step's coordinates: with ``cnt`` pole variables
    the matrix is ``T (B - E diag(delta) A^T) T^-1`` (:func:`_recip_factor`)."""
    if cnt == 0:
        _solve(structured, W, piv, fac, b, n, K)
        return
    X = rec.X
    reciprocal.to_step(b, rec, cnt)
    _solve(structured, W, piv, fac, b, n, K)
    s = np.empty(cnt)
    for c in range(cnt):
        s[c] = reciprocal.pole_part(b, rec, c)
    _lu_solve(cap, cpiv, s)
    for c in range(cnt):
        sc = s[c]
        Xc = X[c]
        for i in range(b.size):
            b[i] += sc * Xc[i]
    reciprocal.from_step(b, rec, cnt)


@njit
def _rodas_step(model, accurate, y, f0, h, args, work, J, jac_dense, W, piv, fac, k, ys, fs,
                yn, rec, cnt):
    """One Rodas5P step of length ``h`` from ``y`` (velocity ``f0``, Jacobian from
    :func:`_linearize`: ``fac``, and ``J`` if ``jac_dense``), in reciprocal coordinates for
    the ``cnt`` pole variables that ``reciprocal.select`` chose into ``rec`` (its ``z0``,
    ``zn`` then hold the step's ends in those coordinates).

    Stages go to ``k`` (in the step's coordinates), the error estimate is the last, the new
    state goes to ``yn``. Returns (whether the step could be taken: ``I/(gamma h) - J``
    regular, no reciprocal coordinate through infinity; whether Woodbury factored it, whether
    ``J`` now holds the dense Jacobian at ``y``).
    """
    N = y.size
    n = mse.mse_n_neurons(args)
    K = N // n
    structured = _structured(model, h, fac, n, K)
    if not structured:
        if not jac_dense:
            _jacobian(model, y, args, work, fs, J)
            jac_dense = True
        for i in range(N):
            for j in range(N):
                W[i, j] = -J[i, j]
            W[i, i] += 1.0 / (GAMMA * h)
        if not _lu(W, piv):
            return False, False, jac_dense
    z0 = rec.z0
    cap, cpiv = np.empty((0, 0)), np.empty(0, dtype=np.int64)
    if cnt > 0:
        cap, cpiv = _recip_factor(structured, W, piv, fac, n, K, rec, cnt)
        if cap.shape[0] != cnt:
            return False, structured, jac_dense
        reciprocal.to_z(y, rec, cnt, z0)
    else:
        z0[:] = y
    zs = rec.zs
    k[0, :] = f0
    reciprocal.velocity(y, k[0], rec, cnt)
    _step_solve(structured, W, piv, fac, k[0], n, K, rec, cnt, cap, cpiv)
    inv_h = 1.0 / h
    # Stages 2..8, sums in the tableau's order (k_1 first), a row of k at a time
    # (contiguous, vectorized; the same sums in the same order as entry by entry).
    for s in range(1, ROS_STAGES):
        zs[:] = z0
        for j in range(s):
            c = ROS_R[s - 1, j]
            if c != 0.0:
                for i in range(N):
                    zs[i] += c * k[j, i]
        if not reciprocal.to_y(zs, rec, cnt, ys):
            return False, structured, jac_dense
        _stiff_field(model, accurate, ys, args, work, fs)
        reciprocal.velocity(ys, fs, rec, cnt)
        ks = k[s]
        ks[:] = 0.0
        for j in range(s):
            c = ROS_Q[s - 1, j]
            for i in range(N):
                ks[i] += c * k[j, i]
        for i in range(N):
            ks[i] = fs[i] + ks[i] * inv_h
        _step_solve(structured, W, piv, fac, ks, n, K, rec, cnt, cap, cpiv)
    zn = rec.zn
    for i in range(N):
        zn[i] = zs[i] + k[ROS_STAGES - 1, i]
    return reciprocal.to_y(zn, rec, cnt, yn), structured, jac_dense


@njit
def _rodas_dense(y, yn, k, s, out):
    s1 = 1.0 - s
    for i in range(y.size):
        d1 = 0.0
        d2 = 0.0
        d3 = 0.0
        for j in range(ROS_STAGES):
            d1 += ROS_H[0, j] * k[j, i]
            d2 += ROS_H[1, j] * k[j, i]
            d3 += ROS_H[2, j] * k[j, i]
        out[i] = y[i] * s1 + s * (yn[i] + s1 * (d1 + s * (d2 + s * d3)))


@njit
def _dense_at(stiff, y, kr, F, x, out, rec, cnt):
    """The state at the fraction ``x`` of the last step: Rodas5P's (in the step's
    coordinates, ``rec``'s ``z0``, ``zn``, mapped back) or DOP853's dense output (``F``
    prepared by ``dop853.dense_prepare``)."""
    if stiff:
        zs = rec.zs
        _rodas_dense(rec.z0, rec.zn, kr, x, zs)
        reciprocal.to_y(zs, rec, cnt, out)
    else:
        dop853.dense(y, F, x, out)


@njit
def _ready_dense(stiff, ready, model, y, yn, h, args, work, kd, fs, Fd):
    """Prepare DOP853's dense output of the step ``y -> yn`` into ``Fd`` unless the step
    was a Rosenbrock one (its dense output is in its stages) or it is ``ready``; returns
    whether ``Fd`` now holds it."""
    if not stiff and not ready:
        dop853.dense_prepare(model, y, yn, h, args, work, kd, fs, Fd)
        return True
    return ready


@njit
def _summary(model, y, args, M, Q):
    """Loss of ``y``; its overlaps ``M`` and Gram matrix ``Q`` are written to the arrays."""
    mse.mse_overlaps(model, y, args, M)
    n = mse.mse_n_neurons(args)
    for i in range(n):
        for l in range(n):
            Q[i * n + l] = mse._gram_entry(model, y, args, i, l)
    return mse.mse_loss(model, y, args)


@njit
def _changed(x0, x1, floor):
    """Whether an overlap moved by more than ``VERIFY_OVERLAP_TOL``, or grew in magnitude by
    more than the factor ``1 + VERIFY_GROWTH`` from above ``floor``
    (``continuation.verify_floor``)."""
    return abs(x1 - x0) > VERIFY_OVERLAP_TOL or (
        abs(x1) > floor and abs(x1) > (1.0 + VERIFY_GROWTH) * abs(x0))


@njit
def _moved(loss0, M0, Q0, loss1, M1, Q1, floor):
    if abs(loss1 - loss0) > VERIFY_LOSS_TOL:
        return True
    for x in range(M0.size):
        if _changed(M0[x], M1[x], floor):
            return True
    for x in range(Q0.size):
        if _changed(Q0[x], Q1[x], floor):
            return True
    return False


@njit
def _pole_before(x0, xm, xq, x1, t0, tm, tq, t1, t_max, m, floor, noise, noise_late):
    """Whether ``x`` (``x0`` at ``t0``, ``xm`` at ``tm``, ``xq`` at ``tq``, ``x1`` at ``t1``;
    a time < 0: no such sample), above ``floor``, grew like a pole that blows up before
    ``t_max`` (``continuation.blow_up_time``, with ``VERIFY_POLE_MARGIN``): by more than
    ``VERIFY_POLE_NOISE`` (relative); or steadily (``continuation.steady_growth``) by more
    than ``VERIFY_NOISE_ERRORS`` times ``noise``, what the window's integration errors could
    have moved it; or steadily over the window's second half by more than
    ``VERIFY_LATE_ERRORS`` times ``noise_late``, that half's share of ``noise``."""
    if not abs(x1) > floor:
        return False
    if abs(x1) > (1.0 + VERIFY_POLE_NOISE) * abs(x0) or (
            abs(x1) - abs(x0) > VERIFY_NOISE_ERRORS * noise
            and steady_growth(x0, xm, x1, t0, tm, t1)):
        T = blow_up_time(x0, x1, t0, t1, m)
    elif abs(x1) - abs(xm) > VERIFY_LATE_ERRORS * noise_late and \
            steady_growth(xm, xq, x1, tm, tq, t1):
        # A slow drift under a component still settling in the first half, whose fast
        # first-half rate fails the steadiness test above: the second half alone shows it.
        T = blow_up_time(xm, x1, tm, t1, m)
    else:
        return False
    # The blow-up is extrapolated from one window: with t1 + VERIFY_POLE_MARGIN (t_max - t1)
    # it counts as before t_max where it comes that much late.
    return T < t1 + VERIFY_POLE_MARGIN * (t_max - t1)


@njit
def _row_sums(err, err_mid, row_err, K):
    """Per row of ``K`` coordinates, the sum of ``err`` (into ``row_err[0]``) and of
    ``err - err_mid`` (into ``row_err[1]``)."""
    for i in range(row_err.shape[1]):
        acc = 0.0
        late = 0.0
        for x in range(K):
            acc += err[i * K + x]
            late += err[i * K + x] - err_mid[i * K + x]
        row_err[0, i] = acc
        row_err[1, i] = late


@njit
def _pole_ahead(M0, Q0, Ms, Qs, M1, Q1, t0, ts, t1, t_max, m_overlap, m_other, floor,
                err, steps, err_mid, steps_mid, coordinates, row_err):
    """Whether an overlap or Gram entry grew over the window ``[t0, t1]`` (sampled also at
    the times ``ts``: ``Ms[s]``, ``Qs[s]``) like a pole that blows up before ``t_max``
    (:func:`_pole_before`). ``err``: the sum over the window's ``steps`` accepted steps of
    each coordinate's error estimate; ``err_mid``, ``steps_mid``: the same before the step
    that crossed the middle sample (the rest is the second half's). An overlap ``M_ij`` is
    coordinate ``j`` of row ``i`` where ``coordinates`` (the reduced model), else a dot
    product with row ``i``, and ``Q_il`` one of rows ``i`` and ``l`` (rows of norm 1: their
    errors add up); plus the round-off of the updates. ``row_err``: scratch (2, n)."""
    n = row_err.shape[1]
    K = err.size // n
    k = M0.size // n
    _row_sums(err, err_mid, row_err, K)
    for x in range(M0.size):
        i, j = x // k, x % k
        e = err[i * K + j] if coordinates else row_err[0, i]
        e_late = err[i * K + j] - err_mid[i * K + j] if coordinates else row_err[1, i]
        if _pole_before(M0[x], Ms[0, x], Ms[1, x], M1[x], t0, ts[0], ts[1], t1, t_max,
                        m_overlap, floor, e + steps * EPS * abs(M1[x]),
                        e_late + (steps - steps_mid) * EPS * abs(M1[x])):
            return True
    for x in range(Q0.size):
        i, l = x // n, x % n
        e = row_err[0, i] + row_err[0, l]
        e_late = row_err[1, i] + row_err[1, l]
        if _pole_before(Q0[x], Qs[0, x], Qs[1, x], Q1[x], t0, ts[0], ts[1], t1, t_max,
                        m_other, floor, e + steps * EPS * abs(Q1[x]),
                        e_late + (steps - steps_mid) * EPS * abs(Q1[x])):
            return True
    return False


@njit
def _first_step(y, f0, rtol, atol, room):
    """A first step size from the scaled sizes of ``y`` and its velocity (the controller
    corrects it within a few tries)."""
    dnf = 0.0
    dny = 0.0
    for i in range(y.size):
        sk = atol[i] + rtol * abs(y[i])
        dnf += (f0[i] / sk) ** 2
        dny += (y[i] / sk) ** 2
    if dnf <= 1e-10 or dny <= 1e-10:
        return min(1e-6, room)
    return min(0.01 * math.sqrt(dny / dnf), room)


@njit
def finish(model, y, t, steps, args, rtol, atol, t_max, max_steps, gtol, threshold,
           verify_floor, snaps, snap_out, t_esc, mode, stats):
    """Continue one coupled trajectory from ``(t, y)`` (``y`` is advanced in place) until the
    convergence rule (``continuation.py``) decides, or ``t_max`` / ``max_steps`` / a failure
    ends it; returns ``(t, steps, status)``.

    ``atol`` is per coordinate (``integrate.absolute_tolerances``), ``verify_floor`` the growth
    test's floor of the continuation check (``continuation.verify_floor``). ``steps`` counts
    the accepted steps so far, ``t_esc`` (updated in place) the escape times;
    ``snap_out`` rows for snapshot times > ``t`` are written here. ``mode``: ``SWITCHING``
    (the module docstring), ``EXPLICIT`` (DOP853 only: states too large for a dense
    Jacobian, or on request) or ``ROSENBROCK`` (never switches back; for comparisons).
    ``stats`` (``N_STATS`` numbers) receives the counts of ``ST_*``.
    """
    N = y.size
    n = mse.mse_n_neurons(args)
    k_dim = args[0].shape[1]
    work = np.empty(work_size(model, args))
    yn = np.empty(N)
    ys = np.empty(N)
    fs = np.empty(N)
    f0 = np.empty(N)
    kr = np.empty((ROS_STAGES, N))
    kd = np.empty((dop853.N_ROWS, N))
    Fd = np.empty((7, N))
    dense_ready = False  # Fd holds the dense output of the last explicit step
    allow_stiff = mode != EXPLICIT
    J = np.empty((N, N)) if allow_stiff else np.empty((1, 1))
    W = np.empty((N, N)) if allow_stiff else np.empty((1, 1))
    piv = np.empty(N, dtype=np.int64)
    wfac = (woodbury.allocate(n, k_dim, N // n) if model == MSE_REDUCED and allow_stiff
            else woodbury.allocate(1, 1, 1))
    rec = reciprocal.allocate(N)
    cnt = 0  # the last Rosenbrock step's pole variables in reciprocal form (reciprocal.py)
    # The couplings' pole exponents: for the continuation check's extrapolation, and for the
    # reciprocal steps where they are on.
    p_overlap, p_other = reciprocal.exponents(args)
    m_overlap, m_other = ((p_overlap, p_other) if model == MSE_REDUCED and allow_stiff
                          else (0.0, 0.0))
    row_scale = np.empty(n)  # per neuron: the round-off scale of its velocity
    atol_v = np.empty(N)  # per coordinate: atol plus its row's round-off floor
    M0 = np.empty(n * k_dim)
    Q0 = np.empty(n * n)
    M1 = np.empty(n * k_dim)
    Q1 = np.empty(n * n)
    # The window's inner samples, at WINDOW_SAMPLES of its length in log time (does a growth
    # hold up?), and when they were taken (< 0: not yet).
    Ms = np.empty((WINDOW_SAMPLES.size, n * k_dim))
    Qs = np.empty((WINDOW_SAMPLES.size, n * n))
    sample_t = np.full(WINDOW_SAMPLES.size, -1.0)
    loss0 = 0.0
    window_end = -1.0  # < 0: no window open
    window_start = 0.0
    # What the window's integration errors could have moved each coordinate: the sum of the
    # accepted steps' error estimates (and their count, for the round-off).
    err_sum = np.zeros(N)
    err_steps = 0
    err_mid = np.zeros(N)  # ... up to the step that crossed the middle sample
    steps_mid = 0
    row_err = np.empty((2, n))  # per neuron: the window's summed errors, its second half's
    js = 0
    while js < snaps.size and snaps[js] <= t:
        js += 1
    any_escaped = False
    n_escaped = 0
    for e in range(t_esc.size):
        if not math.isnan(t_esc[e]):
            any_escaped = True
            n_escaped += 1
    stiff = allow_stiff
    jac_fresh = False  # f0 and the Jacobian (_linearize) are those of y
    jac_dense = False  # J holds the dense Jacobian of y
    f0_accurate = False  # f0 from the double-double field (Rosenbrock steps)
    if stiff:
        jac_dense = _linearize(model, y, args, work, f0, J, wfac)
        jac_fresh = True
        stats[ST_JAC] += 1
    else:
        vector_field(model, y, args, work, f0)
    t_lo = 0.0  # what the float sum t dropped (integrate.advance)
    h = _first_step(y, f0, rtol, atol, max(t_max - t, 0.0))
    err_old = 1e-2
    h_old = 0.0
    first = True
    rejected = False
    n_stiff = 0
    n_nonstiff = 0
    rho = 0.0
    scale = row_scales(model, y, args, work, row_scale)  # work holds y's field data
    status = -1
    while True:
        if any_escaped and grad_norm_given(model, y, f0, args, work) < gtol \
                and settled(model, y, args, work, threshold):
            if window_end < 0.0 or t >= window_end:
                if window_end < 0.0:
                    loss0 = _summary(model, y, args, M0, Q0)
                    stats[ST_WINDOWS] += 1
                else:
                    loss1 = _summary(model, y, args, M1, Q1)
                    if not _moved(loss0, M0, Q0, loss1, M1, Q1, verify_floor) and \
                            not _pole_ahead(M0, Q0, Ms, Qs, M1, Q1, window_start, sample_t,
                                            t, t_max, p_overlap, p_other, verify_floor,
                                            err_sum, err_steps, err_mid, steps_mid,
                                            model == MSE_REDUCED, row_err):
                        status = CONVERGED
                        break
                    stats[ST_RESTARTS] += 1
                    loss0 = loss1
                    M0[:] = M1
                    Q0[:] = Q1
                # A (new) window [t, VERIFY_FACTOR t]: no inner samples, no errors yet.
                window_start = t
                window_end = VERIFY_FACTOR * t
                sample_t[:] = -1.0
                err_sum[:] = 0.0
                err_steps = 0
        else:
            window_end = -1.0
        status = dp.limit_reached(t, t_max, steps, max_steps, h)
        if status != dp.GOING:
            break
        h = min(h, t_max - t)
        per_scale = ROUNDOFF_SAFETY * EPS * h
        floor = per_scale * scale  # the largest row's
        _round_off_floors(atol, per_scale, row_scale, atol_v)
        if stiff:
            if not jac_fresh:
                jac_dense = _linearize(model, y, args, work, f0, J, wfac)
                jac_fresh = True
                f0_accurate = False
                stats[ST_JAC] += 1
            # Where the round-off floor is capped, the plain field's round-off over a step
            # (~ h eps scale) would outgrow the tolerance and limit h: the reduced model's
            # stages then take the double-double field (round-off ~ eps |f|, ddouble.py).
            accurate = model == MSE_REDUCED and floor > ROUNDOFF_CAP
            if accurate and not f0_accurate:
                _stiff_field(model, True, y, args, work, f0)
                f0_accurate = True
            cnt = reciprocal.select(y, f0, h, atol_v, n, N // n, k_dim, m_overlap, m_other,
                                    wfac, rec) if m_overlap + m_other > 0.0 else 0
            while True:  # one call site: the step is large, each inlined copy compiles anew
                ok, structured, jac_dense = _rodas_step(model, accurate, y, f0, h, args, work,
                                                        J, jac_dense, W, piv, wfac, kr, ys, fs,
                                                        yn, rec, cnt)
                if ok or cnt == 0:
                    break
                # A pole variable went through infinity: the same step in the original
                # coordinates (a rejection would shrink h six-fold).
                cnt = 0
                stats[ST_LU] += 1
            stats[ST_LU] += 1
            stats[ST_ACCURATE] += accurate
            stats[ST_DENSE] += not structured
            err = math.inf
            if ok:
                fs[:] = kr[ROS_STAGES - 1]  # the stages stay in z for the dense output
                reciprocal.error_in_y(fs, y, yn, rec, cnt)
                err = _error(y, yn, fs, atol_v, rtol)
            if not math.isfinite(err) or not dp._all_finite(yn):
                h *= R_FAC_DOWN
                rejected = True
                stats[ST_ROS_REJ] += 1
                continue
            fac = max(R_FAC_DOWN, min(R_FAC_UP, err ** ERR_EXPO / R_SAFE))
            if err > 1.0:
                h = h / fac
                rejected = True
                stats[ST_ROS_REJ] += 1
                continue
            stats[ST_ROS] += 1
            stats[ST_ROS_TIME] += h
            stats[ST_RECIPROCAL] += cnt > 0
            if not first:
                pred = (h_old / h) * (err * err / err_old) ** ERR_EXPO / R_SAFE
                fac = max(fac, max(R_FAC_DOWN, min(R_FAC_UP, pred)))
            first = False
            h_old = h
            err_old = max(1e-2, err)
            h_new = h / fac
        else:
            kd[0, :] = f0
            dop853.step(model, y, h, args, work, kd, ys, yn)
            dense_ready = False
            err = dop853.error_norm(kd, h, y, yn, atol_v, rtol)
            if not math.isfinite(err) or not dp._all_finite(yn):
                h *= dop853.FAC_LO
                rejected = True
                stats[ST_DP_REJ] += 1
                continue
            if err > 1.0:
                h = h / min(1.0 / dop853.FAC_LO, err ** dop853.EXPO / dop853.SAFE)
                rejected = True
                stats[ST_DP_REJ] += 1
                continue
            stats[ST_DP] += 1
            h_new = h / dop853.factor(err)
            if allow_stiff:
                if dop853.stiffness(kd, ys, yn, h) > dop853.STIFF_HLAMBDA:
                    n_stiff += 1
                    n_nonstiff = 0
                    stats[ST_DP_STIFF] += 1
                else:
                    n_nonstiff += 1
                    if n_nonstiff == dp.NONSTIFF_RESET:
                        n_stiff = 0
        # Accepted step [t, t + h].
        if rejected:
            h_new = min(h_new, h)
            rejected = False
        t_new, t_lo_new = dp.advance(t, t_lo, h)
        if n_escaped < t_esc.size:
            for e in range(t_esc.size):
                if math.isnan(t_esc[e]) and overlap_norm(model, yn, args, work, e) >= threshold:
                    dense_ready = _ready_dense(stiff, dense_ready, model, y, yn, h, args, work, kd,
                                               fs, Fd)
                    lo, hi = 0.0, 1.0  # bisection on the dense output, to round-off
                    for _ in range(60):
                        mid = 0.5 * (lo + hi)
                        _dense_at(stiff, y, kr, Fd, mid, ys, rec, cnt)
                        if overlap_norm(model, ys, args, work, e) >= threshold:
                            hi = mid
                        else:
                            lo = mid
                        if hi - lo <= 1e-16:
                            break
                    t_esc[e] = t + hi * h
                    n_escaped += 1
                    any_escaped = True
        while js < snaps.size and snaps[js] <= t_new:
            dense_ready = _ready_dense(stiff, dense_ready, model, y, yn, h, args, work, kd, fs, Fd)
            _dense_at(stiff, y, kr, Fd, (snaps[js] - t) / h, ys, rec, cnt)
            observables(model, ys, args, snap_out[js])
            js += 1
        if window_end > 0.0:
            # The step that closes the window takes again the samples that fall inside it,
            # placed on the window's actual end: a long step at rest may overshoot the
            # planned end many times over, and the halves would then be far from halves.
            closing = t_new >= window_end
            end = t_new if closing else window_end
            for s_ in range(WINDOW_SAMPLES.size):
                at = window_start * (end / window_start) ** WINDOW_SAMPLES[s_]
                if (sample_t[s_] < 0.0 or closing) and t <= at <= t_new:
                    dense_ready = _ready_dense(stiff, dense_ready, model, y, yn, h, args, work, kd,
                                               fs, Fd)
                    _dense_at(stiff, y, kr, Fd, (at - t) / h, ys, rec, cnt)
                    _summary(model, ys, args, Ms[s_], Qs[s_])
                    sample_t[s_] = at
                    if s_ == 0:  # the second half's errors: from here, this step included
                        err_mid[:] = err_sum
                        steps_mid = err_steps
            if stiff:
                _add_abs(err_sum, fs)  # fs: the step's error estimate in y
            else:
                dop853.add_error(kd, h, err_sum)
            err_steps += 1
        y[:] = yn
        t = t_new
        t_lo = t_lo_new
        steps += 1
        if stiff:
            # The Jacobian at the new state gives both the next step's matrix and the test
            # whether an explicit step of the proposed size would be stable.
            jac_dense = _linearize(model, y, args, work, f0, J, wfac)
            jac_fresh = True
            f0_accurate = False
            stats[ST_JAC] += 1
            scale = row_scales(model, y, args, work, row_scale)  # _linearize filled work
            # The power iteration only where a switch is plausible (not at rest, where h is
            # orders of magnitude beyond the explicit stability limit).
            if mode == SWITCHING and (rho == 0.0 or h_new * rho <= 4.0 * SWITCH_LIMIT):
                rho = _spectral_radius(model, J, wfac, n, fs, ys)
                stats[ST_RHO] += 1
                if h_new * rho <= SWITCH_LIMIT:
                    n_nonstiff += 1
                else:
                    n_nonstiff = 0
                if n_nonstiff >= NONSTIFF_STEPS:
                    stiff = False
                    stats[ST_TO_EXPLICIT] += 1
                    n_nonstiff = 0
                    n_stiff = 0
        else:
            f0[:] = kd[dop853.N_STAGES]
            f0_accurate = False
            if n_stiff >= dp.STIFF_COUNT:
                stiff = True
                stats[ST_TO_STIFF] += 1
                jac_fresh = False
                first = True
                n_stiff = 0
                n_nonstiff = 0
                rho = 0.0
        h = h_new
    for j in range(js, snaps.size):
        if status == CONVERGED:
            observables(model, y, args, snap_out[j])
        else:
            snap_out[j, :] = np.nan
    return t, steps, status


def implicit_applies(model: int, y: np.ndarray) -> bool:
    """Whether a state of this model and size may take Rosenbrock steps: the reduced model's
    (closed-form Jacobian) up to ``IMPLICIT_MAX_SIZE`` numbers. The full-d model, for
    validation at small d, steps with DOP853 throughout: with its difference Jacobian
    the Rosenbrock steps jittered at rest above a tight ``gtol`` (1e-8) and no window
    confirmed."""
    return model == mse.MSE_REDUCED and y.size <= IMPLICIT_MAX_SIZE


@njit(parallel=True)
def finish_batch(model, rows, Y, T, S, ST, TE, U_t, args, rtol, atol, t_max, max_steps, gtol,
                 threshold, verify_floor, snaps, mode, stats):
    """:func:`finish` for the trajectories ``rows`` of a batch, in place, one per thread
    (``stats[r]``: row ``r``'s counts)."""
    for r in prange(rows.size):
        b = rows[r]
        T[b], S[b], ST[b] = finish(model, Y[b], T[b], S[b], args, rtol, atol, t_max, max_steps,
                                   gtol, threshold, verify_floor, snaps, U_t[b], TE[b], mode,
                                   stats[r])


# One entry kernel per coupled model, each passing its model as a compile-time constant, so
# that the stage compiles that model's functions alone, and calling the parallel kernel
# directly (integrate's entries, which say why).
def _stage_entry(model: int, name: str):
    def entry(rows, args, settings, out):
        # Unpacked here, not in the parallel kernel (as integrate's entries do: numba 0.68
        # returned unwritten arrays when the tuple was unpacked inside the prange function).
        rtol, atol, t_max, max_steps, gtol, threshold, verify_floor, snaps, mode = settings
        Y, T, S, ST, TE, U_t = out
        finish_batch(model, rows, Y, T, S, ST, TE, U_t, args, rtol, atol, t_max, max_steps,
                     gtol, threshold, verify_floor, snaps, mode, np.zeros((rows.size, N_STATS)))
    return jit_named(entry, name)


_finish_mse_reduced = _stage_entry(MSE_REDUCED, "_finish_mse_reduced")
_finish_mse_full = _stage_entry(MSE_FULL, "_finish_mse_full")


#: The stage's entry kernel per model: ``FINISH[model](rows, args, settings, out)`` with
#: ``settings = (rtol, atol, t_max, max_steps, gtol, threshold, verify_floor, snaps, mode)``
#: and
#: ``out = (Y, T, S, ST, TE, U_t)`` of :func:`integrate.solve`.
FINISH = {MSE_REDUCED: _finish_mse_reduced, MSE_FULL: _finish_mse_full}
