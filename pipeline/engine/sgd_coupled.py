"""Online SGD of n coupled neurons (MSE loss) as an exact chain in ``n k + n^2`` numbers.

Per-sample loss ``(f(x) - y)^2`` with ``f = sum_l sigma(w_l.x)``; each neuron takes the
spherical step of ``engine/sgd_kernels.py`` with its own factor::

    G_l = (1/B) sum_s F_ls x_s,     F_ls = -2 (f(x_s) - y_s) sigma'(w_l.x_s)
    w_l <- (w_l + lr (G_l - (w_l.G_l) w_l)) / ||.||

whose expectation is the MSE flow's field (``mse.py``; the self term ``g_ss(|w_l|^2)`` is
radial and drops out of the tangent step, as in the flow).

**The exact reduction** (docs/design.md §1.4). Write ``w_l = V A^-1 u_l + E Z_l`` with ``E`` an
orthonormal basis (``m <= n`` columns) of the span of the perpendicular parts. A fresh sample
gives ``z = V^T x ~ N(0, A)``, ``xi = E^T x ~ N(0, I_m)`` and an isotropic remainder in the
other ``D = d - k - m`` directions; the ``F_ls`` need only ``(z_s, xi_s)``. The batch's ``B``
remainders are ``B`` isotropic Gaussian vectors in ``R^D``: in the basis that Gram-Schmidt
makes of them their coordinates are the rows of a Bartlett factor ``L`` (``L_ss^2 ~
chi2(D - s + 1)``, ``L_sj ~ N(0, 1)`` below the diagonal), so
``G_rem,l = (1/B) sum_s F_ls L_s``. The new perpendicular part of neuron ``l`` has coordinates
``(Z_l (1 - lr c_l) + lr Gxi_l, lr G_rem,l)`` in ``m + min(B, D)`` dimensions; a QR
factorization maps the ``n`` rows back to ``min(n, m + min(B, D))`` coordinates. The next
sample is fresh and isotropic, so the chain closes: ``B (k + m)`` Gaussians, ``B(B-1)/2``
Gaussians and ``min(B, D)`` chi-squares per step, whatever ``d``.

Draw order of a chain: per sample the ``k`` Gaussians of ``z`` then the ``m`` of ``xi``; per step
the Bartlett factor row by row. The full-d kernel draws ``x`` coordinate by coordinate.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import jit as njit
from .sgd_kernels import chi2, hermite_series, normal, put
from .status import NON_FINITE, SAMPLE_BUDGET


@njit(inline="always")
def _factors(wx, y, ssig, dsig, mse, F, s):
    """Write ``F[l, s]`` for every neuron from the pre-activations ``wx``."""
    n = wx.size
    if mse:
        fx = 0.0
        for l in range(n):
            fx += hermite_series(ssig, wx[l])
        err = -2.0 * (fx - y)
        for l in range(n):
            F[l, s] = err * hermite_series(dsig, wx[l])
    else:
        for l in range(n):
            F[l, s] = hermite_series(dsig, wx[l]) * y


@njit
def _coupled_chain(b, U, Z, M0, states, L, Ainv, ssig, dsig, bsig, lr, batch, dk, mse,
                   threshold, max_steps, snap_steps, esc, steps_out, status, u_t, m_out):
    n, k = U.shape[1], U.shape[2]
    s = states[b]
    spare = np.zeros(2)
    u = U[b].copy()                      # (n, k)
    Zc = np.zeros((n, n))                # perp coordinates, first m columns used
    m = M0
    for l in range(n):
        for j in range(m):
            Zc[l, j] = Z[b, l, j]
    Au = np.empty((n, k))
    g = np.empty(k)
    zs = np.empty((batch, k))
    xs = np.empty((batch, n))
    wx = np.empty(n)
    F = np.empty((n, batch))
    Gz = np.empty((n, k))
    Gx = np.empty((n, n))
    Lr = np.zeros((batch, batch))
    P = np.zeros((n, n + batch))
    escaped = np.zeros(n, dtype=np.bool_)
    n_snap = snap_steps.size
    col = 0
    steps = 0
    st = SAMPLE_BUDGET
    for l in range(n):
        norm = 0.0
        for j in range(k):
            norm += u[l, j] * u[l, j]
        if math.sqrt(norm) >= threshold:
            esc[b, l] = 0
            escaped[l] = True
    while True:
        while col < n_snap and snap_steps[col] == steps:
            for l in range(n):
                for j in range(k):
                    u_t[b, l, col, j] = u[l, j]
            col += 1
        if steps >= max_steps:
            break
        for l in range(n):
            for i in range(k):
                acc = 0.0
                for j in range(k):
                    acc += Ainv[i, j] * u[l, j]
                Au[l, i] = acc
        for smp in range(batch):
            for i in range(k):
                g[i] = normal(s, spare)
            y = 0.0
            for i in range(k):  # z = L g ~ N(0, A)
                acc = 0.0
                for j in range(i + 1):
                    acc += L[i, j] * g[j]
                zs[smp, i] = acc
                y += hermite_series(bsig, acc)
            for j in range(m):
                xs[smp, j] = normal(s, spare)
            for l in range(n):
                acc = 0.0
                for i in range(k):
                    acc += Au[l, i] * zs[smp, i]
                for j in range(m):
                    acc += Zc[l, j] * xs[smp, j]
                wx[l] = acc
            _factors(wx, y, ssig, dsig, mse, F, smp)
        # Bartlett factor of the batch's remainders in the D = d - k - m other directions.
        D = dk - m
        bp = min(batch, int(D)) if D < batch else batch
        for r in range(batch):
            for j in range(min(r, bp)):
                Lr[r, j] = normal(s, spare)
            if r < bp:
                Lr[r, r] = math.sqrt(chi2(s, spare, D - r))
        inv_b = 1.0 / batch
        for l in range(n):
            for i in range(k):
                acc = 0.0
                for smp in range(batch):
                    acc += F[l, smp] * zs[smp, i]
                Gz[l, i] = acc * inv_b
            for j in range(m):
                acc = 0.0
                for smp in range(batch):
                    acc += F[l, smp] * xs[smp, j]
                Gx[l, j] = acc * inv_b
            cw = 0.0
            for i in range(k):
                cw += Au[l, i] * Gz[l, i]
            for j in range(m):
                cw += Zc[l, j] * Gx[l, j]
            for i in range(k):
                u[l, i] += lr * (Gz[l, i] - cw * u[l, i])
            for j in range(m):
                P[l, j] = Zc[l, j] * (1.0 - lr * cw) + lr * Gx[l, j]
            for j in range(bp):
                acc = 0.0
                for smp in range(j, batch):  # Lr is lower triangular
                    acc += F[l, smp] * Lr[smp, j]
                P[l, m + j] = lr * acc * inv_b
            q = 0.0
            for i in range(k):
                row = 0.0
                for j in range(k):
                    row += Ainv[i, j] * u[l, j]
                q += u[l, i] * row
            for j in range(m + bp):
                q += P[l, j] * P[l, j]
            N = math.sqrt(q)
            if not math.isfinite(N) or N <= 0.0:
                st = NON_FINITE
            for i in range(k):
                u[l, i] /= N
            for j in range(m + bp):
                P[l, j] /= N
        steps += 1
        if st == NON_FINITE:
            break
        width = m + bp
        if width <= n:
            m = width
            for l in range(n):
                for j in range(m):
                    Zc[l, j] = P[l, j]
        else:
            # The n rows span at most n directions: their coordinates in an orthonormal
            # basis of that span are R^T from P^T = Q R.
            _, R = np.linalg.qr(np.ascontiguousarray(P[:, :width].T))
            m = n
            for l in range(n):
                for j in range(n):
                    Zc[l, j] = R[j, l]
        for l in range(n):
            if not escaped[l]:
                norm = 0.0
                for j in range(k):
                    norm += u[l, j] * u[l, j]
                if math.sqrt(norm) >= threshold:
                    esc[b, l] = steps
                    escaped[l] = True
    put(U[b], u)
    for l in range(n):
        for j in range(n):
            Z[b, l, j] = Zc[l, j] if j < m else 0.0
    m_out[b] = m
    steps_out[b] = steps
    status[b] = st


@njit(parallel=True)
def coupled_chains(U, Z, M0, states, L, Ainv, ssig, dsig, bsig, lr, batch, dk, mse, threshold,
                   max_steps, snap_steps, esc, steps_out, status, u_t, m_out):
    """Advance every coupled chain (one per seed: ``U[b]`` n x k, ``Z[b]`` n x n perp
    coordinates of which the first ``M0`` columns are used) in place until the budget.

    ``mse`` selects the MSE factors (else the correlation ones with shared samples);
    ``dk = d - k``. ``esc[b, l]`` is neuron ``l``'s escape step (-1: never).
    """
    for b in prange(U.shape[0]):
        _coupled_chain(np.int64(b), U, Z, M0, states, L, Ainv, ssig, dsig, bsig, lr, batch, dk, mse,
                       threshold, max_steps, snap_steps, esc, steps_out, status, u_t, m_out)


@njit
def _coupled_full(b, W, states, V, ssig, dsig, bsig, lr, batch, mse, threshold, max_steps,
                  snap_steps, esc, steps_out, status, u_t):
    n, d = W.shape[1], W.shape[2]
    k = V.shape[1]
    s = states[b]
    spare = np.zeros(2)
    w = W[b].copy()
    x = np.empty((batch, d))
    G = np.empty((n, d))
    F = np.empty((n, batch))
    wx = np.empty(n)
    u = np.empty((n, k))
    escaped = np.zeros(n, dtype=np.bool_)
    n_snap = snap_steps.size
    col = 0
    steps = 0
    st = SAMPLE_BUDGET
    while True:
        for l in range(n):
            norm = 0.0
            for j in range(k):
                acc = 0.0
                for i in range(d):
                    acc += V[i, j] * w[l, i]
                u[l, j] = acc
                norm += acc * acc
            if not escaped[l] and math.sqrt(norm) >= threshold:
                esc[b, l] = steps
                escaped[l] = True
        while col < n_snap and snap_steps[col] == steps:
            for l in range(n):
                for j in range(k):
                    u_t[b, l, col, j] = u[l, j]
            col += 1
        if steps >= max_steps:
            break
        for smp in range(batch):
            for i in range(d):
                x[smp, i] = normal(s, spare)
            y = 0.0
            for j in range(k):
                acc = 0.0
                for i in range(d):
                    acc += V[i, j] * x[smp, i]
                y += hermite_series(bsig, acc)
            for l in range(n):
                acc = 0.0
                for i in range(d):
                    acc += w[l, i] * x[smp, i]
                wx[l] = acc
            _factors(wx, y, ssig, dsig, mse, F, smp)
        for l in range(n):
            for i in range(d):
                acc = 0.0
                for smp in range(batch):
                    acc += F[l, smp] * x[smp, i]
                G[l, i] = acc / batch
            cw = 0.0
            for i in range(d):
                cw += w[l, i] * G[l, i]
            nn = 0.0
            for i in range(d):
                w[l, i] += lr * (G[l, i] - cw * w[l, i])
                nn += w[l, i] * w[l, i]
            N = math.sqrt(nn)
            if not math.isfinite(N) or N <= 0.0:
                st = NON_FINITE
            for i in range(d):
                w[l, i] /= N
        steps += 1
        if st == NON_FINITE:
            break
    put(W[b], w)
    steps_out[b] = steps
    status[b] = st


@njit(parallel=True)
def coupled_full_chains(W, states, V, ssig, dsig, bsig, lr, batch, mse, threshold, max_steps,
                        snap_steps, esc, steps_out, status, u_t):
    """Explicit SGD of the n coupled neurons ``W[b]`` (n x d) in ``R^d``, for validation."""
    for b in prange(W.shape[0]):
        _coupled_full(np.int64(b), W, states, V, ssig, dsig, bsig, lr, batch, mse, threshold,
                      max_steps, snap_steps, esc, steps_out, status, u_t)
