"""The MSE loss: n interacting neurons in exact overlap coordinates (docs/design.md §1.2).

Population loss of the student ``f = sum_i sigma(w_i.x)`` against ``f* = sum_j sigma*(v_j.x)``::

    L = E[(f - f*)^2] = sum_{i,l} g_ss(Q_il) - 2 sum_{i,j} g_st(M_ij) + sum_{j,j'} g_tt(A_jj')

with ``Q = W^T W`` (n x n), ``M = W^T V`` (n x k), ``A = V^T V`` and the dual activations
``g_ss = sum_p a_p^2 rho^p``, ``g_st = sum_p a_p b_p rho^p``, ``g_tt = sum_p b_p^2 rho^p``
(p = 0 terms included, so ``L`` is the mean squared error itself, >= 0). The spherical
gradient flow ``dw_i/dt = -(I - w_i w_i^T) grad_i L`` is, with ``a_ij = g_st'(M_ij)`` and
``B_il = g_ss'(Q_il)`` for ``l != i`` (``B_ii = 0``: the self term ``g_ss(|w_i|^2)`` is
radial and projected away)::

    dw_i/dt = 2 (V a_i - sum_l C_il w_l),      C = B + diag(s),
    s_i     = M_i . a_i - sum_{l != i} B_il Q_il          (keeps w_i on the sphere)

so that ``dM/dt = 2 (a A - C M)`` and ``dQ/dt = X + X^T`` with ``X = 2 (M a^T - Q C)``:
the flow closes on ``(Q, M)`` and never needs d (:func:`qm_velocity`).

**Coordinates.** ``MSE_REDUCED`` integrates the overlaps ``M`` together with exact
square-root coordinates of the rest of ``Q``. Split ``w_i = V A^-1 M_i + w_i_perp``. The perp
parts evolve by ``dW_perp/dt = -2 W_perp C``, so they stay in the fixed subspace spanned by
``W_perp(0)``, of dimension ``m = min(n, d - k)``; with an orthonormal basis ``U`` of it,
``w_i_perp = U z_i``, ``z_i`` in R^m. The state is one row per neuron,
``xi_i = (M_i, z_i)`` (n rows of ``K = k + m`` numbers, at most ``n^2 + n k`` in all)::

    Q_il    = M_i A^-1 M_l^T + z_i . z_l
    dM_i/dt = 2 (A a_i - sum_l C_il M_l)
    dz_i/dt = -2 sum_l C_il z_l

It is the ``(Q, M)`` flow (``tests/test_mse.py`` checks it against :func:`qm_velocity`) with
two numerical advantages over integrating ``Q``: ``Q`` is always the Gram matrix of an actual
configuration (positive semidefinite with rank <= d, also in the rank-deficient case
``d - k < n``), and the spherical gradient norm needs no cancellation. That is the analogue of
the correlation model's ``r``: with ``G_i = dw_i/dt``::

    ||G||^2 = sum_i dM_i^T A^-1 dM_i + ||dz_i||^2

(the span-V and perp parts of ``G_i``), squares of computed velocities, accurate to the
integrator's own accuracy, whereas ``4 c_i^T (Q - M A^-1 M^T) c_i`` from an integrated ``Q``
cancels O(1) terms (``c_i`` is O(1) at rest, e.g. for an antipodal pair) and, where the perp
Gram is singular, leaves the realizable set altogether: an error ~ sqrt(rtol) or
sqrt(machine epsilon), at the level of ``gtol ~ 1e-6`` and far above a tight one. The initial
``z_i`` are the normalized columns of the Bartlett factor of the Wishart Gram of the perp parts
(:func:`pipeline.engine.initial.sample_orthogonal_factor`).

``MSE_FULL`` integrates explicit ``W`` (n x d, row-major) against an explicit frame ``V`` in
plain loops; it exists to validate ``MSE_REDUCED``. The reduced kernel's small loops are
blocked (four independent accumulators), which is where its speed comes from at n ~ 10.

Kernel arguments (one tuple type for every model, see ``dynamics.py``):
``(A or V, A^-1 (for the full model (V^T V)^-1), c_st, extra)`` with ``extra`` rows ``c_ss``,
the derivative coefficients ``(q + 1) c_{q+1}`` of ``g_ss`` and of ``g_st``, and
``(n, m, sum_{j,j'} g_tt(A_jj'), len(c_ss), len(g_ss'), len(g_st'))``.
"""

