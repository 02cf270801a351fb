"""Compiled kernels of online SGD: a counter-free per-trajectory RNG and the two chains.

Online SGD on the correlation loss, one neuron ``w`` on the unit sphere, batch ``B``, step
size ``lr`` (the ascent of the correlation, as the flow and ``dynamics.gd_map``)::

    G  = (1/B) sum_i f_i x_i,      f_i = sigma'(w.x_i) y_i,   y_i = sum_j sigma*(v_j.x_i)
    w <- (w + lr (G - (w.G) w)) / ||.||

**The exact reduction** (docs/design.md §1.4). Write ``w = V A^-1 u + r e`` with
``u = V^T w``, ``r = ||P_perp w||`` and ``e`` the unit perpendicular direction. A fresh sample
splits into independent parts: ``z = V^T x ~ N(0, A)``, ``xi = e.x ~ N(0, 1)`` and an isotropic
Gaussian remainder ``x_rem`` in the other ``d - k - 1`` directions. Then
``w.x = u^T A^-1 z + r xi`` and ``y`` depends on ``z`` only, so every ``f_i`` is a function of
``(z_i, xi_i)``; ``G_rem = (1/B) sum f_i x_rem_i`` is, given the ``f_i``, isotropic Gaussian with
``||G_rem||^2 = (sum f_i^2 / B^2) chi2(d - k - 1)``. With ``Gz = V^T G``, ``Ge = e.G`` and
``c = w.G = u^T A^-1 Gz + r Ge``::

    u'  = u + lr (Gz - c u)
    p   = r (1 - lr c) + lr Ge                 (component of the new w_perp along e)
    r'^2 = p^2 + lr^2 ||G_rem||^2
    N^2 = u'^T A^-1 u' + r'^2,     (u, r) <- (u', r') / N

The new ``e`` is a combination of ``e`` and ``G_rem``'s direction; the next sample is fresh and
isotropic, so its projection on the new ``e`` is again ``N(0, 1)`` independent of ``z``, and the
chain on ``(u, r)`` is closed and exact for every ``d``: ``B (k + 1)`` Gaussians and one
chi-square per step, whatever ``d``.

**Randomness.** numba's own generator has per-thread state, so a trajectory's numbers would
depend on the thread that runs it. Each trajectory here owns a xoshiro256** state (seeded by
``numpy.random.SeedSequence`` in ``sgd.py``), draws in a fixed order (per sample: the ``k``
Gaussians of ``z``, then ``xi``; per step: the chi-square), and is therefore bit-identical
whatever the batch, block or thread count. Gaussians come from a 256-layer ziggurat;
chi-squares are Marsaglia-Tsang gammas, exact for any degrees of freedom, at a cost that does
not grow with them.

The activations are the truncated Hermite series the flow uses (``sigma = sum a_p h_p``), so
the expected SGD direction is exactly the flow's field.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, uint64

from ._jit import jit as njit
from .dynamics import _ainv_quadratic, _ascent
from .status import CONVERGED, NON_FINITE, SAMPLE_BUDGET

_INV_2_53 = 1.0 / 9007199254740992.0


@njit(inline="always")
def _rotl(x, k):
    return (x << uint64(k)) | (x >> uint64(64 - k))


@njit(inline="always")
def next_u64(s):
    """One xoshiro256** output; advances the 4-word state ``s`` in place."""
    result = _rotl(s[1] * uint64(5), 7) * uint64(9)
    t = s[1] << uint64(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@njit(inline="always")
def uniform(s):
    """A uniform number in (0, 1) (never 0: its log is taken)."""
    return (float(next_u64(s) >> uint64(11)) + 0.5) * _INV_2_53


def _ziggurat_tables(layers: int = 256, r: float = 3.6541528853610088,
                     v: float = 0.00492867323399) -> tuple[np.ndarray, np.ndarray]:
    """Marsaglia & Tsang's (2000) 256-layer ziggurat of the Gaussian: layer edges and pdf.

    ``x[0] = v / f(r)`` is the width of the base strip (with the tail beyond ``r``), ``x[1] =
    r``, each layer has area ``v``, ``x[layers] = 0``; ``f`` is the unnormalized pdf.
    """
    x = np.empty(layers + 1)
    x[0] = v / math.exp(-0.5 * r * r)
    x[1] = r
    for i in range(2, layers):
        x[i] = math.sqrt(-2.0 * math.log(v / x[i - 1] + math.exp(-0.5 * x[i - 1] ** 2)))
    x[layers] = 0.0
    return x, np.exp(-0.5 * x * x)


_ZIG_X, _ZIG_F = _ziggurat_tables()
_ZIG_R = float(_ZIG_X[1])


@njit(inline="always")
def normal(s, spare):
    """A standard Gaussian by the ziggurat (one 64-bit draw in ~99% of the calls).

    ``spare`` is unused (kept so that the draw order of a chain is one function's business).
    """
    X, F = _ZIG_X, _ZIG_F
    while True:
        bits = next_u64(s)
        i = int(bits & uint64(255))
        u = 2.0 * (float(bits >> uint64(11)) * _INV_2_53) - 1.0
        x = u * X[i]
        if abs(x) < X[i + 1]:
            return x
        if i == 0:  # the tail beyond r (Marsaglia 1964)
            while True:
                xt = math.log(uniform(s)) / _ZIG_R
                yt = math.log(uniform(s))
                if -2.0 * yt >= xt * xt:
                    return xt - _ZIG_R if u < 0.0 else _ZIG_R - xt
        if F[i + 1] + (F[i] - F[i + 1]) * uniform(s) < math.exp(-0.5 * x * x):
            return x


@njit(inline="always")
def gamma(s, spare, shape):
    """A Gamma(shape, 1) variate (Marsaglia & Tsang 2000; boosted for shape < 1)."""
    if shape <= 0.0:
        return 0.0
    boost = 1.0
    if shape < 1.0:
        boost = uniform(s) ** (1.0 / shape)
        shape += 1.0
    dd = shape - 1.0 / 3.0
    cc = 1.0 / math.sqrt(9.0 * dd)
    while True:
        x = normal(s, spare)
        v = 1.0 + cc * x
        if v <= 0.0:
            continue
        v = v * v * v
        U = uniform(s)
        if U < 1.0 - 0.0331 * x * x * x * x or \
                math.log(U) < 0.5 * x * x + dd * (1.0 - v + math.log(v)):
            return boost * dd * v


@njit(inline="always")
def chi2(s, spare, df):
    """A chi-square variate with ``df`` (>= 0, any real) degrees of freedom."""
    return 2.0 * gamma(s, spare, 0.5 * df)


@njit(inline="always")
def hermite_series(coef, t):
    """``sum_p coef_p He_p(t)`` (probabilists' Hermite, ``He_{p+1} = t He_p - p He_{p-1}``).

    ``coef`` must already hold ``a_p / sqrt(p!)`` (``sgd.he_coefficients``): the normalized
    series ``sum a_p h_p`` then costs no square root per evaluation.
    """
    acc = coef[0]
    if coef.size == 1:
        return acc
    h_prev = 1.0
    h = t
    acc += coef[1] * h
    for p in range(1, coef.size - 1):
        h_next = t * h - p * h_prev
        h_prev = h
        h = h_next
        acc += coef[p + 1] * h
    return acc


@njit(inline="always")
def _population_grad_norm(u, r, A, Ainv, c, a, du):
    """Spherical gradient norm of the population correlation at ``(u, r)``: the flow's
    ``du^T A^-1 du + ((u.a) r)^2``, from the flow's own pieces (``dynamics``)."""
    k = u.size
    _ascent(u, c, a)
    ua = 0.0
    for j in range(k):
        ua += u[j] * a[j]
    for i in range(k):
        acc = 0.0
        for j in range(k):
            acc += A[i, j] * a[j]
        du[i] = acc - ua * u[i]
    return math.sqrt(_ainv_quadratic(Ainv, du) + (ua * r) ** 2)


@njit(inline="always")
def put(dst, src):
    """``dst[...] = src`` for C-contiguous arrays of one shape, as a loop: the slice
    assignment would compile numba's shape-mismatch message (seconds per kernel)."""
    d = dst.reshape(src.size)
    s = src.reshape(src.size)
    for i in range(src.size):
        d[i] = s[i]


@njit(inline="always")
def _record(u_t, b, col, u):
    for j in range(u.size):
        u_t[b, col, j] = u[j]


@njit
def _reduced_chain(b, U, R, states, L, A, Ainv, c, dsig, bsig, lr, batch, df, has_perp,
                   threshold, gtol, max_steps, snap_steps, esc, steps_out, status, u_t):
    k = U.shape[1]
    s = states[b]
    spare = np.zeros(2)
    u = U[b].copy()
    r = R[b]
    Au = np.empty(k)  # A^-1 u
    g = np.empty(k)
    z = np.empty(k)
    Gz = np.empty(k)
    a = np.empty(k)
    du = np.empty(k)
    n_snap = snap_steps.size
    col = 0
    steps = 0
    escaped = False
    st = SAMPLE_BUDGET
    norm = 0.0
    for j in range(k):
        norm += u[j] * u[j]
    if math.sqrt(norm) >= threshold:
        esc[b] = 0
        escaped = True
    while True:
        while col < n_snap and snap_steps[col] == steps:
            _record(u_t, b, col, u)
            col += 1
        # Converged: escaped, beyond the threshold now (a noisy chain may come back to the
        # saddle, where the gradient is small too) and the population gradient below gtol.
        if escaped and math.sqrt(norm) >= threshold \
                and _population_grad_norm(u, r, A, Ainv, c, a, du) < gtol:
            st = CONVERGED
            break
        if steps >= max_steps:
            break
        for i in range(k):
            acc = 0.0
            for j in range(k):
                acc += Ainv[i, j] * u[j]
            Au[i] = acc
            Gz[i] = 0.0
        Ge = 0.0
        f2 = 0.0
        for _ in range(batch):
            for i in range(k):
                g[i] = normal(s, spare)
            wx = 0.0
            y = 0.0
            for i in range(k):  # z = L g ~ N(0, A)
                acc = 0.0
                for j in range(i + 1):
                    acc += L[i, j] * g[j]
                z[i] = acc
                wx += Au[i] * acc
                y += hermite_series(bsig, acc)
            xi = normal(s, spare) if has_perp else 0.0
            wx += r * xi
            f = hermite_series(dsig, wx) * y
            for i in range(k):
                Gz[i] += f * z[i]
            Ge += f * xi
            f2 += f * f
        inv_b = 1.0 / batch
        cw = 0.0
        for i in range(k):
            Gz[i] *= inv_b
            cw += Au[i] * Gz[i]
        Ge *= inv_b
        cw += r * Ge
        rem2 = f2 * inv_b * inv_b * chi2(s, spare, df) if df > 0.0 else 0.0
        for i in range(k):
            u[i] += lr * (Gz[i] - cw * u[i])
        pe = r * (1.0 - lr * cw) + lr * Ge
        r2 = pe * pe + lr * lr * rem2
        q = 0.0
        for i in range(k):
            acc = 0.0
            for j in range(k):
                acc += Ainv[i, j] * u[j]
            q += u[i] * acc
        N = math.sqrt(q + r2)
        steps += 1
        if not math.isfinite(N) or N <= 0.0:
            st = NON_FINITE
            break
        norm = 0.0
        for i in range(k):
            u[i] /= N
            norm += u[i] * u[i]
        r = math.sqrt(r2) / N
        if not escaped and math.sqrt(norm) >= threshold:
            esc[b] = steps
            escaped = True
    if st == CONVERGED:  # at rest within gtol: later snapshots hold the final state
        while col < n_snap:
            _record(u_t, b, col, u)
            col += 1
    put(U[b], u)
    R[b] = r
    steps_out[b] = steps
    status[b] = st


@njit(parallel=True)
def reduced_chains(U, R, states, L, A, Ainv, c, dsig, bsig, lr, batch, df, has_perp,
                   threshold, gtol, max_steps, snap_steps, esc, steps_out, status, u_t):
    """Advance every reduced chain ``(U[b], R[b])`` in place until it stops.

    ``esc`` (-1 where never) receives the step of escape, ``status`` 0 (escaped, beyond the
    threshold and the population gradient below ``gtol``), 1 (``max_steps``: the sample
    budget) or 3.
    ``u_t[b, i]`` holds ``u`` after ``snap_steps[i]`` steps (NaN if the chain stopped
    earlier without converging).
    """
    for b in prange(U.shape[0]):
        # b as int64: the parallel lowering types the loop index as uint64, which would
        # compile the chain a second time.
        _reduced_chain(np.int64(b), U, R, states, L, A, Ainv, c, dsig, bsig, lr, batch, df,
                       has_perp, threshold, gtol, max_steps, snap_steps, esc, steps_out, status,
                       u_t)


@njit
def _full_chain(b, W, states, V, A, Ainv, c, dsig, bsig, lr, batch, threshold, gtol,
                max_steps, snap_steps, esc, steps_out, status, u_t):
    d, k = V.shape
    s = states[b]
    spare = np.zeros(2)
    w = W[b].copy()
    x = np.empty(d)
    G = np.empty(d)
    u = np.empty(k)
    a = np.empty(k)
    du = np.empty(k)
    n_snap = snap_steps.size
    col = 0
    steps = 0
    escaped = False
    st = SAMPLE_BUDGET
    while True:
        norm = 0.0
        for j in range(k):
            acc = 0.0
            for i in range(d):
                acc += V[i, j] * w[i]
            u[j] = acc
            norm += acc * acc
        if not escaped and math.sqrt(norm) >= threshold:
            esc[b] = steps
            escaped = True
        while col < n_snap and snap_steps[col] == steps:
            _record(u_t, b, col, u)
            col += 1
        if escaped and math.sqrt(norm) >= threshold:
            rr = 0.0
            for i in range(d):
                rr += w[i] * w[i]
            rr = math.sqrt(max(rr - _quad(Ainv, u), 0.0))
            if _population_grad_norm(u, rr, A, Ainv, c, a, du) < gtol:
                st = CONVERGED
                break
        if steps >= max_steps:
            break
        for i in range(d):
            G[i] = 0.0
        for _ in range(batch):
            wx = 0.0
            for i in range(d):
                x[i] = normal(s, spare)
                wx += w[i] * x[i]
            y = 0.0
            for j in range(k):
                acc = 0.0
                for i in range(d):
                    acc += V[i, j] * x[i]
                y += hermite_series(bsig, acc)
            f = hermite_series(dsig, wx) * y / batch
            for i in range(d):
                G[i] += f * x[i]
        cw = 0.0
        for i in range(d):
            cw += w[i] * G[i]
        nn = 0.0
        for i in range(d):
            w[i] += lr * (G[i] - cw * w[i])
            nn += w[i] * w[i]
        N = math.sqrt(nn)
        steps += 1
        if not math.isfinite(N) or N <= 0.0:
            st = NON_FINITE
            break
        for i in range(d):
            w[i] /= N
    if st == CONVERGED:
        while col < n_snap:
            _record(u_t, b, col, u)
            col += 1
    put(W[b], w)
    steps_out[b] = steps
    status[b] = st


@njit(inline="always")
def _quad(Ainv, u):
    q = 0.0
    for i in range(u.size):
        for j in range(u.size):
            q += u[i] * Ainv[i, j] * u[j]
    return q


@njit(parallel=True)
def full_chains(W, states, V, A, Ainv, c, dsig, bsig, lr, batch, threshold, gtol, max_steps,
                snap_steps, esc, steps_out, status, u_t):
    """Explicit SGD in ``R^d`` (Gaussian ``x`` drawn coordinate by coordinate), for validation.

    Same outputs and stopping rules as :func:`reduced_chains`; cost ``O(B d k)`` per step.
    """
    for b in prange(W.shape[0]):
        _full_chain(np.int64(b), W, states, V, A, Ainv, c, dsig, bsig, lr, batch, threshold, gtol,
                    max_steps, snap_steps, esc, steps_out, status, u_t)
