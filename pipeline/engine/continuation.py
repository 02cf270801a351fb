"""Coupled (MSE) trajectories after the explicit kernel: stiff phases and verified convergence.

Why a second stage. In the MSE flow, once some neurons have converged they relax on an O(1)
time scale (eigenvalues of the Jacobian ~ -1) while the neurons still at the initial saddle,
at overlaps ~ d^-1/2, move on the rescaled time scale ~ d^((p*-2)/2). An explicit method is
then stability-limited to steps ~ 1 and needs ~ d^((p*-2)/2) of them; an L-stable implicit
method (Radau IIA, order 5) takes steps limited by accuracy alone, i.e. ~ the slow time scale
itself, so its step count no longer grows with d.

The convergence rule (``CONVERGENCE_RULES["mse"]``). A small gradient is no proof of rest in a
coupled system: neurons at the d^-1/2 scale have gradients ~ d^-(p*-1)/2, far below any
``gtol``, and may still leave (an unlearned index vector picked up later, antipodal pairs or
triples that rearrange), while the sqrt(d)-scaled dynamics of those neurons do not depend on
d: whatever they do at d = 1e3 they also do at d = 1e12, only later, on the rescaled clock
t ~ d^((p*-2)/2). Time itself measured from 0 is that clock (the first escape sets it), so a
check on a window ``[t_c, VERIFY_FACTOR t_c]`` looks equally far ahead in rescaled time at
every d. The rule:

1. candidate at ``t_c``: at least one neuron has escaped, the spherical gradient norm is below
   ``gtol`` and no neuron that has neither escaped nor aligned with another one has growing
   overlaps (``dynamics.settled``, the linear growth test);
2. continue the flow to ``t >= VERIFY_FACTOR t_c`` (cheap with the implicit method: the state
   is at rest up to slow modes); the candidate is confirmed when the candidate test still
   holds there, the loss has changed by at most ``VERIFY_LOSS_TOL`` and no overlap ``M_ij``
   or Gram entry ``Q_il`` by more than ``VERIFY_OVERLAP_TOL``. The trajectory then ends at the
   end of the window with status 0;
3. otherwise the state moved: the window restarts from the current time (a slowly relaxing
   configuration, e.g. surplus neurons decaying towards orthogonality like t^-1/2, is accepted
   once a whole window moves it by less than the tolerances);
4. a window that cannot finish before ``t_max`` or ``max_steps`` ends with status 1 or 2,
   never 0.

The loss is non-increasing along the flow, so the endpoints of a window bound its change
everywhere inside it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import RK45, Radau

from . import mse
from ._jit import jit as njit
from .dynamics import (
    grad_norm,
    observables,
    overlap_norm,
    settled,
    vector_field,
    work_size,
)
from .status import CONVERGED, MAX_STEPS, NON_FINITE, T_MAX

#: The window of the continuation check is ``[t_c, VERIFY_FACTOR t_c]``.
VERIFY_FACTOR = 10.0
#: Largest change of the loss a window may show for a confirmed convergence.
VERIFY_LOSS_TOL = 1e-7
#: Largest change of any overlap ``M_ij`` or Gram entry ``Q_il`` within a confirmed window.
VERIFY_OVERLAP_TOL = 1e-5
#: Round-off floor of the absolute tolerance in units of ``eps * h * field_scale``.
ROUNDOFF_SAFETY = 10.0
EPS = float(np.finfo(float).eps)
#: Largest state for the implicit method (it factorizes a dense Jacobian of this size).
IMPLICIT_MAX_SIZE = 1000

CONVERGENCE_RULES = {
    "correlation": "spherical gradient norm < gtol after the neuron escaped "
                   "(||u||_2 >= escape_threshold)",
    "mse": (f"continuation check: gradient norm < gtol after the first escape with no "
            f"growing overlap of an unescaped neuron at t_c, confirmed by continuing the flow "
            f"to {VERIFY_FACTOR:g} t_c with loss change <= {VERIFY_LOSS_TOL:g} and every "
            f"overlap M and Gram entry Q changing by <= {VERIFY_OVERLAP_TOL:g}; the stop is "
            f"at the end of that window (status 1/2 if t_max/max_steps comes first)"),
    "gd": "gradient norm < gtol after the first escape, with no growing overlap of an "
          "unescaped neuron (no continuation check)",
    "correlation/sgd": "population spherical gradient norm < gtol while the neuron is beyond "
                       "escape_threshold (a chain that escaped and then returned goes on)",
    "mse/sgd": "never: the coupled SGD chain runs to its sample budget (status 1)",
}


@njit
def field(model, y, args, work):
    """The velocity of ``y`` as a new array."""
    dy = np.empty(y.size)
    vector_field(model, y, args, work, dy)
    return dy


@njit
def jacobian(model, y, args, work):
    """Forward-difference Jacobian of the vector field (only Newton's iteration uses it, so
    its ~sqrt(eps) error costs iterations, never accuracy)."""
    N = y.size
    f0 = np.empty(N)
    f1 = np.empty(N)
    vector_field(model, y, args, work, f0)
    J = np.empty((N, N))
    yp = y.copy()
    for j in range(N):
        # Every coordinate is a component of a unit vector: an absolute increment suits all.
        step = 1.4901161193847656e-08 * max(1.0, abs(y[j]))
        yp[j] = y[j] + step
        vector_field(model, yp, args, work, f1)
        yp[j] = y[j]
        for i in range(N):
            J[i, j] = (f1[i] - f0[i]) / step
    return J


@njit
def field_scale(model, y, args, work):
    """Size of the largest terms that cancel in the velocity of ``y`` (the field's round-off
    is ~ eps times this): ``2 (max_i sum_l |C_il| max|y| + max_ij |(A a)_ij|)`` bounds them."""
    dy = np.empty(y.size)
    vector_field(model, y, args, work, dy)
    n = mse.mse_n_neurons(args)
    k = args[0].shape[1]
    oa, oQ, oC, _, _, _ = mse._layout(model, args)
    a = work[oa:oQ]
    C = work[oC:oC + n * n]
    c_row = 0.0
    for i in range(n):
        acc = 0.0
        for l in range(n):
            acc += abs(C[i * n + l])
        c_row = max(c_row, acc)
    a_max = 0.0
    for x in range(n * k):
        a_max = max(a_max, abs(a[x]))
    y_max = 0.0
    for x in range(y.size):
        y_max = max(y_max, abs(y[x]))
    return 2.0 * (c_row * y_max + a_max * k)


def _summary(model, y: np.ndarray, args: tuple) -> tuple[float, np.ndarray, np.ndarray]:
    """``(loss, M, Q)`` of one coupled state."""
    n = mse.mse_n_neurons(args)
    k = args[0].shape[1]
    if model == mse.MSE_REDUCED:
        Q, M = mse.gram_from_reduced(y, args[0], n)
    else:
        W = y.reshape(n, -1)
        Q, M = W @ W.T, W @ args[0]
    return float(mse.mse_loss(model, y, args)), M.reshape(n, k), Q


def _moved(a, b) -> bool:
    return (abs(a[0] - b[0]) > VERIFY_LOSS_TOL
            or float(np.max(np.abs(a[1] - b[1]))) > VERIFY_OVERLAP_TOL
            or float(np.max(np.abs(a[2] - b[2]))) > VERIFY_OVERLAP_TOL)


def implicit_applies(y: np.ndarray) -> bool:
    """Whether the implicit method is used for a state of this size."""
    return y.size <= IMPLICIT_MAX_SIZE


def finish(model, y0, t0, steps, args, rtol, atol, t_max, max_steps, gtol, threshold, snaps,
           snap_out, t_esc, implicit=True):
    """Continue one coupled trajectory from ``(t0, y0)`` until the convergence rule of the
    module docstring decides, or ``t_max`` / ``max_steps`` / a failure ends it.

    ``steps`` counts the accepted steps so far, ``t_esc`` (updated in place) the escape times
    so far; ``snap_out`` rows for snapshot times > ``t0`` are written here. Returns
    ``(y, t, steps, status)``. ``implicit``: Radau IIA (5) with a dense Jacobian, else
    Dormand-Prince 5(4) (scipy's), for states too large to factorize.
    """
    work = np.empty(work_size(model, args))
    y = np.array(y0, dtype=np.float64)
    t = float(t0)
    js = int(np.searchsorted(snaps, t, side="right"))

    def fun(_t, x):
        return field(model, x, args, work)

    def candidate(x):
        return (bool(np.any(~np.isnan(t_esc))) and grad_norm(model, x, args, work) < gtol
                and settled(model, x, args, work, threshold))

    status = None
    window = None  # (end time, summary at its start)
    solver = None
    while status is None:
        if candidate(y):
            if window is None:
                window = (VERIFY_FACTOR * t, _summary(model, y, args))
            elif t >= window[0]:
                now = _summary(model, y, args)
                if not _moved(now, window[1]):
                    status = CONVERGED
                    break
                window = (VERIFY_FACTOR * t, now)
        else:
            window = None
        if t >= t_max:
            status = T_MAX
            break
        if steps >= max_steps:
            status = MAX_STEPS
            break
        if solver is None:
            if implicit:
                solver = Radau(fun, t, y, t_max, rtol=rtol, atol=atol,
                               jac=lambda _t, x: jacobian(model, x, args, work))
            else:
                solver = RK45(fun, t, y, t_max, rtol=rtol, atol=atol)
        # The field is computed with round-off ~ eps * (its largest cancelling terms), so no
        # step of length h can be more accurate than h times that: without this floor the
        # error of a state at rest is pure round-off and the implicit method, whose steps are
        # not stability-limited, grows h until the round-off fails the test, then oscillates.
        solver.atol = atol + ROUNDOFF_SAFETY * EPS * solver.h_abs * field_scale(
            model, y, args, work)
        solver.step()
        if solver.status == "failed" or not np.all(np.isfinite(solver.y)):
            status = NON_FINITE
            break
        steps += 1
        t_old, t = t, float(solver.t)
        y = np.array(solver.y)
        sol = None
        for e in range(t_esc.size):
            if math.isnan(t_esc[e]) and overlap_norm(model, y, args, work, e) >= threshold:
                sol = sol or solver.dense_output()
                lo, hi = t_old, t
                for _ in range(200):  # bisection on the dense output, to round-off in t
                    mid = 0.5 * (lo + hi)
                    if mid <= lo or mid >= hi:
                        break
                    if overlap_norm(model, sol(mid), args, work, e) >= threshold:
                        hi = mid
                    else:
                        lo = mid
                t_esc[e] = hi
        while js < snaps.size and snaps[js] <= t:
            sol = sol or solver.dense_output()
            observables(model, np.ascontiguousarray(sol(snaps[js])), args, snap_out[js])
            js += 1
    for j in range(js, snaps.size):
        if status == CONVERGED:
            observables(model, y, args, snap_out[j])
        else:
            snap_out[j, :] = np.nan
    return y, t, steps, status