from __future__ import annotations

import math

import numpy as np

from . import ddouble as dd
from ._jit import jit as njit
from .dispatch import by_model

MSE_REDUCED = 2
MSE_FULL = 3

# Rows of args[3] ("extra") and the entries of its size row.
_ROW_CSS, _ROW_DSS, _ROW_DST, _ROW_META = 0, 1, 2, 3
_META_N, _META_M, _META_CONST, _META_LCSS, _META_LDSS, _META_LDST = 0, 1, 2, 3, 4, 5


@njit
def mse_n_neurons(args):
    """Number of neurons n of the coupled system."""
    return int(args[3][_ROW_META, _META_N])


@njit
def _width(model, args):
    """Numbers per neuron in the state: ``K = k + m`` (reduced) or ``d`` (full)."""
    if model == MSE_REDUCED:
        return args[0].shape[1] + int(args[3][_ROW_META, _META_M])
    return args[0].shape[0]


@njit
def _layout(model, args):
    """Offsets in ``work`` of ``a`` (n k), ``Q``, ``C`` (n^2 each), the velocity (state size)
    and ``dM`` (n k), and the total size. ``work[0:oa]`` holds ``G`` (reduced: rows
    ``(M_i A^-1, z_i)``; full: ``M``)."""
    n = mse_n_neurons(args)
    k = args[0].shape[1]
    D = _width(model, args)
    oa = n * D if model == MSE_REDUCED else n * k
    oQ = oa + n * k
    oC = oQ + n * n
    ov = oC + n * n
    odM = ov + n * D
    return oa, oQ, oC, ov, odM, odM + n * k


@njit
def mse_work_size(model, args):
    """Scratch floats of the MSE models' functions."""
    return _layout(model, args)[5]


@njit
def _poly(c, L, x):
    """``sum_{q < L} c_q x^q`` (Horner)."""
    acc = 0.0
    for q in range(L - 1, -1, -1):
        acc = acc * x + c[q]
    return acc


@njit
def _dpoly(c, L, x):
    """Derivative of ``sum_{q < L} c_q x^q`` at ``x``."""
    acc = 0.0
    for q in range(L - 1, 0, -1):
        acc = acc * x + q * c[q]
    return acc


@njit
def _gram_upper(G, Y, n, D, Q):
    """``Q[i, l] = G_i . Y_l`` for ``l > i`` (rows of length D), four pairs at a time."""
    for i in range(n):
        gi = i * D
        l = i + 1
        while l + 3 < n:
            q0 = 0.0
            q1 = 0.0
            q2 = 0.0
            q3 = 0.0
            y0 = l * D
            for x in range(D):
                g = G[gi + x]
                q0 += g * Y[y0 + x]
                q1 += g * Y[y0 + D + x]
                q2 += g * Y[y0 + 2 * D + x]
                q3 += g * Y[y0 + 3 * D + x]
            Q[i * n + l] = q0
            Q[i * n + l + 1] = q1
            Q[i * n + l + 2] = q2
            Q[i * n + l + 3] = q3
            l += 4
        while l < n:
            q0 = 0.0
            y0 = l * D
            for x in range(D):
                q0 += G[gi + x] * Y[y0 + x]
            Q[i * n + l] = q0
            l += 1


@njit
def _coupling(M, stride, Q, a, C, n, k, extra):
    """Fill ``a = g_st'(M)`` and ``C = B + diag(s)`` from ``M`` (row i at ``i * stride``)
    and the strict upper triangle of ``Q`` (the self term is radial: ``Q_ii`` is unused)."""
    dss = extra[_ROW_DSS]
    dst = extra[_ROW_DST]
    Lss = int(extra[_ROW_META, _META_LDSS])
    Lst = int(extra[_ROW_META, _META_LDST])
    for i in range(n):
        s = 0.0
        for j in range(k):
            mij = M[i * stride + j]
            g = _poly(dst, Lst, mij)
            a[i * k + j] = g
            s += mij * g
        C[i * n + i] = s
    for i in range(n):
        for l in range(i + 1, n):
            q = Q[i * n + l]
            b = _poly(dss, Lss, q)
            C[i * n + l] = b
            C[l * n + i] = b
            C[i * n + i] -= b * q
            C[l * n + l] -= b * q


