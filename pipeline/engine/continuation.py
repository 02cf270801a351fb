"""The convergence rule of coupled (MSE) trajectories, and the constants of its stage.

The stage that applies it (and takes the stiff phases) is ``stiff.py``; this module holds the
rule, its tolerances, the round-off scale of the field and a difference Jacobian (the full-d
model's; the reduced model's is in closed form, ``stiff.reduced_jacobian``).

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
2. continue the flow to ``t >= VERIFY_FACTOR t_c`` (cheap with Rosenbrock steps: the state
   is at rest up to slow modes); the candidate is confirmed when the candidate test still
   holds there, the loss has changed by at most ``VERIFY_LOSS_TOL`` and no overlap ``M_ij``
   or Gram entry ``Q_il`` by more than ``VERIFY_OVERLAP_TOL``, and none above ``VERIFY_FLOOR``
   grew in magnitude by more than ``VERIFY_GROWTH`` (relative). The trajectory then ends at the
   end of the window with status 0;
3. otherwise the state moved: the window restarts from the current time (a slowly relaxing
   configuration, e.g. surplus neurons decaying towards orthogonality like t^-1/2, is accepted
   once a whole window moves it by less than the tolerances). It also restarts where a
   component above the floor grew by less than ``VERIFY_GROWTH`` but by more than
   ``VERIFY_POLE_NOISE``, and the pole that this growth implies (:func:`blow_up_time`) blows
   up before ``t_max`` (or up to ``VERIFY_POLE_MARGIN`` times as far beyond the window): the
   window sees a pole only up to ~1000 ``t_c`` ahead, ``t_max`` may lie much further. A
   smaller growth is extrapolated the same way where it exceeds ``VERIFY_NOISE_ERRORS`` times
   what the window's integration errors could explain and holds up over the window (a sample
   at its geometric middle: :func:`steady_growth`), which a component settling does not; or
   where the window's second half alone grew by more than ``VERIFY_LATE_ERRORS`` times that
   half's integration errors and held up over it (a sample at three quarters,
   ``WINDOW_SAMPLES``): a slow drift under a component that settles in the first half;
4. a window that cannot finish before ``t_max`` or ``max_steps`` ends with status 1 or 2,
   never 0.

The loss is non-increasing along the flow, so the endpoints of a window bound its change
everywhere inside it.
"""

from __future__ import annotations

import math

import numpy as np

from . import mse
from ._jit import jit as njit
from .dynamics import vector_field

