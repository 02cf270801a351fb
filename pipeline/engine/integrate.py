"""How a step is taken and when to stop: batched Dormand-Prince 5(4) and projected GD.

Each trajectory of a batch is advanced independently, with its own adaptive step size (escape
times differ by orders of magnitude across seeds and d, so a shared step would be wrong), by
the same compiled code: a trajectory's numbers depend only on its own inputs, never on the
batch it is in, the thread that runs it or the number of threads.

Observation, inside the step loop:

* escape time: first ``t`` with ``||u(t)||_2 >= escape_threshold``, located inside the step on
  the 4th-order dense output by bisection to round-off, not at step endpoints;
* snapshots of ``u(t)`` (and, for the MSE models, the loss) on a user time grid, from the
  dense output.

Stopping, checked after every accepted step:

* status 0 (converged): the spherical gradient norm is below ``gtol``, tested only after the
  escape: near the initial saddle the gradient is ``~ d^{-(p*-1)/2}``, far below any sensible
  ``gtol``, and must not be mistaken for convergence. "After the escape" is
  ``dynamics.escapes_to_converge`` and ``dynamics.settled``: every neuron for the
  correlation loss; for the MSE loss, whose coupled neurons need not all reach the threshold,
  at least one neuron and no other neuron still leaving the saddle. For the MSE flow this
  is only a candidate: the kernel hands the trajectory to ``stiff.finish``, which
  continues the flow to ten times the candidate's time and gives status 0 only if nothing
  moved (``continuation.CONVERGENCE_RULES``); it also takes over stiff phases (Rosenbrock);
* status 1: ``t`` reached ``t_max``; status 2: ``max_steps`` accepted steps;
* status 3: a non-finite state, or a step size that collapsed (``limit_reached``: time keeps
  what its float sum drops, ``advance``, so a late O(1) step at t ~ 1e13 is a step; only a
  blowing-up solution collapses). A bad trajectory is flagged and its batch goes on.

Correlation loss, reduced model: a step that takes an overlap through 0 where the exact flow
cannot cross it (``dynamics.crosses_invariant_zero``) is rejected and halved.

Snapshots after a converged stop hold the final state (the flow is at rest within ``gtol``);
after any other stop they are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import prange

from ._jit import jit as njit
from ._jit import jit_named
from .continuation import CONVERGENCE_RULES, VERIFY_FLOOR
from .dynamics import (
    FULL,
    MSE_FULL,
    MSE_REDUCED,
    REDUCED,
    crosses_invariant_zero,
    escapes_to_converge,
    gd_map,
    grad_norm,
    grad_norm_given,
    n_neurons,
    observables,
    observables_size,
    overlap_norm,
    settled,
    vector_field,
    work_size,
)
from .status import CONVERGED, HANDOVER, MAX_STEPS, NON_FINITE, T_MAX

# Stiffness detection (Hairer's DOPRI5): h |lambda| estimated from the last two stages; the
# explicit stability boundary is ~3.3, and 15 such steps (6 non-stiff ones in between reset
# the count) mean the step size is limited by stability, not accuracy.
STIFF_HLAMBDA, STIFF_COUNT, NONSTIFF_RESET = 3.25, 15, 6

# Dormand-Prince 5(4) tableau (Hairer, Norsett & Wanner, 1993), FSAL.
C2, C3, C4, C5 = 1 / 5, 3 / 10, 4 / 5, 8 / 9
A21 = 1 / 5
A31, A32 = 3 / 40, 9 / 40
A41, A42, A43 = 44 / 45, -56 / 15, 32 / 9
A51, A52, A53, A54 = 19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729
A61, A62, A63, A64, A65 = 9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656
A71, A73, A74, A75, A76 = 35 / 384, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84
E1, E3, E4, E5, E6, E7 = (71 / 57600, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525,
                          -1 / 40)
# Dense-output coefficients (Hairer's DOPRI5 `contd5`).
D1, D3, D4 = -12715105075 / 11282082432, 87487479700 / 32700410799, -10690763975 / 1880347072
D5, D6, D7 = 701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423

# Step-size controller (Hairer's defaults, PI control).
SAFE, FAC_MIN, FAC_MAX, BETA = 0.9, 0.2, 10.0, 0.04
EPS = 2.220446049250313e-16  # float64 machine epsilon
EXPO1 = 0.2 - BETA * 0.75


@dataclass(frozen=True)
class Tolerances:
    """Error control of the adaptive integrators: ``|err_i| <= atol_i + rtol |y_i|`` (RMS),
    with ``atol_i = overlap_atol`` for the overlap coordinates of the reduced models (the
    first k numbers of each neuron's row) and ``atol`` for every other coordinate
    (:func:`absolute_tolerances`); ``overlap_atol = None`` means ``atol``."""

    rtol: float = 1e-8
    atol: float = 1e-12
    overlap_atol: float | None = None

    def __post_init__(self) -> None:
        _check_number("Tolerances", "rtol", self.rtol, "a number in [0, 1)",
                      lambda x: 0.0 <= x < 1.0)
        _check_number("Tolerances", "atol", self.atol, "a number > 0", lambda x: x > 0.0)
        if self.overlap_atol is not None:
            _check_number("Tolerances", "overlap_atol", self.overlap_atol,
                          "a number > 0 (or None: atol)", lambda x: x > 0.0)

    @classmethod
    def at_dimension(cls, rtol: float, atol: float, d: float) -> Tolerances:
        """The tolerances of a point at dimension ``d``: ``overlap_atol = min(atol,
        rtol / sqrt(d))``.

        Why: the initial overlaps are ~ d^-1/2 and the flow's escape from them is unstable
        (an overlap growing like ``1 / (T - t)`` magnifies a relative error by its own growth),
        so an absolute tolerance above ``rtol d^-1/2`` holds them to less than the relative
        accuracy asked for. With the defaults (1e-8, 1e-12) nothing changes up to d = 1e8; at
        d = 1e12 (overlaps ~1e-6) the MSE flow's second escape came ~1e-5 (of the wait) off
        scipy's Radau at rtol 1e-12 with atol = 1e-12 alone, ~1e-7 with 1e-14.
        """
        return cls(rtol, atol, min(atol, rtol / math.sqrt(d)))


def absolute_tolerances(model: int, args: tuple, size: int, tolerances: Tolerances
                        ) -> np.ndarray:
    """The absolute tolerance of each coordinate of a state of ``size`` numbers (one
    trajectory) of ``model``: ``tolerances.overlap_atol`` for the overlaps of the reduced
    models, ``tolerances.atol`` for the rest (and for every coordinate of the full-d models,
    whose rows are d-vectors)."""
    out = np.full(size, float(tolerances.atol))
    if tolerances.overlap_atol is None or model not in (REDUCED, MSE_REDUCED):
        return out
    k = args[0].shape[1]
    width = size // n_neurons(model, args)  # a neuron's row: (u, r) or (M_i, z_i)
    out.reshape(-1, width)[:, :k] = float(tolerances.overlap_atol)
    return out


@dataclass(frozen=True)
class StopRule:
    """When a trajectory ends (see the module docstring for the status codes)."""

    t_max: float = 1e12
    gtol: float = 1e-6
    max_steps: int = 1_000_000
    #: The MSE continuation check's floor for the growth test (``continuation.verify_floor``
    #: of the point's d; ``simulate`` sets it).
    verify_floor: float = VERIFY_FLOOR

    def __post_init__(self) -> None:
        # Checked here, before any work: t_max = 0 used to divide by zero inside the kernel.
        _check_number("StopRule", "t_max", self.t_max, "a number > 0", lambda x: x > 0.0)
        _check_number("StopRule", "gtol", self.gtol, "a number >= 0", lambda x: x >= 0.0)
        _check_number("StopRule", "verify_floor", self.verify_floor, "a number > 0",
                      lambda x: x > 0.0)
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int | np.integer) \
                or self.max_steps < 1:
            raise ValueError(f"StopRule.max_steps = {self.max_steps!r}: must be an integer >= 1")


def _check_number(owner: str, field: str, value, allowed: str, ok) -> None:
    """Raise a ValueError naming ``owner.field``, its value and what is allowed, unless
    ``value`` is a finite real number and ``ok(value)``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer) \
            or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{owner}.{field} = {value!r}: must be {allowed}")