@njit
def _reduced_views(args, work):
    """The reduced field's ``G``, ``a``, ``Q``, ``C`` slots of ``work``."""
    oa, oQ, oC, _, _, _ = _layout(MSE_REDUCED, args)
    n = mse_n_neurons(args)
    return work[0:oa], work[oa:oQ], work[oQ:oC], work[oC:oC + n * n]


@njit
def _reduced_field(model, y, args, work, dy):
    """``d xi_i/dt`` for the reduced state (rows ``xi_i = (M_i, z_i)``, see module doc)."""
    A, Ainv, _, extra = args
    k = A.shape[0]
    n = mse_n_neurons(args)
    K = _width(MSE_REDUCED, args)
    G, a, Q, C = _reduced_views(args, work)
    # G_i = (M_i A^-1, z_i), so that Q_il = G_i . xi_l.
    for i in range(n):
        r = i * K
        for j in range(k):
            acc = 0.0
            for l in range(k):
                acc += y[r + l] * Ainv[l, j]
            G[r + j] = acc
        for x in range(k, K):
            G[r + x] = y[r + x]
    _gram_upper(G, y, n, K, Q)
    _coupling(y, K, Q, a, C, n, k, extra)
    # d xi_i = -2 sum_l C_il xi_l, four coordinates at a time; then + 2 A a_i on the M part.
    for i in range(n):
        r = i * K
        x = 0
        while x + 3 < K:
            d0 = 0.0
            d1 = 0.0
            d2 = 0.0
            d3 = 0.0
            for l in range(n):
                c = C[i * n + l]
                b = l * K + x
                d0 += c * y[b]
                d1 += c * y[b + 1]
                d2 += c * y[b + 2]
                d3 += c * y[b + 3]
            dy[r + x] = -2.0 * d0
            dy[r + x + 1] = -2.0 * d1
            dy[r + x + 2] = -2.0 * d2
            dy[r + x + 3] = -2.0 * d3
            x += 4
        while x < K:
            d0 = 0.0
            for l in range(n):
                d0 += C[i * n + l] * y[l * K + x]
            dy[r + x] = -2.0 * d0
            x += 1
        for j in range(k):
            acc = 0.0
            for l in range(k):
                acc += a[i * k + l] * A[l, j]
            dy[r + j] += 2.0 * acc


