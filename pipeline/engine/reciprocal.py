"""Reciprocal coordinates for the waits of the MSE flow's Rosenbrock steps.

Why. A wait before an escape (or before two surplus neurons pair up) is an overlap, or a
neuron's coordinate along another neuron, growing from ~d^-1/2 like a pole:
``u' ~ a u^(p-1)`` with ``p >= 3`` the lowest live Hermite degree of the coupling
(``g_st`` for the overlaps ``M_ij``, ``g_ss`` for the other coordinates), so
``u ~ (T - t)^(-1/m)``, ``m = p - 2``. A method of fixed order with error control relative to
``u`` needs a fixed number of steps per e-fold of ``T - t`` (Rodas5P: ~14), and there are
``~ln sqrt(d)`` of them: most of the Rosenbrock steps at ``d = 1e12``. In the coordinate
``z = sign(u) |u|^-m`` the pole is a straight line, ``z' = -m a + O(u)``, which a Rosenbrock
step crosses in a few steps whatever ``d``.

How. A step chooses its coordinates from its starting state: those small (``|u| <=``
``SMALL``), well above their absolute tolerance (``>= FLOOR`` times it), growing by at
least ``GROWTH`` of themselves over the step (``f u > 0``), within ``RATE`` of the fastest,
and feeding on themselves like a pole (``df/du >= POLE (m + 1) f / u``), where the
coupling's lowest degree ``p >= 3`` (``exponents``). Only that step is taken in ``z``; its
result, its error estimate and its dense output are mapped back, so everything else (events,
snapshots, the continuation check, the next step's Jacobian) sees the original state. With
``z = phi(u)``, ``phi' = D``: the field is ``D f``, its Jacobian ``D J D^-1 + diag(delta)`` with
``delta = -(m + 1) f / u`` on the chosen coordinates, so the step's matrix is
``D (alpha I - J - E diag(delta) E^T) D^-1``: the caller's factorization of ``alpha I - J``
plus a Woodbury correction of rank = the number of chosen coordinates (``stiff.py``).
"""

from __future__ import annotations

import math

import numpy as np

from . import mse, woodbury
from ._jit import jit as njit

#: Largest |u| taken in reciprocal coordinates (overlaps and coordinates are O(1) at most: the
#: pole is over by then and the map no longer gains).
SMALL = 0.05
#: Smallest |u| taken, in units of its absolute tolerance (below it u is noise).
FLOOR = 10.0
#: Smallest growth over the step, f h / u, for which the map is worth its correction.
GROWTH = 1e-2
#: Only candidates growing at least this fraction of the fastest one's relative rate.
RATE = 0.1
#: A candidate's ``df/du`` must be at least this fraction of a pole's (``_pole_like``).
POLE = 0.3
#: At most this many per step.
MAX_COUNT = 8


@njit
def _lowest(c, L):
    """Index of the lowest nonzero entry of ``c[:L]`` (``L`` if none)."""
    for q in range(L):
        if c[q] != 0.0:
            return q
    return L


@njit
def exponents(args):
    """``(m_overlap, m_other)``: the pole exponents ``m = p - 2`` of the reduced MSE model's
    overlaps (``g_st``) and other coordinates (``g_ss``), 0 where the lowest live degree
    ``p`` of that coupling is below 3 (no pole: the growth is at most exponential)."""
    extra = args[3]
    # The rows hold the derivatives' coefficients, (q + 1) c_{q+1}: degree p sits at q = p - 1.
    p_st = _lowest(extra[mse._ROW_DST], int(extra[mse._ROW_META, mse._META_LDST])) + 1
    p_ss = _lowest(extra[mse._ROW_DSS], int(extra[mse._ROW_META, mse._META_LDSS])) + 1
    return (float(p_st - 2) if p_st >= 3 else 0.0, float(p_ss - 2) if p_ss >= 3 else 0.0)


@njit
def allocate(N):
    """Scratch for :func:`select` and the step in ``z``: the chosen indices, their exponents,
    ``D``, ``delta``, ``B^-1 E`` (rows), and the states ``z0``, ``zn``, ``zs`` (step start,
    end, stage argument)."""
    return (np.empty(N, dtype=np.int64), np.empty(N), np.empty(N), np.empty(N),
            np.empty((N, N)), np.empty(N), np.empty(N), np.empty(N))