#: The window of the continuation check is ``[t_c, VERIFY_FACTOR t_c]``.
VERIFY_FACTOR = 10.0
#: Largest change of the loss a window may show for a confirmed convergence.
VERIFY_LOSS_TOL = 1e-7
#: Largest change of any overlap ``M_ij`` or Gram entry ``Q_il`` within a confirmed window.
VERIFY_OVERLAP_TOL = 1e-5
#: ... and no overlap above ``VERIFY_FLOOR`` may have grown in magnitude by more than the
#: factor ``1 + VERIFY_GROWTH``: at d = 1e12 the components that start an escape are ~1e-6,
#: below any absolute tolerance, and grow slowly at first. A component that blows up at T*
#: (du/dt ~ c u^(p-1): u ~ (T* - t)^(-1/(p-2)), or e^(lambda t) for p = 2 with escape at
#: T* ~ 10 / lambda) grows over the window [t_c, 10 t_c] by a relative 9 t_c / ((p-2) T*)
#: (p >= 3) or 90 t_c / T* (p = 2): at least 0.45% for every T* <= 1000 t_c = 100 t_stop
#: (p <= 4). 5% let an escape at T* ~ 200 t_c through: h3, n = 3, d = 1e6 and 1e9 stopped
#: at loss 0.55 and 1.0 (status 0) with an overlap ~1e-4 growing 4% per window; the flow
#: went on to loss 0.37 within 30 t_stop.
VERIFY_GROWTH = 0.004
#: A growth below ``VERIFY_GROWTH`` but above this (relative, over a window) is extrapolated
#: to its blow-up (:func:`blow_up_time`); the window restarts if that comes before ``t_max``.
#: h4, k = 2, n = 3, d = 1e9, seed 6 stopped at loss 0.5696 (t = 5.3e14) while two overlaps
#: ~3e-5 grew by 0.28 % per window, a pole blowing up at ~8.5e16 (the flow went on to loss
#: 0.5693 there). Below 1e-4 the apparent growth of a small component may be integration
#: error (its absolute tolerance over its size), or a component settling: see
#: ``VERIFY_NOISE_ERRORS`` for what is still extrapolated there.
VERIFY_POLE_NOISE = 1e-4
#: A growth below ``VERIFY_POLE_NOISE`` is extrapolated too where it is real and steady: more
#: than this many times what the window's integration errors could have moved the component
#: (the sum of its accepted steps' error estimates, and their round-off), and still at least
#: ``VERIFY_RATE_HOLD`` of its first half's rate in the window's second half
#: (:func:`steady_growth`). A slow instability grows at a constant or rising rate; components
#: settling into a rest point (h3, n = 10, d = 1e3, loss 0: Gram entries ~0.01-0.8 growing
#: by 1e-7..5e-5 per window) do all of it in the first half (second half / first ~1e-5 of
#: what a constant rate gives). Mixed teacher {3: 1, 4: 0.5}, k = 2: n = 3, d = 1e12, seed 2,
#: two overlaps ~4.1e-9 at a saddle (loss 0.699) grew by 9.9e-5 per window at a constant
#: rate; it stopped there with status 0 at t = 3.9e11 and left at ~3e15 for loss 0.502,
#: before t_max = 1e16 (the pole extrapolation gives 3.9e15). n = 4, d = 1e6, seed 12: an
#: antipodal pair (loss 1.0) whose overlaps ~3e-4 grew by 1.2e-10 per window, far below
#: their tolerance (rtol |x| ~ 3e-12) but 280 times their steps' error estimates, and steadily;
#: the pair broke up at ~1e12 (loss 0.823). At 3 (not 10) seed 13 of that point (a pair whose
#: overlaps grew 4.3 times their error estimates) and seed 8 at d = 1e9 go on too; the issue's
#: grid and the wider ones tried (h3, h4, mixed, relu, tanh; n = 2..10) keep their statuses.
VERIFY_NOISE_ERRORS = 3.0
VERIFY_RATE_HOLD = 0.5
#: Where the window is sampled inside, as fractions of its length in log time: the middle
#: (does a growth hold up over the second half?) and the middle of the second half (does a
#: growth seen in the second half alone hold up?). The second test catches a slow drift
#: under a component still settling. h4, k = 2, n = 3, d = 1e3, seed 5: confirmed at
#: t = 4.2e3 (loss 0.5696) while two overlaps ~9.7e-4 settled by 6.6e-11 in the window's
#: first half and then drifted by 1.9e-11 in the second (3e4 times that half's error
#: estimates) at a constant rate; the first-half rate hid it, and the flow left at ~5e10
#: (loss 0.5693), before t_max = 1e12.
WINDOW_SAMPLES = np.array([0.5, 0.75])
#: ... where the second half's growth exceeds this many times that half's error estimates
#: (the window's sum from the step that crossed the middle sample on), not
#: ``VERIFY_NOISE_ERRORS``: without the first half's settling to compare with, the quarters'
#: steadiness is a weaker test. Measured on confirmed windows, h3, n = 10, d = 1e3, 8 seeds
#: (rest points, loss 0): second-half growths of 3 to 3,250 times the estimates, those that
#: held up over the quarters at most 23 times; the drifts that left before t_max, 300
#: (mixed teacher, n = 10, d = 1e9, seed 6: four antipodal pairs confirmed at loss 4.0 at
#: t = 1e10 that break up by ~1e15) to 3e4 (h4, n = 3, d = 1e3, seeds 5, 9, 10) times.
VERIFY_LATE_ERRORS = 100.0
#: The extrapolated blow-up counts as before ``t_max`` up to this factor late (in time after
#: the window): the pole law holds for one component alone, and the ones that drive it grow
#: too, so the true escape comes earlier. Measured: h4, n = 3, d = 1e6, seed 0 (confirmed at
#: t = 7.1e10, overlaps ~5e-5 growing 3e-6 per window): extrapolated 1.07e16, left at
#: 8-9e15; mixed teacher, n = 3, d = 1e12, seed 2: 3.9e15 against ~3e15.
VERIFY_POLE_MARGIN = 2.0
#: The floor is at most ``VERIFY_FLOOR_FRACTION d^-1/2`` (:func:`verify_floor`): the
#: components that start a late rearrangement sit well below the initial overlaps' scale.
#: With 1e-7 at every d, h3, k = 3, n = 4, d = 1e12 stopped (status 0, loss 0.37) while the
#: v_2 components of three neurons, ~3e-8, grew by ~30% per window; the flow left 4x later.
#: With 0.01 d^-1/2 (1e-8 at d = 1e12), seed 3 of the same point stopped at loss 0.37 while
#: three components ~2e-9 grew by 1.4 % per window (the flow left 16x later, to 0.29). At
#: 0.001 d^-1/2 the floor is still 1e5 times the overlaps' absolute tolerance (rtol d^-1/2),
#: so a window's relative integration error there stays below ~1e-4 (VERIFY_POLE_NOISE).
VERIFY_FLOOR = 1e-7
VERIFY_FLOOR_FRACTION = 0.001
#: Round-off floor of the absolute tolerance in units of ``eps * h`` times the row's ``row_scales``.
ROUNDOFF_SAFETY = 10.0
EPS = float(np.finfo(float).eps)
#: Largest state that takes Rosenbrock steps (they factorize a dense Jacobian of this size).
IMPLICIT_MAX_SIZE = 1000