@njit
def reduced_field_accurate(y, args, work, dy):
    """``MSE_REDUCED``'s velocity of ``y`` computed in double-double arithmetic
    (``ddouble.py``) and rounded once: accurate to ~eps relative to the velocity itself,
    where :func:`_reduced_field` is accurate to ~eps relative to the O(1) terms that cancel
    in it. The stiff stage takes its long Rosenbrock steps with it (where the round-off
    floor of atol is capped): at rest those steps reach the elapsed time, and the plain
    field's round-off, carried along the flow's neutral directions, limited them
    (``ddouble.py``). ~8 us at n = 10, k = 2, against ~1 us for the plain field.

    Same formulas and order as :func:`_reduced_field`; ``work``'s ``G``, ``a``, ``Q``, ``C``
    receive the leading parts.
    """
    A, Ainv, _, extra = args
    k = A.shape[0]
    n = mse_n_neurons(args)
    K = _width(MSE_REDUCED, args)
    G, a, Q, C = _reduced_views(args, work)
    dss = extra[_ROW_DSS]
    dst = extra[_ROW_DST]
    Lss = int(extra[_ROW_META, _META_LDSS])
    Lst = int(extra[_ROW_META, _META_LDST])
    # Low parts: G (its M A^-1 columns; the z columns are the state itself), a, Q, C.
    Gl = np.zeros(n * K)
    al = np.empty(n * k)
    Ql = np.empty(n * n)
    Cl = np.empty(n * n)
    for i in range(n):
        r = i * K
        for j in range(k):
            h, lo = 0.0, 0.0
            for l in range(k):
                p, e = dd.two_prod(y[r + l], Ainv[l, j])
                h, lo = dd.add(h, lo, p, e)
            G[r + j] = h
            Gl[r + j] = lo
        for x in range(k, K):
            G[r + x] = y[r + x]
    for i in range(n):
        for l in range(i + 1, n):
            h, lo = 0.0, 0.0
            for x in range(K):
                h, lo = dd.fma_d(h, lo, G[i * K + x], Gl[i * K + x], y[l * K + x])
            Q[i * n + l] = h
            Ql[i * n + l] = lo
    for i in range(n):
        sh, sl = 0.0, 0.0
        for j in range(k):
            mij = y[i * K + j]
            gh, gl = dd.poly(dst, Lst, mij, 0.0)
            a[i * k + j] = gh
            al[i * k + j] = gl
            sh, sl = dd.fma_d(sh, sl, gh, gl, mij)
        C[i * n + i] = sh
        Cl[i * n + i] = sl
    for i in range(n):
        for l in range(i + 1, n):
            qh, ql = Q[i * n + l], Ql[i * n + l]
            bh, bl = dd.poly(dss, Lss, qh, ql)
            C[i * n + l] = bh
            Cl[i * n + l] = bl
            C[l * n + i] = bh
            Cl[l * n + i] = bl
            ph, pl = dd.mul(bh, bl, qh, ql)
            C[i * n + i], Cl[i * n + i] = dd.add(C[i * n + i], Cl[i * n + i], -ph, -pl)
            C[l * n + l], Cl[l * n + l] = dd.add(C[l * n + l], Cl[l * n + l], -ph, -pl)
    # C xi a row of C at a time, all K coordinates of a row together: their sums are
    # independent, so the loop over x vectorizes, and each entry's sum runs in the same order
    # (l = 0, 1, ...) as one entry at a time: the same result to the bit, the whole field
    # 12 -> 8 us at n = 10, k = 2.
    acc_h = np.empty(K)
    acc_l = np.empty(K)
    for i in range(n):
        r = i * K
        acc_h[:] = 0.0
        acc_l[:] = 0.0
        for l in range(n):
            ch, cl = C[i * n + l], Cl[i * n + l]
            o = l * K
            for x in range(K):
                acc_h[x], acc_l[x] = dd.fma_d(acc_h[x], acc_l[x], ch, cl, y[o + x])
        for x in range(K):
            h, lo = -2.0 * acc_h[x], -2.0 * acc_l[x]
            if x < k:
                for l in range(k):
                    h, lo = dd.fma_d(h, lo, 2.0 * a[i * k + l], 2.0 * al[i * k + l], A[l, x])
            dy[r + x] = h + lo


@njit
def _full_overlaps(y, V, n, M):
    """``M = W V`` for explicit rows ``w_i`` of length d."""
    d, k = V.shape
    for i in range(n):
        for j in range(k):
            acc = 0.0
            for x in range(d):
                acc += y[i * d + x] * V[x, j]
            M[i * k + j] = acc


@njit
def _full_field(model, y, args, work, dy):
    """``dw_i/dt = 2 (V a_i - sum_l C_il w_l)`` for explicit ``W`` (n x d, row-major)."""
    V, _, _, extra = args
    d, k = V.shape
    n = mse_n_neurons(args)
    oa, oQ, oC, _, _, _ = _layout(MSE_FULL, args)
    M = work[0:oa]
    a = work[oa:oQ]
    Q = work[oQ:oC]
    C = work[oC:oC + n * n]
    _full_overlaps(y, V, n, M)
    for i in range(n):
        for l in range(i + 1, n):
            acc = 0.0
            for x in range(d):
                acc += y[i * d + x] * y[l * d + x]
            Q[i * n + l] = acc
    _coupling(M, k, Q, a, C, n, k, extra)
    for i in range(n):
        r = i * d
        for x in range(d):
            acc = 0.0
            for j in range(k):
                acc += V[x, j] * a[i * k + j]
            dy[r + x] = 2.0 * acc
        for l in range(n):
            c = 2.0 * C[i * n + l]
            for x in range(d):
                dy[r + x] -= c * y[l * d + x]