@njit
def _candidate(u, f, h, atol, m):
    """Whether ``u`` (velocity ``f``) qualifies for a step of length ``h``."""
    au = abs(u)
    return m != 0.0 and FLOOR * atol <= au <= SMALL and u * f > 0.0 and (f / u) * h >= GROWTH


@njit
def _pole_like(u, f, m, J_uu):
    """Whether the growth of ``u`` feeds on ``u`` itself like a pole's: ``df/du`` at least
    ``POLE`` of a pole's ``(m + 1) f / u``. Growth forced by other coordinates (``df/du``
    ~ 0, e.g. a neuron's coordinate pushed by another's escape) is linear in ``u`` and
    ``1 / u`` of it is not: a step of it in ``z`` went through infinity."""
    return J_uu >= POLE * (m + 1.0) * f / u


@njit
def select(y, f0, h, atol, K, k, m_overlap, m_other, fac, rec):
    """Choose the coordinates of a step of length ``h`` from ``y`` (velocity ``f0``, rows of
    ``K`` numbers, the first ``k`` of each the overlaps, the Jacobian's structured form
    ``fac``, ``woodbury.prepare``); fills ``rec``'s indices, exponents, ``D`` and ``delta``
    at ``y``. Returns how many."""
    sel, mp, D, delta = rec[0], rec[1], rec[2], rec[3]
    # The fastest relative growth among the candidates: only those within RATE of it are
    # taken (each costs a solve per step; slower ones do not limit the step).
    fastest = 0.0
    for g in range(y.size):
        if _candidate(y[g], f0[g], h, atol[g], m_overlap if g % K < k else m_other):
            fastest = max(fastest, f0[g] / y[g])
    c = 0
    for g in range(y.size):
        m = m_overlap if g % K < k else m_other
        u = y[g]
        f = f0[g]
        if not _candidate(u, f, h, atol[g], m) or f / u < RATE * fastest or c == MAX_COUNT:
            continue
        if not _pole_like(u, f, m, woodbury.diagonal(fac, g, K)):
            continue
        au = abs(u)
        sel[c] = g
        mp[c] = m
        D[c] = -m * au ** (-m - 1.0)
        delta[c] = -(m + 1.0) * f / u
        c += 1
    return c


@njit
def to_z(y, rec, cnt, z):
    """``z`` = ``y`` with the chosen coordinates mapped to ``sign(u) |u|^-m``."""
    sel, mp = rec[0], rec[1]
    z[:] = y
    for c in range(cnt):
        u = y[sel[c]]
        z[sel[c]] = math.copysign(abs(u) ** -mp[c], u)


@njit
def to_y(z, rec, cnt, y):
    """``y`` = ``z`` mapped back; False where a chosen coordinate left its sign (``u`` passed
    through infinity: the step is too long) or is not finite."""
    sel, mp, z0 = rec[0], rec[1], rec[5]
    ok = True
    y[:] = z
    for c in range(cnt):
        g = sel[c]
        v = z[g]
        if not (v * z0[g] > 0.0) or not math.isfinite(v):
            ok = False
            y[g] = math.inf
        else:
            y[g] = math.copysign(abs(v) ** (-1.0 / mp[c]), v)
    return ok


@njit
def velocity(ys, fs, rec, cnt):
    """The field in ``z`` from the field ``fs`` at ``ys`` (in place): ``D(u) f`` on the chosen
    coordinates."""
    sel, mp = rec[0], rec[1]
    for c in range(cnt):
        g = sel[c]
        fs[g] *= -mp[c] * abs(ys[g]) ** (-mp[c] - 1.0)


@njit
def error_in_y(e, y, yn, rec, cnt):
    """The error estimate ``e`` (in ``z``) in units of ``y``, in place: divided by ``D`` at the
    larger of ``|u|`` at the step's two ends (the smaller ``|D|``: the larger error)."""
    sel, mp = rec[0], rec[1]
    for c in range(cnt):
        g = sel[c]
        big = max(abs(y[g]), abs(yn[g]))
        e[g] *= big ** (mp[c] + 1.0) / mp[c]
