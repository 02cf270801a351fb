"""What the equation is: vector fields, GD maps and observables of both losses.

Two models share one calling convention so the integrators (``integrate.py``) never know
which one they advance:

``REDUCED`` (Lemma 1.1, eq. 8), state ``y = (u, r)`` of size ``k + 1``::

    a      = sum_p c_p p u^(p-1)                      (elementwise power)
    du/dt  = A a - (u.a) u
    dr/dt  = -(u.a) r                                 (r = ||w_perp||, w_perp outside span V)

``r`` is a passenger (it does not feed back into ``u``) that makes the spherical gradient
norm exact without cancellation: ``||g||^2 = du^T A^-1 du + (u.a)^2 r^2`` instead of the
cancelling ``a^T A a - (u.a)^2``, so a gradient tolerance is reachable down to the
integrator's own accuracy. (Carrying ``r`` rather than ``r^2`` matters: an absolute error
``atol`` in ``r^2`` would be an error ``sqrt(atol)`` in the gradient norm.)

``FULL``, state ``y = w`` in R^d with explicit ``V`` (d x k), for validation only::

    dw/dt = V a - (u.a) w,    u = V^T w

``MSE_REDUCED`` and ``MSE_FULL`` (the MSE loss: all n neurons of a seed are one coupled
trajectory, in exact overlap coordinates or explicitly in R^d) are implemented in ``mse.py``;
every function here hands those model ids over to it.

Every public function of a model, ``f(model, ...)``, is a ``dispatch.by_model`` function over
one implementation per model: compiled code that passes a constant model compiles that
model's implementation alone (``integrate.py``'s entry kernels do), a runtime model compiles
a branch over all of them, and a Python call runs the model's implementation.

The discrete projected GD of the paper's Figure 1, ``w <- (w + lr g) / ||w + lr g||``, is
exact in the reduced coordinates too (``gd_map``).

``args`` is the tuple ``(M, Minv, c, extra)`` (one type for every model, so the integrator
kernels compile once): for ``REDUCED`` ``M = A`` and ``Minv = A^-1``; for ``FULL`` ``M = V``
and ``Minv`` unused. ``c`` holds ``c_0..c_P``; ``extra`` (2-D) is free for models that need
more coefficients. ``work`` is scratch of ``work_size`` floats so the hot loop allocates
nothing. A trajectory may hold several neurons (``n_neurons``), each with its own overlaps
and escape event.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import jit as njit
from .dispatch import by_model
from .mse import (
    MSE_FULL,
    MSE_REDUCED,
    _trim,
    mse_gd_map,
    mse_grad_norm,
    mse_n_neurons,
    mse_observe,
    mse_overlap_norm,
    mse_overlaps,
    mse_settled,
    mse_speed,
    mse_vector_field,
    mse_work_size,
)

REDUCED = 0
FULL = 1
# MSE_REDUCED = 2 and MSE_FULL = 3 live in mse.py; every function below hands them over.
MODELS = (REDUCED, FULL, MSE_REDUCED, MSE_FULL)


@njit
def _ascent(u, c, a):
    """``a_j = sum_{p >= 1} c_p p u_j^(p-1)`` (the Euclidean ascent coefficients)."""
    P = c.size - 1
    for j in range(u.size):
        uj = u[j]
        power = 1.0  # u_j^(p-1)
        acc = 0.0
        for p in range(1, P + 1):
            cp = c[p]
            if cp != 0.0:
                acc += cp * p * power
            power *= uj
        a[j] = acc


@njit
def _one_neuron(model, args):
    return 1


@njit
def _mse_neurons(model, args):
    return mse_n_neurons(args)


@by_model({REDUCED: _one_neuron, FULL: _one_neuron, MSE_REDUCED: _mse_neurons,
           MSE_FULL: _mse_neurons})
def n_neurons(model, args):
    """Neurons per trajectory (each has its own escape event and overlap row)."""


@njit
def escapes_to_converge(model, args):
    """How many neurons must have escaped before the gradient test may declare convergence.

    Correlation loss: every neuron (a trajectory is one neuron, and it escapes). MSE: one,
    with :func:`settled` deciding about the others: surplus neurons of a coupled system may
    legitimately never reach the threshold (antipodal pairs that cancel for odd activations,
    neurons left orthogonal to everything for even ones), so waiting for all of them would
    never converge.
    """
    if model >= MSE_REDUCED:
        return 1
    return n_neurons(model, args)


@njit
def _always(model, y, args, work, threshold):
    return True


@by_model({REDUCED: _always, FULL: _always, MSE_REDUCED: mse_settled, MSE_FULL: mse_settled})
def settled(model, y, args, work, threshold):
    """Second half of the saddle guard, asked only once the gradient is below ``gtol``.

    Correlation loss: always (every neuron has escaped by then). MSE: no neuron that has
    neither escaped nor aligned with another one has growing overlaps (``mse.mse_settled``):
    after the first escape, other neurons may still sit at the initial saddle with a gradient
    ~ d^-(p*-1)/2 below ``gtol`` (h4, d = 1e6: a wrong "converged" at loss 2 instead of 0).
    """


@njit
def _correlation_size(model, args):
    return args[0].shape[1]


@njit
def _mse_size(model, args):
    return mse_n_neurons(args) * args[0].shape[1] + 1


@by_model({REDUCED: _correlation_size, FULL: _correlation_size, MSE_REDUCED: _mse_size,
           MSE_FULL: _mse_size})
def observables_size(model, args):
    """Numbers recorded per snapshot: the overlaps, then (MSE) the loss."""


@njit
def _correlation_work(model, args):
    return 4 * args[0].shape[1]


@by_model({REDUCED: _correlation_work, FULL: _correlation_work, MSE_REDUCED: mse_work_size,
           MSE_FULL: mse_work_size})
def work_size(model, args):
    """Scratch floats the model's functions need."""