@dataclass(frozen=True)
class Observation:
    """What is recorded along the way: the escape threshold and the snapshot times."""

    escape_threshold: float = 0.5
    snapshots: np.ndarray | None = None


#: :func:`limit_reached`'s "no limit reached: take the step".
GOING = -2


#: :func:`advance` folds the remainder into t once it is worth this many ulp of t.
FOLD_ULPS = 1024.0


@njit
def limit_reached(t, t_max, steps, max_steps, h):
    """The status that ends a trajectory at ``t`` before a step of size ``h``, or
    :data:`GOING`: ``t_max`` reached, ``max_steps`` taken, or the step size collapsed.

    Time is ``t`` plus a remainder (:func:`advance`), so a step makes progress down to
    ~FOLD_ULPS eps^2 t: after an escape at t ~ 1e13 the dynamics run on an O(1) clock and
    steps ~ 0.01, below 8 ulp of t, are fine (they ended as "collapsed", status 3, while time
    was a plain float sum). A smaller step (or one not positive) has collapsed: the error
    controller found no step size at which the solution is smooth, i.e. it is blowing up.
    Shared by every adaptive integrator (also ``stiff.finish``).
    """
    if t >= t_max:
        return T_MAX
    if steps >= max_steps:
        return MAX_STEPS
    if not (h > 8.0 * FOLD_ULPS * EPS * EPS * max(t, 1e-290)):
        return NON_FINITE
    return GOING