CONVERGENCE_RULES = {
    "correlation": "spherical gradient norm < gtol after the neuron escaped "
                   "(||u||_2 >= escape_threshold)",
    "mse": (f"continuation check: gradient norm < gtol after the first escape with no "
            f"growing overlap of an unescaped neuron and min(n, k) index vectors learned "
            f"(j with |(A^-1 M)_ij| >= escape_threshold for some neuron i) at t_c, confirmed by "
            f"continuing the flow "
            f"to {VERIFY_FACTOR:g} t_c with loss change <= {VERIFY_LOSS_TOL:g} and every "
            f"overlap M and Gram entry Q changing by <= {VERIFY_OVERLAP_TOL:g} and none above "
            f"min({VERIFY_FLOOR:g}, {VERIFY_FLOOR_FRACTION:g} d^-1/2) growing in magnitude by > "
            f"{100 * VERIFY_GROWTH:g}%, nor by > {100 * VERIFY_POLE_NOISE:g}% (or by > "
            f"{VERIFY_NOISE_ERRORS:g}x the window's summed step error estimates, at a "
            f"second-half rate >= {VERIFY_RATE_HOLD:g} of the first half's; or in the second "
            f"half alone by > {VERIFY_LATE_ERRORS:g}x that half's error estimates, at a last-"
            f"quarter rate >= {VERIFY_RATE_HOLD:g} of the third quarter's) like a pole "
            f"(|x| ~ (T - t)^(-1/(p-2)), exponential for p <= 2) that blows up before "
            f"t + {VERIFY_POLE_MARGIN:g} (t_max - t); "
            f"the stop is "
            f"at the end of that window (status 1/2 if t_max/max_steps comes first)"),
    "gd": "gradient norm < gtol after the first escape, with no growing overlap of an "
          "unescaped neuron and min(n, k) index vectors learned (no continuation check)",
    "correlation/sgd": "population spherical gradient norm < gtol while the neuron is beyond "
                       "escape_threshold (a chain that escaped and then returned goes on)",
    "mse/sgd": "never: the coupled SGD chain runs to its sample budget (status 1)",
}


@njit
def blow_up_time(x0, x1, t0, t1, m):
    """When a component that went from ``x0`` at ``t0`` to ``x1`` at ``t1`` blows up, read as
    a pole ``|x| ~ (T - t)^(-1/m)`` (``m = p - 2`` of its coupling, ``reciprocal.exponents``)
    or, for ``m = 0``, as exponential growth reaching 1: ``inf`` if it does not grow."""
    a0, a1 = abs(x0), abs(x1)
    if not (a1 > a0 > 0.0):
        return math.inf
    if m > 0.0:
        r = (a1 / a0) ** m
        return (r * t1 - t0) / (r - 1.0)
    rate = math.log(a1 / a0) / (t1 - t0)
    return t1 + max(-math.log(a1), 0.0) / rate