@by_model({MSE_REDUCED: _reduced_field, MSE_FULL: _full_field})
def mse_vector_field(model, y, args, work, dy):
    """Write the MSE gradient-flow velocity of state ``y`` into ``dy``."""


@njit
def _inner(model, args, x, i, y, l):
    """``w_i . w_l``-type inner product of neuron ``i`` of ``x`` and neuron ``l`` of ``y``.

    In the reduced coordinates a neuron is ``(M_i, z_i)`` and the inner product is
    ``M_i^T A^-1 M_l + z_i . z_l``; in the full model it is the plain dot product in R^d.
    """
    D = _width(model, args)
    acc = 0.0
    start = 0
    if model == MSE_REDUCED:
        Ainv = args[1]
        k = Ainv.shape[0]
        for j in range(k):
            row = 0.0
            for jj in range(k):
                row += Ainv[j, jj] * y[l * D + jj]
            acc += x[i * D + j] * row
        start = k
    for m in range(start, D):
        acc += x[i * D + m] * y[l * D + m]
    return acc


@njit
def _neuron_speed2(model, args, dy, i):
    """``||dw_i/dt||^2`` from the velocity ``dy``: a sum of squares, no cancellation."""
    # A^-1 is positive definite: a negative value is round-off only.
    return max(_inner(model, args, dy, i, dy, i), 0.0)


@njit
def mse_speed(model, y, dy, args):
    """Norm of the spherical gradient of all n neurons, ``sqrt(sum_i ||G_i||^2)``, from the
    velocity ``dy`` of ``y`` (so an integrator that has it spends no field evaluation)."""
    acc = 0.0
    for i in range(mse_n_neurons(args)):
        acc += _neuron_speed2(model, args, dy, i)
    return math.sqrt(acc)


@njit
def _velocity(model, y, args, work):
    """The velocity of ``y``, written into its slot of ``work`` (the rest is left as the
    field leaves it: ``G``, ``a``, ``Q``, ``C`` of ``y``)."""
    _, _, _, ov, odM, _ = _layout(model, args)
    dy = work[ov:odM]
    mse_vector_field(model, y, args, work, dy)
    return dy


@njit
def mse_grad_norm(model, y, args, work):
    """Norm of the spherical gradient of all n neurons together at ``y``."""
    return mse_speed(model, y, _velocity(model, y, args, work), args)


@njit
def overlap_entry(model, y, args, work, i, j):
    """``M_ij`` where the field at ``y`` left it: in the reduced state's row ``i``; the full
    model's field keeps ``M`` (n x k, row-major) at the start of ``work``."""
    if model == MSE_REDUCED:
        return y[i * _width(model, args) + j]
    return work[i * args[0].shape[1] + j]


@njit
def _learned_directions(model, y, args, work, threshold):
    """How many index vectors ``v_j`` have a neuron on them: ``|c_ij| >= threshold`` for some
    ``i``, with ``c_i = A^-1 M_i`` the coordinates of ``w_i``'s part in span(V) (for
    correlated index vectors, ``M_ij`` itself is ~beta for a neuron on another ``v``).
    ``work`` holds the field's data at ``y`` (:func:`overlap_entry`)."""
    n = mse_n_neurons(args)
    k = args[0].shape[1]
    Ainv = args[1]
    count = 0
    for j in range(k):
        for i in range(n):
            c = 0.0
            for l in range(k):
                c += overlap_entry(model, y, args, work, i, l) * Ainv[l, j]
            if abs(c) >= threshold:
                count += 1
                break
    return count