@njit
def advance(t, t_lo, h):
    """``t + h`` with the part the float sum drops kept in ``t_lo`` (Knuth's TwoSum); the
    time is ``t + t_lo``.

    The remainder is folded into ``t`` only once it is worth ``FOLD_ULPS`` ulp of ``t``, so
    ``t`` is the plain float sum (the same bits as without a remainder) until steps fall
    below ulp(t), where the plain sum stalls (at t = 1e13 under steps of 1e-3); everything
    read off ``t`` (escape times, snapshots, ``t_final``) is then within FOLD_ULPS ulp
    (~2e-13 relative) of the exact sum of the steps.
    """
    s = t + h
    bp = s - t
    t_lo += (t - (s - bp)) + (h - bp)
    if abs(t_lo) > FOLD_ULPS * EPS * abs(s):
        hi = s + t_lo
        t_lo -= hi - s
        s = hi
    return s, t_lo


@njit
def _initial_step(model, y, f0, args, work, rtol, atol, t_max, tmp, f1):
    n = y.size
    dnf = 0.0
    dny = 0.0
    for i in range(n):
        sk = atol[i] + rtol * abs(y[i])
        dnf += (f0[i] / sk) ** 2
        dny += (y[i] / sk) ** 2
    if dnf <= 1e-10 or dny <= 1e-10:
        h = 1e-6
    else:
        h = math.sqrt(dny / dnf) * 0.01
    h = min(h, t_max)
    for i in range(n):
        tmp[i] = y[i] + h * f0[i]
    vector_field(model, tmp, args, work, f1)
    der2 = 0.0
    for i in range(n):
        sk = atol[i] + rtol * abs(y[i])
        der2 += ((f1[i] - f0[i]) / sk) ** 2
    der2 = math.sqrt(der2) / h
    der12 = max(der2, math.sqrt(dnf))
    if der12 <= 1e-15:
        h1 = max(1e-6, h * 1e-3)
    else:
        h1 = (0.01 / der12) ** 0.2
    return min(100.0 * h, h1, t_max)


@njit
def _dense(y, yn, k1, k3, k4, k5, k6, k7, h, theta, out):
    """Evaluate the 4th-order continuous extension at ``t + theta h``."""
    t1 = 1.0 - theta
    for i in range(y.size):
        ydiff = yn[i] - y[i]
        bspl = h * k1[i] - ydiff
        r4 = ydiff - h * k7[i] - bspl
        r5 = h * (D1 * k1[i] + D3 * k3[i] + D4 * k4[i] + D5 * k5[i] + D6 * k6[i] + D7 * k7[i])
        out[i] = y[i] + theta * (ydiff + t1 * (bspl + theta * (r4 + t1 * r5)))


