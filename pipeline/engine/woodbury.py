"""Structured solves with the Rosenbrock matrix ``alpha I - J`` of the reduced MSE field.

The field depends on the state only through ``q`` = the Gram entries ``Q_il`` (i < l) and the
overlaps ``M_ij`` (``r = n(n-1)/2 + nk`` numbers, 65 at n = 10, k = 2) besides the linear
term ``-2 C xi``, so its Jacobian (``stiff.reduced_jacobian``) is
``J = -2 C (x) I_K + U V^T`` with ``V = dq/dxi`` (sparse: two blocks per Gram entry, one entry
per overlap) and ``U = df/dq`` (two blocks per column). With ``P = alpha I_n + 2 C``::

    (alpha I - J)^-1 b = z + Y S^-1 V^T z,   z = (P^-1 (x) I) b,  Y = (P^-1 (x) I) U,
                                             S = I_r - V^T Y

(Woodbury): an LU of ``S`` (r unknowns) instead of the dense LU of N = n K = 120.
:func:`prepare` builds ``C``, ``U``, ``V`` once per state (they also give the matrix-free
product :func:`jvp` of the stage's spectral-radius test), :func:`factor` the rest per step
size. :func:`factor` declines (returns False) where ``P`` or ``S`` is near-singular, e.g. a surplus
neuron orthogonal to everything at rest (its row of ``C`` ~ 0) with ``alpha`` ~ 1 / h tiny:
the caller then factors the dense matrix.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import mse
from ._jit import jit as njit
from .linalg import DOT_MATH, _lu, _lu_solve

#: What :func:`allocate` returns: per state (:func:`prepare`) ``C`` and the columns of ``U`` and
#: ``V`` (each in one or two blocks: ``ublk``/``vblk`` name the neurons, -1 none); per step
#: size (:func:`factor`) ``P = alpha I + 2 C``, its LU (``ppiv``) and inverse, ``Y`` and the
#: capacitance matrix ``S`` with its LU (``spiv``); scratch of :func:`solve` (``z``, ``t``).
Factors = namedtuple("Factors", ["P", "ppiv", "Pinv", "ublk", "U", "vblk", "V", "Y", "S",
                                 "spiv", "z", "t", "C"])

#: Smallest pivot of ``P`` or ``S``, relative to its largest entry, that :func:`factor`
#: accepts (Woodbury multiplies the errors of the two factorizations).
PIVOT_FLOOR = 1e-8


@njit(inline="always")
def _vdot(V, vblk, a, X, c):
    """Column ``a`` of ``V`` (its one or two blocks) dotted with ``X[c]`` (n x K; indices,
    not a slice: a view per call cost more than the dot product)."""
    acc = 0.0
    for b in range(2):
        m = vblk[a, b]
        if m >= 0:
            for x in range(X.shape[2]):
                acc += V[a, b, x] * X[c, m, x]
    return acc


@njit
def n_columns(n, k):
    return n * (n - 1) // 2 + n * k


@njit
def lu_checked(A, piv):
    """LU of ``A`` in place (``linalg._lu``); False if a pivot is below ``PIVOT_FLOOR``
    times the largest entry of ``A``."""
    big = 0.0
    for i in range(A.shape[0]):
        for j in range(A.shape[0]):
            big = max(big, abs(A[i, j]))
    if big == 0.0 or not _lu(A, piv):
        return False
    for i in range(A.shape[0]):
        if abs(A[i, i]) < PIVOT_FLOOR * big:
            return False
    return True


@njit
def allocate(n, k, K):
    """Scratch of :func:`prepare` / :func:`factor` / :func:`solve` for n neurons of K
    numbers."""
    r = n_columns(n, k)
    return Factors(np.empty((n, n)), np.empty(n, dtype=np.int64), np.empty((n, n)),
                   np.empty((r, 2), dtype=np.int64), np.empty((r, 2, K)),
                   np.empty((r, 2), dtype=np.int64), np.empty((r, 2, K)),
                   np.empty((n, K, r)), np.empty((r, r)), np.empty(r, dtype=np.int64),
                   np.empty((1, n, K)), np.empty(r), np.empty((n, n)))


@njit
def prepare(y, args, work, fac):
    """The Jacobian at ``y`` in its structured form: ``C``, ``U`` and ``V`` into ``fac``
    (:func:`allocate`), for :func:`factor` at any ``alpha`` and for :func:`jvp`. ``work``
    must hold the plain field's ``G``, ``a``, ``Q``, ``C`` of ``y``."""
    ublk, U, vblk, V, Cm = fac.ublk, fac.U, fac.vblk, fac.V, fac.C
    A = args[0]
    extra = args[3]
    k = A.shape[0]
    n = mse.mse_n_neurons(args)
    K = mse._width(mse.MSE_REDUCED, args)
    G, a, Q, C = mse._reduced_views(args, work)
    dss = extra[mse._ROW_DSS]
    dst = extra[mse._ROW_DST]
    Lss = int(extra[mse._ROW_META, mse._META_LDSS])
    Lst = int(extra[mse._ROW_META, mse._META_LDST])
    for i in range(n):
        for l in range(n):
            Cm[i, l] = C[i * n + l]
    c = 0
    # Gram entries Q_il, i < l: U = (u_il in block i, u_li in block l), V = (G_l, G_i).
    for i in range(n):
        for l in range(i + 1, n):
            q = Q[i * n + l]
            bp = mse._dpoly(dss, Lss, q)
            e = bp * q + C[i * n + l]
            ublk[c, 0], ublk[c, 1] = i, l
            vblk[c, 0], vblk[c, 1] = i, l
            for x in range(K):
                yi, yl = y[i * K + x], y[l * K + x]
                U[c, 0, x] = 2.0 * (e * yi - bp * yl)
                U[c, 1, x] = 2.0 * (e * yl - bp * yi)
                V[c, 0, x] = G[l * K + x]
                V[c, 1, x] = G[i * K + x]
            c += 1
    # Overlaps M_ij: U in block i, V the unit vector of M_ij.
    for i in range(n):
        for jp in range(k):
            mij = y[i * K + jp]
            ap = mse._dpoly(dst, Lst, mij)
            ds = a[i * k + jp] + mij * ap
            ublk[c, 0], ublk[c, 1] = i, -1
            vblk[c, 0], vblk[c, 1] = i, -1
            for x in range(K):
                U[c, 0, x] = -2.0 * y[i * K + x] * ds
                U[c, 1, x] = 0.0
                V[c, 0, x] = 0.0
                V[c, 1, x] = 0.0
            for j in range(k):
                U[c, 0, j] += 2.0 * A[jp, j] * ap
            V[c, 0, jp] = 1.0
            c += 1