@njit
def mse_settled(model, y, args, work, threshold):
    """Whether no neuron of ``y`` is still leaving the initial saddle, and no index vector is
    left for one to pick up.

    A neuron is settled when it has escaped (``||M_i|| >= threshold``), or has aligned with
    another neuron (``|Q_il| >= threshold``, e.g. the antipodal pairs that cancel for odd
    activations), or when none of its overlaps grows: ``d/dt ||M_i||^2 <= 0`` and
    ``d/dt sum_{l != i} Q_il^2 <= 0`` (a surplus neuron decaying towards orthogonality). A
    neuron whose small overlaps grow is on its way out of the saddle however small its
    gradient (~ d^-(p*-1)/2), and the integrator must not stop there (``dynamics.settled``).

    And ``min(n, k)`` index vectors must have a neuron on them
    (:func:`_learned_directions`): all of them when ``n >= k``, one per neuron otherwise. A
    state with fewer is a plateau, not a rest: free neurons whose overlaps with an unlearned
    index vector shrink (negative ones for an odd activation), or neurons bound in a group
    that cancels or shares one index vector, pick one up later through their weak couplings,
    on time scales far beyond any continuation window. h3, k = 3, n = 5, 16 seeds,
    d = 1e12: 8 stopped at loss 1, 2 or 4 by the window of the continuation check and left
    126x to 2e5x later (all to loss 0 by t = 1e18); 2 of 16 at d = 1e6, 1 at 1e9. n < k:
    h3, k = 3, n = 2, d = 1e4: 4 of 16 stopped at loss 2.55 with both neurons on one index
    vector and went to loss 1; h3, k = 4, n = 3: 3 (d = 1e4) and 4 (d = 1e12) of 16.
    """
    dy = _velocity(model, y, args, work)
    n = mse_n_neurons(args)
    k = args[0].shape[1]
    D = _width(model, args)
    oa, oQ, oC, _, odM, _ = _layout(model, args)
    G = work[0:oa]
    Q = work[oQ:oC]  # strict upper triangle, left by the field
    if model == MSE_REDUCED:
        M, dM, stride = y, dy, D
    else:
        M, dM, stride = G, work[odM:odM + n * k], k
        _full_overlaps(dy, args[0], n, dM)
    t2 = threshold * threshold
    for i in range(n):
        mm = 0.0
        grow_m = 0.0
        for j in range(k):
            mm += M[i * stride + j] ** 2
            grow_m += M[i * stride + j] * dM[i * stride + j]
        if mm >= t2:
            continue
        aligned = False
        for l in range(n):
            if l != i and abs(Q[min(i, l) * n + max(i, l)]) >= threshold:
                aligned = True
        if aligned:
            continue
        if grow_m > 0.0:
            return False
        grow_q = 0.0
        for l in range(n):
            if l == i:
                continue
            # dQ_il = dw_i . w_l + w_i . dw_l: in the reduced rows with G = (M A^-1, z),
            # dxi_i . G_l + G_i . dxi_l; explicitly in the full model (G = M there, so use W).
            dq = 0.0
            if model == MSE_REDUCED:
                for x in range(D):
                    dq += dy[i * D + x] * G[l * D + x] + G[i * D + x] * dy[l * D + x]
            else:
                for x in range(D):
                    dq += dy[i * D + x] * y[l * D + x] + y[i * D + x] * dy[l * D + x]
            grow_q += Q[min(i, l) * n + max(i, l)] * dq
        if grow_q > 0.0:
            return False
    if _learned_directions(model, y, args, work, threshold) < min(n, k):
        return False
    return True


@njit
def mse_gd_map(model, y, args, lr, work, out):
    """Projected GD on every neuron at once, ``w_i <- (w_i + lr G_i) / ||w_i + lr G_i||``."""
    dy = _velocity(model, y, args, work)
    n = mse_n_neurons(args)
    D = _width(model, args)
    for x in range(y.size):
        out[x] = y[x] + lr * dy[x]
    for i in range(n):
        if model == MSE_REDUCED:
            # ||w_i + lr G_i||^2 = 1 + lr^2 ||G_i||^2 since G_i is tangent at w_i.
            norm = math.sqrt(1.0 + lr * lr * _neuron_speed2(model, args, dy, i))
        else:
            acc = 0.0
            for x in range(i * D, (i + 1) * D):
                acc += out[x] * out[x]
            norm = math.sqrt(acc)
        for x in range(i * D, (i + 1) * D):
            out[x] /= norm