@njit
def _finish_snapshots(model, y, args, status, snaps, js, snap_out):
    for j in range(js, snaps.size):
        if status == CONVERGED:
            observables(model, y, args, snap_out[j])
        else:
            snap_out[j, :] = np.nan


@njit
def _copy(src, dst):
    # A loop, not ``dst[:] = src``: the slice assignment compiles numba's shape-mismatch
    # error message (string formatting), seconds of compile time for every kernel.
    for i in range(src.size):
        dst[i] = src[i]


@njit
def _all_finite(y):
    for i in range(y.size):
        if not math.isfinite(y[i]):
            return False
    return True


@njit
def _mark_escapes(model, y, args, work, threshold, t_esc, t):
    """Record ``t`` for neurons already past the threshold at ``y``; return #escaped."""
    count = 0
    for e in range(t_esc.size):
        if math.isnan(t_esc[e]) and overlap_norm(model, y, args, work, e) >= threshold:
            t_esc[e] = t
        if not math.isnan(t_esc[e]):
            count += 1
    return count


@njit
def dopri5(model, y0, args, rtol, atol, t_max, max_steps, gtol, threshold, snaps,
           y_out, snap_out, t_esc, handover, stiff_handover):
    """Integrate one trajectory; returns ``(t_final, steps, status)``. ``atol`` is per
    coordinate (:func:`absolute_tolerances`).

    The final state is written to ``y_out``, the snapshot overlaps to ``snap_out`` (one row
    per snapshot time) and each neuron's escape time to ``t_esc`` (NaN: never).

    With ``handover`` (the MSE models) the kernel never declares convergence itself: when the
    gradient test first passes, or (with ``stiff_handover``) when the step size has become
    stability-limited (stiff), it stops with status ``HANDOVER``, and ``stiff.finish``
    takes over from ``y_out`` at ``t_final``, with the snapshots taken so far (those at
    times <= ``t_final``).
    """
    n = y0.size
    work = np.empty(work_size(model, args))
    y = y0.copy()
    yn = np.empty(n)
    ys = np.empty(n)
    k1 = np.empty(n)
    k2 = np.empty(n)
    k3 = np.empty(n)
    k4 = np.empty(n)
    k5 = np.empty(n)
    k6 = np.empty(n)
    k7 = np.empty(n)
    t = 0.0
    t_lo = 0.0  # what the float sum t dropped (advance)
    steps = 0
    status = -1
    t_esc[:] = np.nan
    need = escapes_to_converge(model, args)
    js = 0
    if not _all_finite(y):
        # Variables, not constants, as arguments: constants would compile a second copy.
        status = NON_FINITE
        _finish_snapshots(model, y, args, status, snaps, js, snap_out)
        _copy(y, y_out)
        return 0.0, 0, NON_FINITE
    n_escaped = _mark_escapes(model, y, args, work, threshold, t_esc, 0.0)
    while js < snaps.size and snaps[js] <= 0.0:
        observables(model, y, args, snap_out[js])
        js += 1
    vector_field(model, y, args, work, k1)
    h = _initial_step(model, y, k1, args, work, rtol, atol, t_max, ys, k2)
    facold = 1e-4
    last_rejected = False
    n_stiff = 0
    n_nonstiff = 0
    while True:
        # k1 is the velocity at y (first stage, FSAL), which spares the MSE models a field
        # evaluation per step.
        if n_escaped >= need and grad_norm_given(model, y, k1, args, work) < gtol \
                and settled(model, y, args, work, threshold):
            status = HANDOVER if handover else CONVERGED
            break
        if stiff_handover and n_stiff >= STIFF_COUNT:
            status = HANDOVER
            break
        status = limit_reached(t, t_max, steps, max_steps, h)
        if status != GOING:
            break
        h = min(h, t_max - t)
        for i in range(n):
            ys[i] = y[i] + h * A21 * k1[i]
        vector_field(model, ys, args, work, k2)
        for i in range(n):
            ys[i] = y[i] + h * (A31 * k1[i] + A32 * k2[i])
        vector_field(model, ys, args, work, k3)
        for i in range(n):
            ys[i] = y[i] + h * (A41 * k1[i] + A42 * k2[i] + A43 * k3[i])
        vector_field(model, ys, args, work, k4)
        for i in range(n):
            ys[i] = y[i] + h * (A51 * k1[i] + A52 * k2[i] + A53 * k3[i] + A54 * k4[i])
        vector_field(model, ys, args, work, k5)
        for i in range(n):
            ys[i] = y[i] + h * (A61 * k1[i] + A62 * k2[i] + A63 * k3[i] + A64 * k4[i]
                                + A65 * k5[i])
        vector_field(model, ys, args, work, k6)
        for i in range(n):
            yn[i] = y[i] + h * (A71 * k1[i] + A73 * k3[i] + A74 * k4[i] + A75 * k5[i]
                                + A76 * k6[i])
        vector_field(model, yn, args, work, k7)
        err = 0.0
        for i in range(n):
            e = h * (E1 * k1[i] + E3 * k3[i] + E4 * k4[i] + E5 * k5[i] + E6 * k6[i]
                     + E7 * k7[i])
            sk = atol[i] + rtol * max(abs(y[i]), abs(yn[i]))
            err += (e / sk) ** 2
        err = math.sqrt(err / n)
        if not math.isfinite(err) or not _all_finite(yn):
            # Possibly only a step far too large: retry much smaller; a genuinely
            # non-finite solution ends as a collapsed step size (status 3).
            h *= FAC_MIN
            last_rejected = True
            continue
        fac11 = err ** EXPO1
        fac = fac11 / facold ** BETA
        fac = max(1.0 / FAC_MAX, min(1.0 / FAC_MIN, fac / SAFE))
        h_new = h / fac
        if err > 1.0:
            h = h / min(1.0 / FAC_MIN, fac11 / SAFE)
            last_rejected = True
            continue
        if crosses_invariant_zero(model, y, yn, args):
            # Within the tolerance but across an invariant zero: a wrong basin, not an
            # error of size atol. Halving until the sign holds keeps |u| accurate relative
            # to itself (steps ~ t on the -1/t approach, so their number grows like ln t).
            h *= 0.5
            last_rejected = True
            continue
        # Accepted step [t, t + h].
        facold = max(err, 1e-4)
        if stiff_handover:
            # ys holds stage 6's argument, k6 and k7 the field there and at yn.
            num = 0.0
            den = 0.0
            for i in range(n):
                num += (k7[i] - k6[i]) ** 2
                den += (yn[i] - ys[i]) ** 2
            if den > 0.0 and h * math.sqrt(num / den) > STIFF_HLAMBDA:
                n_stiff += 1
                n_nonstiff = 0
            else:
                n_nonstiff += 1
                if n_nonstiff == NONSTIFF_RESET:
                    n_stiff = 0
        t_new, t_lo_new = advance(t, t_lo, h)
        if n_escaped < t_esc.size:
            for e in range(t_esc.size):
                if math.isnan(t_esc[e]) and overlap_norm(model, yn, args, work, e) >= threshold:
                    # Bisection on the dense output, to round-off in theta.
                    lo, hi = 0.0, 1.0
                    for _ in range(60):
                        mid = 0.5 * (lo + hi)
                        _dense(y, yn, k1, k3, k4, k5, k6, k7, h, mid, ys)
                        if overlap_norm(model, ys, args, work, e) >= threshold:
                            hi = mid
                        else:
                            lo = mid
                        if hi - lo <= 1e-16:
                            break
                    t_esc[e] = t + hi * h
                    n_escaped += 1
        while js < snaps.size and snaps[js] <= t_new:
            _dense(y, yn, k1, k3, k4, k5, k6, k7, h, (snaps[js] - t) / h, ys)
            observables(model, ys, args, snap_out[js])
            js += 1
        for i in range(n):
            y[i] = yn[i]
            k1[i] = k7[i]
        t = t_new
        t_lo = t_lo_new
        steps += 1
        if last_rejected:
            h_new = min(h_new, h)
            last_rejected = False
        h = h_new
    _finish_snapshots(model, y, args, status, snaps, js, snap_out)
    _copy(y, y_out)
    return t, steps, status


