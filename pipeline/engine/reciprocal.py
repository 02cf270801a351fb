"""Reciprocal coordinates for the waits of the MSE flow's Rosenbrock steps.

Why. A wait before an escape (or before two surplus students pair up antipodally) is an
overlap (or a Gram entry) growing from ~d^-1/2 like a pole:
``u' ~ a u^(p-1)`` with ``p >= 3`` the lowest live Hermite degree of the coupling
(``g_st`` for the overlaps ``M_ij``, ``g_ss`` for the Gram entries ``Q_il``), so
``u ~ (T - t)^(-1/m)``, ``m = p - 2``. A method of fixed order with error control relative to
``u`` needs a fixed number of steps per e-fold of ``T - t`` (Rodas5P: ~14), and there are
``~ln sqrt(d)`` of them: most of the Rosenbrock steps at ``d = 1e12``. In the coordinate
``z = sign(u) |u|^-m`` the pole is a straight line, ``z' = -m a + O(u)``, which a Rosenbrock
step crosses in a few steps whatever ``d``.

How. A step chooses its pole variables from its starting state, each a coordinate or, for a
Gram entry, the sum of two (``_pair``: student i's coordinate along student l's initial
direction and l's along i's, which share the pole's growth, so that their difference is
kept as it is): those small (``|u| <= SMALL``), well above their absolute tolerance
(``>= FLOOR`` times it), growing by at least ``GROWTH`` of themselves over the step
(``f u > 0``), within ``RATE`` of the fastest, and feeding on themselves like a pole
(``df/du >= POLE (m + 1) f / u``), where the coupling's lowest degree ``p >= 3``
(``exponents``). Only that step is taken in ``z``; its result, its error estimate and its
dense output are mapped back, so everything else (events, snapshots, the continuation check,
the next step's Jacobian) sees the original state. With ``z = phi(u)``, ``phi' = D``: the
field is ``D f``, its Jacobian ``D J D^-1 + diag(delta)`` with ``delta = -(m + 1) f / u`` on
the chosen coordinates, so the step's matrix is ``D (alpha I - J - E diag(delta) E^T)
D^-1``: the caller's factorization of ``alpha I - J`` plus a Woodbury correction of rank =
the number of pole variables (``stiff.py``; for a pair ``D`` is the 2 x 2 map to
(``phi(y_g + y_o)``, ``y_g - y_o``), ``E`` holds ``e_g + e_o`` and ``delta`` is halved).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from . import mse, woodbury
from ._jit import jit as njit

#: What :func:`allocate` returns: per chosen pole variable its coordinate ``g``, exponent ``m``,
#: ``D = phi'(u)`` and ``delta`` at the step's start, partner coordinate (-1: none) and
#: ``B^-1 E`` (rows ``X``); the step's states in ``z`` (start, end, stage argument); which
#: coordinates are taken.
Poles = namedtuple("Poles", ["g", "m", "D", "delta", "X", "z0", "zn", "zs", "partner",
                             "used"])

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
    """Scratch for :func:`select` and the step in ``z`` (:data:`Poles`) for states of ``N``
    numbers."""
    # Per pole variable, at most MAX_COUNT of them: B^-1 E is not N x N, which for the
    # full-d model (N = n d, validation) would be large.
    return Poles(np.empty(MAX_COUNT, dtype=np.int64), np.empty(MAX_COUNT),
                 np.empty(MAX_COUNT), np.empty(MAX_COUNT), np.empty((MAX_COUNT, N)),
                 np.empty(N), np.empty(N), np.empty(N), np.empty(MAX_COUNT, dtype=np.int64),
                 np.empty(N, dtype=np.bool_))


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
def _pair(i, l, K, k):
    """The coordinates of neuron ``i`` along neuron ``l``'s initial direction and of ``l``
    along ``i``'s: near the start, with each neuron still ~ its own initial direction, their
    sum is the Gram entry ``Q_il`` to leading order."""
    return i * K + k + l, l * K + k + i


@njit
def pole_part(v, g, o):
    """``a . v`` for the pole variable in coordinate ``g`` (partner ``o``): ``v_g``, plus
    ``v_o`` for a pair (``o >= 0``)."""
    return v[g] + v[o] if o >= 0 else v[g]


@njit
def _take(rec, c, g, o, m, u, f):
    sel, mp, D, delta, other, used = rec.g, rec.m, rec.D, rec.delta, rec.partner, rec.used
    sel[c] = g
    other[c] = o
    mp[c] = m
    D[c] = -m * abs(u) ** (-m - 1.0)
    # phi''(u) u' / phi'(u), halved for a pair: T^-1 (e_g + e_o) = (e_g + e_o) / (2 phi').
    delta[c] = -(m + 1.0) * f / u / (2.0 if o >= 0 else 1.0)
    used[g] = True
    if o >= 0:
        used[o] = True


@njit
def select(y, f0, h, atol, n, K, k, m_overlap, m_other, fac, rec):
    """Choose the pole variables of a step of length ``h`` from ``y`` (velocity ``f0``, ``n``
    rows of ``K`` numbers, the first ``k`` of each the overlaps, the Jacobian's structured form
    ``fac``, ``woodbury.prepare``): single coordinates, and the sums ``u = y_g + y_o`` of the
    pairs of coordinates that make up a Gram entry (``_pair``; two students about to pair up:
    the pole is in their sum, each coordinate alone starts from its own ~d^-1/2 and is not
    one). Fills ``rec`` (:func:`allocate`) at ``y``; returns how many."""
    used = rec.used
    used[:] = False
    pairs = m_other != 0.0 and K == k + n
    # The fastest relative growth among the candidates: only those within RATE of it are
    # taken (each costs a solve per step; slower ones do not limit the step).
    fastest = 0.0
    for g in range(y.size):
        if _candidate(y[g], f0[g], h, atol[g], m_overlap if g % K < k else m_other):
            fastest = max(fastest, f0[g] / y[g])
    if pairs:
        for i in range(n):
            for l in range(i + 1, n):
                g, o = _pair(i, l, K, k)
                u, f = pole_part(y, g, o), pole_part(f0, g, o)
                if _candidate(u, f, h, min(atol[g], atol[o]), m_other):
                    fastest = max(fastest, f / u)
    c = 0
    if pairs:
        for i in range(n):
            for l in range(i + 1, n):
                g, o = _pair(i, l, K, k)
                u, f = pole_part(y, g, o), pole_part(f0, g, o)
                if c == MAX_COUNT or not _candidate(u, f, h, min(atol[g], atol[o]), m_other) \
                        or f / u < RATE * fastest:
                    continue
                # df_u/du along (e_g + e_o) / 2, the direction that moves u alone.
                J_uu = 0.5 * (woodbury.entry(fac, g, g, K) + woodbury.entry(fac, o, g, K)
                              + woodbury.entry(fac, g, o, K) + woodbury.entry(fac, o, o, K))
                if _pole_like(u, f, m_other, J_uu):
                    _take(rec, c, g, o, m_other, u, f)
                    c += 1
    for g in range(y.size):
        m = m_overlap if g % K < k else m_other
        u = y[g]
        f = f0[g]
        if c == MAX_COUNT or used[g] or not _candidate(u, f, h, atol[g], m) \
                or f / u < RATE * fastest:
            continue
        if _pole_like(u, f, m, woodbury.entry(fac, g, g, K)):
            _take(rec, c, g, -1, m, u, f)
            c += 1
    return c


@njit
def _mix(b, g, o, bu):
    """A pair's sum ``bu`` into ``b[g]``, the difference ``b[g] - b[o]`` into ``b[o]``."""
    bw = b[g] - b[o]
    b[g] = bu
    b[o] = bw