@njit
def mse_overlaps(model, y, args, u):
    """Write ``M = W^T V`` (n x k, row-major) into ``u``."""
    n = mse_n_neurons(args)
    k = args[0].shape[1]
    if model == MSE_REDUCED:
        K = _width(model, args)
        for i in range(n):
            for j in range(k):
                u[i * k + j] = y[i * K + j]
    else:
        _full_overlaps(y, args[0], n, u)


@njit
def mse_overlap_norm(model, y, args, work, neuron):
    """``||M_neuron||_2``, the escape measure of one neuron."""
    k = args[0].shape[1]
    D = _width(model, args)
    r = neuron * D
    acc = 0.0
    if model == MSE_REDUCED:
        for j in range(k):
            acc += y[r + j] ** 2
        return math.sqrt(acc)
    V = args[0]
    for j in range(k):
        mj = 0.0
        for x in range(D):
            mj += y[r + x] * V[x, j]
        acc += mj * mj
    return math.sqrt(acc)


@njit
def _gram_entry(model, y, args, i, l):
    """``Q_il = w_i . w_l`` without scratch."""
    return _inner(model, args, y, i, y, l)


@njit
def mse_loss(model, y, args):
    """The population MSE ``E[(f - f*)^2]`` of state ``y`` (constants included)."""
    c_st, extra = args[2], args[3]
    c_ss = extra[_ROW_CSS]
    Lss = int(extra[_ROW_META, _META_LCSS])
    n = mse_n_neurons(args)
    k = args[0].shape[1]
    D = _width(model, args)
    student = 0.0
    for i in range(n):
        student += _poly(c_ss, Lss, _gram_entry(model, y, args, i, i))
        for l in range(i + 1, n):
            student += 2.0 * _poly(c_ss, Lss, _gram_entry(model, y, args, i, l))
    cross = 0.0
    for i in range(n):
        for j in range(k):
            if model == MSE_REDUCED:
                mij = y[i * D + j]
            else:
                mij = 0.0
                for x in range(D):
                    mij += y[i * D + x] * args[0][x, j]
            cross += _poly(c_st, c_st.size, mij)
    return student - 2.0 * cross + extra[_ROW_META, _META_CONST]


@njit
def mse_observe(model, y, args, out):
    """Snapshot observables: ``M`` (n k values, row-major), then the loss."""
    mse_overlaps(model, y, args, out)
    out[mse_n_neurons(args) * args[0].shape[1]] = mse_loss(model, y, args)


# ---------------------------------------------------------------------------------------------
# Building the kernel arguments, and the same quantities in numpy (plain Python).


def _trim(c: np.ndarray) -> np.ndarray:
    # Drop trailing zeros so the kernels' power and Horner loops stop at the last live degree
    # (dynamics.py uses it too).
    c = np.asarray(c, dtype=np.float64)
    nz = np.flatnonzero(c)
    return np.ascontiguousarray(c[: (nz[-1] + 1) if nz.size else 1])


def _derivative(c: np.ndarray) -> np.ndarray:
    """Coefficients ``(q + 1) c_{q+1}`` of ``g'`` for ``g = sum_q c_q rho^q``."""
    return _trim(np.polynomial.polynomial.polyder(c)) if c.size > 1 else np.zeros(1)