@njit
def projected_gd(model, y0, args, lr, t_max, max_steps, gtol, threshold, snaps,
                 y_out, snap_out, t_esc):
    """Iterate the projected GD map; time is ``t = lr * iterations``.

    Returns ``(t_final, steps, status)`` and fills the outputs like :func:`dopri5`. A neuron's
    escape time is that of its first iterate with ``||u|| >= threshold``; the snapshot at
    time ``tau`` is the iterate ``floor(tau / lr)``.
    """
    n = y0.size
    work = np.empty(work_size(model, args))
    y = y0.copy()
    yn = np.empty(n)
    steps = 0
    status = -1
    t_esc[:] = np.nan
    need = escapes_to_converge(model, args)
    n_escaped = _mark_escapes(model, y, args, work, threshold, t_esc, 0.0)
    js = 0
    if not _all_finite(y):
        status = NON_FINITE
    while status < 0:
        t = steps * lr
        while js < snaps.size and snaps[js] < t + lr:
            observables(model, y, args, snap_out[js])
            js += 1
        if n_escaped >= need and grad_norm(model, y, args, work) < gtol \
                and settled(model, y, args, work, threshold):
            status = CONVERGED
        elif t >= t_max:
            status = T_MAX
        elif steps >= max_steps:
            status = MAX_STEPS
        else:
            gd_map(model, y, args, lr, work, yn)
            if not _all_finite(yn):
                status = NON_FINITE
                break
            for i in range(n):
                y[i] = yn[i]
            steps += 1
            if n_escaped < t_esc.size:
                n_escaped = _mark_escapes(model, y, args, work, threshold, t_esc, steps * lr)
    _finish_snapshots(model, y, args, status, snaps, js, snap_out)
    _copy(y, y_out)
    return steps * lr, steps, status