@njit
def _reduced_overlaps(model, y, args, u):
    for j in range(args[0].shape[1]):
        u[j] = y[j]


@njit
def _full_overlaps(model, y, args, u):
    M = args[0]
    for j in range(M.shape[1]):
        acc = 0.0
        for i in range(M.shape[0]):
            acc += M[i, j] * y[i]
        u[j] = acc


@by_model({REDUCED: _reduced_overlaps, FULL: _full_overlaps, MSE_REDUCED: mse_overlaps,
           MSE_FULL: mse_overlaps})
def overlaps(model, y, args, u):
    """Write the overlaps ``V^T w`` of every neuron of state ``y`` into ``u`` (row-major)."""


@by_model({REDUCED: _reduced_overlaps, FULL: _full_overlaps, MSE_REDUCED: mse_observe,
           MSE_FULL: mse_observe})
def observables(model, y, args, out):
    """Write the snapshot observables of ``y`` (see :func:`observables_size`) into ``out``."""


@njit
def _correlation_overlap_norm(model, y, args, work, neuron):
    k = args[0].shape[1]
    u = work[:k]
    overlaps(model, y, args, u)
    acc = 0.0
    for j in range(k):
        acc += u[j] * u[j]
    return math.sqrt(acc)


@by_model({REDUCED: _correlation_overlap_norm, FULL: _correlation_overlap_norm,
           MSE_REDUCED: mse_overlap_norm, MSE_FULL: mse_overlap_norm})
def overlap_norm(model, y, args, work, neuron):
    """``||u||_2`` of one neuron, the escape measure."""


@njit
def _reduced_direction(y, args, work):
    """Fill ``work[k:2k] = a``, ``work[2k:3k] = du/dt``; return ``u.a``."""
    A, c = args[0], args[2]
    k = A.shape[1]
    u = y[:k]
    a = work[k:2 * k]
    du = work[2 * k:3 * k]
    _ascent(u, c, a)
    ua = 0.0
    for j in range(k):
        ua += u[j] * a[j]
    for i in range(k):
        acc = 0.0
        for j in range(k):
            acc += A[i, j] * a[j]
        du[i] = acc - ua * u[i]
    return ua


@njit
def _full_direction(y, args, work, dw):
    """Write ``dw = V a - (u.a) w`` into ``dw``; return ``u.a``."""
    V, c = args[0], args[2]
    d, k = V.shape
    u = work[:k]
    a = work[k:2 * k]
    _full_overlaps(FULL, y, args, u)
    _ascent(u, c, a)
    ua = 0.0
    for j in range(k):
        ua += u[j] * a[j]
    for i in range(d):
        acc = 0.0
        for j in range(k):
            acc += V[i, j] * a[j]
        dw[i] = acc - ua * y[i]
    return ua


@njit
def _reduced_field(model, y, args, work, dy):
    k = args[0].shape[1]
    ua = _reduced_direction(y, args, work)
    for j in range(k):
        dy[j] = work[2 * k + j]
    dy[k] = -ua * y[k]


@njit
def _full_field(model, y, args, work, dy):
    _full_direction(y, args, work, dy)


@by_model({REDUCED: _reduced_field, FULL: _full_field, MSE_REDUCED: mse_vector_field,
           MSE_FULL: mse_vector_field})
def vector_field(model, y, args, work, dy):
    """Write the gradient-flow velocity of state ``y`` into ``dy``."""


@njit
def crosses_invariant_zero(model, y, yn, args):
    """Whether the step ``y -> yn`` moved an overlap through 0 that the exact flow cannot.

    Correlation loss, reduced model: with no linear dual term (``c_1 = 0``, information
    exponent >= 2) ``du_i/dt`` is ``u_i`` times a smooth function whenever row ``i`` of the
    Gram matrix is diagonal, so ``u_i = 0`` is invariant and ``u_i`` keeps its sign. A seed
    starting at ``u < 0`` for an odd teacher approaches the saddle like ``-1/t``; once
    ``|u|`` is below the absolute tolerance an unguarded step may land at ``u > 0`` and the
    flow then "escapes" to ``u = 1`` at t ~ 1e13, a convergence the exact flow never makes.
    Other models: False (their states carry no such invariant coordinate).
    """
    if model != REDUCED:
        return False
    A, c = args[0], args[2]
    if c.size > 1 and c[1] != 0.0:
        return False
    k = A.shape[1]
    for i in range(k):
        if (y[i] > 0.0 and yn[i] <= 0.0) or (y[i] < 0.0 and yn[i] >= 0.0):
            diagonal = True
            for j in range(k):
                if j != i and A[i, j] != 0.0:
                    diagonal = False
            if diagonal:
                return True
    return False