def _duals(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(c_ss, c_st, c_tt)``: coefficients of ``g_ss``, ``g_st``, ``g_tt`` (p = 0 included)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    size = min(a.size, b.size)
    return _trim(a**2), _trim(a[:size] * b[:size]), _trim(b**2)


def _args(frame: np.ndarray, frame_inv: np.ndarray, gram: np.ndarray, a: np.ndarray,
          b: np.ndarray, n: int, m: int) -> tuple:
    c_ss, c_st, c_tt = _duals(a, b)
    d_ss, d_st = _derivative(c_ss), _derivative(c_st)
    # sum_{j,j'} g_tt(A_jj'): the teacher's own energy, so that L = E[(f - f*)^2] exactly.
    const = float(np.polynomial.polynomial.polyval(np.asarray(gram, dtype=float), c_tt).sum())
    extra = np.zeros((4, max(c_ss.size, d_ss.size, d_st.size, 6)))
    extra[_ROW_CSS, :c_ss.size] = c_ss
    extra[_ROW_DSS, :d_ss.size] = d_ss
    extra[_ROW_DST, :d_st.size] = d_st
    extra[_ROW_META, :6] = (n, m, const, c_ss.size, d_ss.size, d_st.size)
    return (np.ascontiguousarray(frame, dtype=np.float64),
            np.ascontiguousarray(frame_inv, dtype=np.float64), c_st, extra)


def reduced_args(gram: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, m: int) -> tuple:
    """Kernel arguments of ``MSE_REDUCED``.

    Parameters
    ----------
    gram:
        ``A`` (k x k).
    a, b:
        Hermite coefficients of the student and the teacher activations.
    n:
        Number of neurons.
    m:
        Perp coordinates per neuron: ``min(n, d - k)`` (:func:`.initial.orthogonal_rank`).
    """
    A = np.asarray(gram, dtype=float)
    return _args(A, np.linalg.inv(A), A, a, b, n, m)


def full_args(V: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> tuple:
    """Kernel arguments of ``MSE_FULL`` for an explicit frame ``V`` (d x k) and n neurons."""
    V = np.asarray(V, dtype=float)
    return _args(V, np.linalg.inv(V.T @ V), V.T @ V, a, b, n, 0)


def pack_reduced(M: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Reduced states from ``M`` (..., n, k) and ``Z`` (..., m, n): rows ``(M_i, z_i)``
    flattened, shape (..., n (k + m))."""
    rows = np.concatenate([M, np.swapaxes(Z, -1, -2)], axis=-1)
    return np.ascontiguousarray(rows.reshape(rows.shape[:-2] + (-1,)))


def unpack_reduced(y: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(M, Z)`` of reduced states ``y`` (..., n (k + m)): M (..., n, k), Z (..., m, n)."""
    rows = y.reshape(y.shape[:-1] + (n, -1))
    return rows[..., :k], np.swapaxes(rows[..., k:], -1, -2)


def gram_from_reduced(y: np.ndarray, gram: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, M)`` of reduced states: ``Q = M A^-1 M^T + Z^T Z``."""
    M, Z = unpack_reduced(y, n, gram.shape[0])
    Q = M @ np.linalg.solve(gram, np.swapaxes(M, -1, -2)) + np.swapaxes(Z, -1, -2) @ Z
    return Q, M


def qm_velocity(Q: np.ndarray, M: np.ndarray, gram: np.ndarray, a: np.ndarray,
                b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dQ/dt, dM/dt)`` of the MSE flow written directly in the overlaps (numpy).

    ``dM/dt = 2 (a A - C M)``, ``dQ/dt = X + X^T`` with ``X = 2 (M a^T - Q C)``: the closed
    ``(Q, M)`` system of docs/design.md §1.2, for checks and analysis (the kernels integrate
    the equivalent coordinates of the module docstring).
    """
    c_ss, c_st, _ = _duals(a, b)
    P = np.polynomial.polynomial
    ga = P.polyval(M, _derivative(c_st))
    B = P.polyval(Q, _derivative(c_ss))
    np.fill_diagonal(B, 0.0)
    s = (M * ga).sum(-1) - (B * Q).sum(-1)
    C = B + np.diag(s)
    X = 2.0 * (M @ ga.T - Q @ C)
    return X + X.T, 2.0 * (ga @ gram - C @ M)


def loss_from_overlaps(Q: np.ndarray, M: np.ndarray, gram: np.ndarray, a: np.ndarray,
                       b: np.ndarray) -> np.ndarray:
    """``E[(f - f*)^2]`` from overlaps (numpy, batched over leading axes)."""
    c_ss, c_st, c_tt = _duals(a, b)
    P = np.polynomial.polynomial
    return (P.polyval(Q, c_ss).sum((-1, -2)) - 2.0 * P.polyval(M, c_st).sum((-1, -2))
            + P.polyval(np.asarray(gram, dtype=float), c_tt).sum())