@njit(parallel=True)
def _flow_batch(model, Y0, args, rtol, atol, t_max, max_steps, gtol, threshold, snaps,
                Y, T, S, ST, TE, U_t, handover, stiff_handover):
    for b in prange(Y0.shape[0]):
        T[b], S[b], ST[b] = dopri5(model, Y0[b], args, rtol, atol, t_max, max_steps, gtol,
                                   threshold, snaps, Y[b], U_t[b], TE[b], handover,
                                   stiff_handover)


@njit(parallel=True)
def _gd_batch(model, Y0, args, lr, t_max, max_steps, gtol, threshold, snaps,
              Y, T, S, ST, TE, U_t):
    for b in prange(Y0.shape[0]):
        T[b], S[b], ST[b] = projected_gd(model, Y0[b], args, lr, t_max, max_steps, gtol,
                                         threshold, snaps, Y[b], U_t[b], TE[b])


# One entry kernel per (method, model): each passes its model as a compile-time constant (a
# closure's constant is one, like a module's), so everything it calls is specialized to that
# model and no other model is compiled (dispatch.py). A sweep compiles only the entries its
# points use. (The model must be passed as a plain argument: packed into a tuple or
# star-arguments it would lose its constancy.) Each entry unpacks the settings itself and calls
# the parallel kernel directly: numba re-optimizes and re-emits the whole call tree below
# every compiled function, so a layer of its own (a shared `_flow(model, ...)` between entry
# and batch) cost ~1.7 s of each cold compile of the MSE flow, ~6 s in the stiff stage.
def _flow_entry(model: int, name: str):
    def entry(Y0, args, settings, out):
        # Unpacked here, not in the parallel kernel: with the tuple unpacked inside the prange
        # function (numba 0.68) the status array came back unwritten.
        rtol, atol, t_max, max_steps, gtol, threshold, snaps, handover, stiff_handover = \
            settings
        Y, T, S, ST, TE, U_t = out
        _flow_batch(model, Y0, args, rtol, atol, t_max, max_steps, gtol, threshold, snaps,
                    Y, T, S, ST, TE, U_t, handover, stiff_handover)
    return jit_named(entry, name)


def _gd_entry(model: int, name: str):
    def entry(Y0, args, settings, out):
        lr, t_max, max_steps, gtol, threshold, snaps = settings
        Y, T, S, ST, TE, U_t = out
        _gd_batch(model, Y0, args, lr, t_max, max_steps, gtol, threshold, snaps, Y, T, S, ST,
                  TE, U_t)
    return jit_named(entry, name)