@njit
def entry(fac, g, e, K):
    """The Jacobian's entry ``J[g, e]`` from :func:`prepare`'s ``fac`` (rows of ``K``
    numbers)."""
    ublk, U, vblk, V, Cm = fac.ublk, fac.U, fac.vblk, fac.V, fac.C
    i, x = g // K, g % K
    l, z = e // K, e % K
    acc = -2.0 * Cm[i, l] if x == z else 0.0
    for c in range(U.shape[0]):
        for b in range(2):
            if ublk[c, b] == i:
                for b2 in range(2):
                    if vblk[c, b2] == l:
                        acc += U[c, b, x] * V[c, b2, z]
    return acc


@njit
def jvp(fac, v, out, n, K):
    """``out <- J v`` from :func:`prepare`'s ``fac`` (``-2 (C (x) I) v + U V^T v``)."""
    ublk, U, vblk, V, Cm = fac.ublk, fac.U, fac.vblk, fac.V, fac.C
    for i in range(n):
        for x in range(K):
            acc = 0.0
            for m in range(n):
                acc += Cm[i, m] * v[m * K + x]
            out[i * K + x] = -2.0 * acc
    blocks = v.reshape((1, n, K))
    for c in range(U.shape[0]):
        t = _vdot(V, vblk, c, blocks, 0)
        for b in range(2):
            m = ublk[c, b]
            if m >= 0:
                for x in range(K):
                    out[m * K + x] += t * U[c, b, x]


@njit(fastmath={"contract"})
def factor(alpha, fac, n, K):
    """Prepare ``alpha I - J`` from :func:`prepare`'s ``fac``: ``P^-1``, ``Y`` and the
    capacitance matrix ``S``, left for the caller to factor (into ``fac.S``, ``fac.spiv``,
    :func:`lu_checked`). False where ``P`` is near-singular (use the dense LU)."""
    P, ppiv, Pinv, Y, S, Cm = fac.P, fac.ppiv, fac.Pinv, fac.Y, fac.S, fac.C
    ublk, U, vblk, V = fac.ublk, fac.U, fac.vblk, fac.V
    for i in range(n):
        for l in range(n):
            P[i, l] = 2.0 * Cm[i, l]
        P[i, i] += alpha
    if not lu_checked(P, ppiv):
        return False
    e = fac.t[:n]  # the solve's scratch (r >= n entries), free while factoring
    for j in range(n):
        e[:] = 0.0
        e[j] = 1.0
        _lu_solve(P, ppiv, e)
        for i in range(n):
            Pinv[i, j] = e[i]
    r = U.shape[0]
    # Y is stored as (n, K, r) and S built a row at a time by axpys over r: the innermost
    # loops then run over r contiguous numbers, not over K (~12, short: 3.5x slower).
    for m in range(n):
        for x in range(K):
            for c in range(r):
                Y[m, x, c] = Pinv[m, ublk[c, 0]] * U[c, 0, x]
            for c in range(r):
                u1 = ublk[c, 1]
                if u1 >= 0:
                    Y[m, x, c] += Pinv[m, u1] * U[c, 1, x]
    for a_ in range(r):
        m0, m1 = vblk[a_, 0], vblk[a_, 1]
        for c in range(r):
            S[a_, c] = 0.0
        for x in range(K):
            v0 = V[a_, 0, x]
            if m1 < 0:
                if v0 != 0.0:  # an overlap's column: one unit entry
                    for c in range(r):
                        S[a_, c] -= v0 * Y[m0, x, c]
            else:
                v1 = V[a_, 1, x]
                for c in range(r):
                    S[a_, c] -= v0 * Y[m0, x, c] + v1 * Y[m1, x, c]
        S[a_, a_] += 1.0
    return True


@njit(fastmath=DOT_MATH)
def solve(fac, b, n, K):
    """``b <- (alpha I - J)^-1 b`` from :func:`factor`'s ``fac``."""
    Pinv, vblk, V, Y, S, spiv, z, t = (fac.Pinv, fac.vblk, fac.V, fac.Y, fac.S, fac.spiv,
                                       fac.z, fac.t)
    r = S.shape[0]
    for m in range(n):
        for x in range(K):
            acc = 0.0
            for j in range(n):
                acc += Pinv[m, j] * b[j * K + x]
            z[0, m, x] = acc
    for a_ in range(r):
        t[a_] = _vdot(V, vblk, a_, z, 0)
    _lu_solve(S, spiv, t)
    for m in range(n):
        for x in range(K):
            Ymx = Y[m, x]
            acc = 0.0
            for c in range(r):
                acc += t[c] * Ymx[c]
            b[m * K + x] = z[0, m, x] + acc