@njit
def _ainv_quadratic(Ainv, x):
    """``x^T A^-1 x`` over the first k entries of ``x`` (>= 0: A^-1 is positive definite)."""
    k = Ainv.shape[0]
    acc = 0.0
    for i in range(k):
        row = 0.0
        for j in range(k):
            row += Ainv[i, j] * x[j]
        acc += x[i] * row
    return max(acc, 0.0)


@njit
def _sum_of_squares(x):
    acc = 0.0
    for i in range(x.size):
        acc += x[i] * x[i]
    return acc


@njit
def _reduced_grad_norm2(y, args, work, ua):
    """``||g||^2 = du^T A^-1 du + (u.a)^2 r^2`` given ``du`` in ``work[2k:3k]``."""
    k = args[1].shape[0]
    return _ainv_quadratic(args[1], work[2 * k:3 * k]) + (ua * y[k]) ** 2


@njit
def _reduced_grad_norm(model, y, args, work):
    ua = _reduced_direction(y, args, work)
    return math.sqrt(_reduced_grad_norm2(y, args, work, ua))


@njit
def _full_grad_norm(model, y, args, work):
    dw = np.empty(y.size)
    _full_direction(y, args, work, dw)
    return math.sqrt(_sum_of_squares(dw))


@by_model({REDUCED: _reduced_grad_norm, FULL: _full_grad_norm, MSE_REDUCED: mse_grad_norm,
           MSE_FULL: mse_grad_norm})
def grad_norm(model, y, args, work):
    """Norm of the spherical gradient ``(I - w w^T) grad L`` in R^d (all neurons together)."""


@njit
def _reduced_speed(model, y, dy, args, work):
    k = args[1].shape[0]
    return math.sqrt(_ainv_quadratic(args[1], dy) + dy[k] * dy[k])


@njit
def _full_speed(model, y, dy, args, work):
    return math.sqrt(_sum_of_squares(dy))


@njit
def _mse_speed(model, y, dy, args, work):
    return mse_speed(model, y, dy, args)


@by_model({REDUCED: _reduced_speed, FULL: _full_speed, MSE_REDUCED: _mse_speed,
           MSE_FULL: _mse_speed})
def grad_norm_given(model, y, dy, args, work):
    """:func:`grad_norm` at ``y`` when its velocity ``dy`` is already known.

    Every model reads the norm off ``dy`` (no field evaluation: DOPRI5's first stage is the
    velocity at the current state). Reduced correlation: ``dy = (du, -(u.a) r)`` and
    ``||g||^2 = du^T A^-1 du + ((u.a) r)^2``; full: ``||g|| = ||dw/dt||``.
    """


@njit
def _reduced_gd_map(model, y, args, lr, work, out):
    k = args[0].shape[1]
    ua = _reduced_direction(y, args, work)
    g2 = _reduced_grad_norm2(y, args, work, ua)
    # ||w + lr g||^2 = 1 + lr^2 ||g||^2 since g is tangent to the sphere at w.
    norm = math.sqrt(1.0 + lr * lr * g2)
    for j in range(k):
        out[j] = (y[j] + lr * work[2 * k + j]) / norm
    # w_perp is scaled by (1 - lr u.a) / norm; r stays a norm, hence the abs.
    out[k] = y[k] * abs(1.0 - lr * ua) / norm


@njit
def _full_gd_map(model, y, args, lr, work, out):
    d = y.size
    _full_direction(y, args, work, out)
    acc = 0.0
    for i in range(d):
        out[i] = y[i] + lr * out[i]
        acc += out[i] * out[i]
    norm = math.sqrt(acc)
    for i in range(d):
        out[i] /= norm


@by_model({REDUCED: _reduced_gd_map, FULL: _full_gd_map, MSE_REDUCED: mse_gd_map,
           MSE_FULL: mse_gd_map})
def gd_map(model, y, args, lr, work, out):
    """One step of projected GD, ``w <- (w + lr g) / ||w + lr g||``, exact in either model."""


def reduced_args(gram: np.ndarray, c: np.ndarray) -> tuple:
    """Kernel arguments of the reduced model for Gram ``A`` and dual coefficients ``c``."""
    A = np.ascontiguousarray(gram, dtype=np.float64)
    return (A, np.ascontiguousarray(np.linalg.inv(A)), _trim(c), np.zeros((1, 1)))


def full_args(V: np.ndarray, c: np.ndarray) -> tuple:
    """Kernel arguments of the full-d model for an explicit frame ``V`` (d x k)."""
    return (np.ascontiguousarray(V, dtype=np.float64), np.zeros((1, 1)), _trim(c),
            np.zeros((1, 1)))