_flow_reduced = _flow_entry(REDUCED, "_flow_reduced")
_flow_full = _flow_entry(FULL, "_flow_full")
_flow_mse_reduced = _flow_entry(MSE_REDUCED, "_flow_mse_reduced")
_flow_mse_full = _flow_entry(MSE_FULL, "_flow_mse_full")
_gd_reduced = _gd_entry(REDUCED, "_gd_reduced")
_gd_full = _gd_entry(FULL, "_gd_full")
_gd_mse_reduced = _gd_entry(MSE_REDUCED, "_gd_mse_reduced")
_gd_mse_full = _gd_entry(MSE_FULL, "_gd_mse_full")

_ENTRIES = {
    "flow": {REDUCED: _flow_reduced, FULL: _flow_full, MSE_REDUCED: _flow_mse_reduced,
             MSE_FULL: _flow_mse_full},
    "gd": {REDUCED: _gd_reduced, FULL: _gd_full, MSE_REDUCED: _gd_mse_reduced,
           MSE_FULL: _gd_mse_full},
}


@dataclass
class BatchResult:
    """Per-trajectory outputs of :func:`solve`; arrays lead with the batch axis.

    ``escape_time`` is (batch, neurons); ``u_t`` is (batch, time, neurons * k); ``loss_t``
    (batch, time) is the MSE loss at the snapshot times for the MSE models, else ``None``.
    """

    y: np.ndarray
    t_final: np.ndarray
    steps: np.ndarray
    status: np.ndarray
    escape_time: np.ndarray
    u_t: np.ndarray
    loss_t: np.ndarray | None = None


def flow_settings(tolerances: Tolerances, atol: np.ndarray, stop: StopRule,
                  observe: Observation, snaps: np.ndarray, coupled: bool,
                  implicit: bool) -> tuple:
    """The explicit flow kernel's settings (``_ENTRIES["flow"][model](y0, args, settings,
    out)``), as :func:`solve` passes them: ``atol`` from :func:`absolute_tolerances`,
    ``coupled`` for the MSE models' convergence rule, ``implicit`` where stiff phases are
    handed over to ``stiff.py``. Fixed types, so that every call finds the same compiled
    kernel (the benchmarks time the kernels with these too)."""
    return (float(tolerances.rtol), atol, float(stop.t_max), int(stop.max_steps),
            float(stop.gtol), float(observe.escape_threshold), snaps, bool(coupled),
            bool(implicit))


def stage_settings(tolerances: Tolerances, atol: np.ndarray, stop: StopRule,
                   observe: Observation, snaps: np.ndarray, mode: int) -> tuple:
    """The continuation stage's settings (``stiff.FINISH[model]``, and ``stiff.finish_batch``
    after ``args``), as :func:`solve` passes them; ``mode`` is ``stiff.SWITCHING``,
    ``ROSENBROCK`` or ``EXPLICIT``."""
    return (float(tolerances.rtol), atol, float(stop.t_max), int(stop.max_steps),
            float(stop.gtol), float(observe.escape_threshold), float(stop.verify_floor), snaps,
            int(mode))