@njit
def _unmix(b, g, o, bu):
    """A pair's coordinates from its sum ``bu`` and their difference, held in ``b[o]``."""
    bw = b[o]
    b[g] = 0.5 * (bu + bw)
    b[o] = 0.5 * (bu - bw)


@njit
def to_z(y, rec, cnt, z):
    """``z`` = ``y`` with each chosen pole variable ``u`` mapped to ``sign(u) |u|^-m`` (in its
    coordinate ``g``; a pair's partner coordinate ``o`` holds ``y_g - y_o``, which the pole
    leaves alone)."""
    sel, mp, other = rec.g, rec.m, rec.partner
    z[:] = y
    for c in range(cnt):
        g, o = sel[c], other[c]
        u = pole_part(y, g, o)
        zu = math.copysign(abs(u) ** -mp[c], u)
        if o >= 0:
            _mix(z, g, o, zu)
        else:
            z[g] = zu


@njit
def to_y(z, rec, cnt, y):
    """``y`` = ``z`` mapped back; False where a pole variable left its sign (``u`` passed
    through infinity: the step is too long) or is not finite."""
    sel, mp, z0, other = rec.g, rec.m, rec.z0, rec.partner
    ok = True
    y[:] = z
    for c in range(cnt):
        g, o = sel[c], other[c]
        v = z[g]
        if not (v * z0[g] > 0.0) or not math.isfinite(v):
            ok = False
            y[g] = math.inf
            continue
        u = math.copysign(abs(v) ** (-1.0 / mp[c]), v)
        if o >= 0:
            _unmix(y, g, o, u)
        else:
            y[g] = u
    return ok


@njit
def velocity(ys, fs, rec, cnt):
    """The field in ``z`` from the field ``fs`` at ``ys`` (in place)."""
    sel, mp, other = rec.g, rec.m, rec.partner
    for c in range(cnt):
        g, o = sel[c], other[c]
        fu = -mp[c] * abs(pole_part(ys, g, o)) ** (-mp[c] - 1.0) * pole_part(fs, g, o)
        if o >= 0:
            _mix(fs, g, o, fu)
        else:
            fs[g] = fu


@njit
def to_step(b, rec, cnt):
    """``b <- T^-1 b`` with ``T = dz/dy`` at the step's start (``D`` = ``phi'``)."""
    sel, D, other = rec.g, rec.D, rec.partner
    for c in range(cnt):
        g, o = sel[c], other[c]
        if o >= 0:
            _unmix(b, g, o, b[g] / D[c])
        else:
            b[g] /= D[c]


@njit
def from_step(b, rec, cnt):
    """``b <- T b``."""
    sel, D, other = rec.g, rec.D, rec.partner
    for c in range(cnt):
        g, o = sel[c], other[c]
        bu = D[c] * pole_part(b, g, o)
        if o >= 0:
            _mix(b, g, o, bu)
        else:
            b[g] = bu


@njit
def error_in_y(e, y, yn, rec, cnt):
    """The error estimate ``e`` (in ``z``) in units of ``y``, in place: a pole variable's
    divided by ``phi'`` at the larger of ``|u|`` at the step's two ends (the smaller
    ``|phi'|``: the larger error), then mapped back like the state."""
    sel, mp, other = rec.g, rec.m, rec.partner
    for c in range(cnt):
        g, o = sel[c], other[c]
        big = max(abs(pole_part(y, g, o)), abs(pole_part(yn, g, o)))
        eu = -e[g] * big ** (mp[c] + 1.0) / mp[c]  # / phi'(u), phi' < 0
        if o >= 0:
            _unmix(e, g, o, eu)
        else:
            e[g] = eu