@njit
def steady_growth(x0, xm, x1, t0, tm, t1):
    """Whether ``|x|`` (``x0`` at ``t0``, ``xm`` at ``tm``, ``x1`` at ``t1``) grew over both
    halves of the window, in the second at least ``VERIFY_RATE_HOLD`` of the rate (per unit
    time, of ``log |x|``) of the first: an instability, not a component settling."""
    a0, am, a1 = abs(x0), abs(xm), abs(x1)
    if not (a1 > am > a0 > 0.0 and t1 > tm > t0):
        return False
    return math.log(a1 / am) / (t1 - tm) >= VERIFY_RATE_HOLD * math.log(am / a0) / (tm - t0)


def verify_floor(d: float) -> float:
    """The overlap size below which the continuation check does not test growth, at
    dimension ``d``: ``min(VERIFY_FLOOR, VERIFY_FLOOR_FRACTION / sqrt(d))`` (1e-7 up to
    d = 1e8, 1e-9 at d = 1e12)."""
    return min(VERIFY_FLOOR, VERIFY_FLOOR_FRACTION / math.sqrt(d))


@njit
def field(model, y, args, work):
    """The velocity of ``y`` as a new array."""
    dy = np.empty(y.size)
    vector_field(model, y, args, work, dy)
    return dy


@njit
def jacobian(model, y, args, work):
    """Forward-difference Jacobian of the vector field (``MSE_FULL``'s, at small d only: its
    ~sqrt(eps) relative error is far below the tolerances there)."""
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
def row_scales(model, y, args, work, out):
    """Per neuron ``i``, the size of the largest terms that cancel in the velocity of its row
    of the state (that row's round-off is ~ eps times ``out[i]``); returns the largest.
    ``work`` must hold the field's data at ``y`` (the velocity at ``y`` was the last field
    evaluated with it).

    Row ``i``'s velocity is ``2 (A a_i - sum_l C_il xi_l)``; ``C_ii = s_i`` is itself a sum
    ``M_i . a_i - sum_l B_il Q_il`` whose terms may cancel, and ``B_il = g_ss'(Q_il)`` carries
    ``Q_il``'s round-off times ``g_ss''``. So, with ``y_max = max |y|``::

        out[i] = 2 ((sum_{l != i} |B_il| (1 + |Q_il|) + |g_ss''(Q_il)|
                     + sum_j |M_ij a_ij|) y_max + k max_j |a_ij|)

    Why per row: a neuron still at the saddle (overlaps ~ d^-1/2) has a velocity, and a
    round-off, orders of magnitude below those of the converged neurons, whose cancelling
    O(1) terms set one global scale; a round-off floor of the absolute tolerance from that
    global scale let the slow overlaps drift by ~1e-5 of themselves per long Rosenbrock step
    (escape times ~1e-3 late at d = 1e12, h3, n = 10).
    """
    n = mse.mse_n_neurons(args)
    k = args[0].shape[1]
    extra = args[3]
    dss = extra[mse._ROW_DSS]
    Lss = int(extra[mse._ROW_META, mse._META_LDSS])
    oa, oQ, oC, _, _, _ = mse._layout(model, args)
    y_max = 0.0
    for x in range(y.size):
        y_max = max(y_max, abs(y[x]))
    top = 0.0
    for i in range(n):
        terms = 0.0
        a_max = 0.0
        for j in range(k):
            a_ij = work[oa + i * k + j]
            a_max = max(a_max, abs(a_ij))
            terms += abs(mse.overlap_entry(model, y, args, work, i, j) * a_ij)
        for l in range(n):
            if l == i:
                continue
            q = work[oQ + min(i, l) * n + max(i, l)]
            terms += abs(work[oC + i * n + l]) * (1.0 + abs(q)) + abs(mse._dpoly(dss, Lss, q))
        out[i] = 2.0 * (terms * y_max + a_max * k)
        top = max(top, out[i])
    return top