def solve(
    model: int,
    y0: np.ndarray,
    args: tuple,
    *,
    method: str = "flow",
    lr: float | None = None,
    tolerances: Tolerances = Tolerances(),
    stop: StopRule = StopRule(),
    observe: Observation = Observation(),
    threads: int | None = None,
    integrator: str = "auto",
) -> BatchResult:
    """Advance a batch of trajectories of one model until each one stops.

    Parameters
    ----------
    model:
        ``dynamics.REDUCED``, ``dynamics.FULL``, ``dynamics.MSE_REDUCED`` or
        ``dynamics.MSE_FULL``.
    y0:
        Initial states, one row per trajectory.
    args:
        The model's kernel arguments (``dynamics.reduced_args`` / ``dynamics.full_args``,
        ``mse.reduced_args`` / ``mse.full_args``).
    method:
        ``"flow"`` (adaptive Dormand-Prince 5(4)) or ``"gd"`` (projected GD with ``lr``).
    tolerances, stop, observe:
        Error control, stopping rule, and what to record.
    threads:
        Worker threads for the batch (default: all of numba's); results do not depend on it.
    integrator:
        MSE flow only (the correlation flow is never stiff). ``"auto"``: Dormand-Prince until
        the first convergence candidate or a stiff phase, then the compiled stage of
        ``stiff.py`` (Rosenbrock where stiff, DOP853 where not; it also runs the
        continuation check of the convergence rule); ``"explicit"``: explicit steps only
        (Dormand-Prince, then DOP853 in the stage that runs the check); ``"implicit"``:
        Rosenbrock steps only, from t = 0.
        The full-d backend, and reduced states over ``IMPLICIT_MAX_SIZE`` numbers, always
        continue explicitly (``stiff.implicit_applies``).
    """
    y0 = np.ascontiguousarray(np.atleast_2d(y0), dtype=np.float64)
    if integrator not in ("auto", "explicit", "implicit"):
        raise ValueError(f"integrator must be 'auto', 'explicit' or 'implicit', "
                         f"got {integrator!r}")
    B = y0.shape[0]
    k = args[0].shape[1]
    neurons = n_neurons(model, args)
    snaps = (np.zeros(0) if observe.snapshots is None
             else np.ascontiguousarray(observe.snapshots, dtype=np.float64))
    Y = np.empty_like(y0)
    T = np.empty(B)
    S = np.empty(B, dtype=np.int64)
    ST = np.empty(B, dtype=np.int64)
    TE = np.empty((B, neurons))
    U_t = np.empty((B, snaps.size, observables_size(model, args)))
    coupled = method == "flow" and model >= MSE_REDUCED
    # stiff.py uses this module's helpers (time sum, limits): imported here, not above.
    from . import stiff
    implicit = (coupled and integrator != "explicit" and B > 0
                and stiff.implicit_applies(model, y0[0]))
    atol = absolute_tolerances(model, args, y0.shape[1], tolerances)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)
    try:
        if method == "flow":
            if implicit and integrator == "implicit":
                # Straight to the continuation stage: everything below starts at t = 0.
                Y[:], T[:], S[:], ST[:], TE[:] = y0, 0.0, 0, HANDOVER, np.nan
                for b in range(B):
                    _mark_escapes(model, y0[b], args, np.empty(work_size(model, args)),
                                  observe.escape_threshold, TE[b], 0.0)
                    for j in np.flatnonzero(snaps <= 0.0):
                        observables(model, y0[b], args, U_t[b, j])
            else:
                # Stiff phases are handed over only where Rosenbrock steps will take them.
                settings = flow_settings(tolerances, atol, stop, observe, snaps, coupled,
                                         implicit)
                _ENTRIES["flow"][model](y0, args, settings, (Y, T, S, ST, TE, U_t))
            rows = np.flatnonzero(ST == HANDOVER)
            if rows.size:
                mode = (stiff.ROSENBROCK if integrator == "implicit" and implicit
                        else stiff.SWITCHING if implicit else stiff.EXPLICIT)
                settings = stage_settings(tolerances, atol, stop, observe, snaps, mode)
                stiff.FINISH[model](rows, args, settings, (Y, T, S, ST, TE, U_t))
        elif method == "gd":
            if lr is None or not lr > 0:
                raise ValueError(f"method 'gd' needs a learning rate lr > 0, got {lr!r}")
            settings = (float(lr), float(stop.t_max), int(stop.max_steps), float(stop.gtol),
                        float(observe.escape_threshold), snaps)
            _ENTRIES["gd"][model](y0, args, settings, (Y, T, S, ST, TE, U_t))
        else:
            raise ValueError(f"method must be 'flow' or 'gd', got {method!r}")
    finally:
        numba.set_num_threads(previous)
    # Columns past the overlaps are model-specific observables: the MSE models record the loss.
    loss_t = U_t[:, :, neurons * k] if U_t.shape[2] > neurons * k else None
    return BatchResult(Y, T, S, ST.astype(np.int8), TE,
                       np.ascontiguousarray(U_t[:, :, :neurons * k]), loss_t)


def convergence_rule(loss: str, method: str = "flow") -> str:
    """In words, the rule that decides status 0 for this loss and method (stored as an
    attribute with every result)."""
    if method == "sgd":
        return CONVERGENCE_RULES[f"{loss}/sgd"]
    if loss == "mse":
        return CONVERGENCE_RULES["gd" if method == "gd" else "mse"]
    return CONVERGENCE_RULES["correlation"]
