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

How. A step chooses its pole variables from its starting state, each a linear function
``u = w . y`` of a few coordinates: one coordinate; for a Gram entry, the sum of two
(``_pair``: student i's coordinate along student l's initial direction and l's along i's,
which share the pole's growth); or, where neither kind is pole-like, a direction across all
the fastest-growing coordinates, weighted by their velocity (``_direction``: e.g. a student
turning towards an antipodal pair's axis, with the pair's members slaved to it), with its own
exponent read off its growth. Candidates are small (``|u| <= SMALL``), well above their
absolute tolerance (``>= FLOOR`` times it), growing by at least ``GROWTH`` of themselves
over the step (``f u > 0``), within ``RATE`` of the fastest, and feeding on themselves like
a pole (``df/du >= POLE (m + 1) f / u`` along ``w``), where the coupling's lowest degree
``p >= 3`` (``exponents``). Only that step is taken in ``z``; its result, its error
estimate and its dense output are mapped back, so everything else (events, snapshots, the
continuation check, the next step's Jacobian) sees the original state. The map is linear
before ``phi``: ``u`` goes to the support's first coordinate ``g``, the rest of the support
keeps the component across ``w`` (``y_j - w_j u / |w|^2``, a pair's half difference), which
the pole leaves alone. With ``z = phi(u)``, ``phi' = D``: the field's Jacobian in ``z`` is the
conjugate of ``J`` plus ``diag(delta)``, ``delta = -(m + 1) f / u`` on ``g``, so the step's
matrix is ``T (alpha I - J - w diag(delta / |w|^2) w^T) T^-1`` (``T = dz/dy``): the
caller's factorization of ``alpha I - J`` plus a Woodbury correction of rank = the number of
pole variables (``stiff.py``).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from . import mse, woodbury
from ._jit import jit as njit

#: What :func:`allocate` returns: per chosen pole variable its coordinate ``g`` (where ``z``
#: holds it), exponent ``m``, ``D = phi'(u)`` and ``delta`` at the step's start, its kind
#: (``SINGLE``, ``PAIR``, ``DIRECTION``), the ``ns`` coordinates ``sup`` of its direction ``w``
#: (``g`` first) with their weights and ``nw = |w|^2``, and ``B^-1 w`` (rows ``X``); the step's
#: states in ``z`` (start, end, stage argument); which coordinates are taken.
Poles = namedtuple("Poles", ["g", "m", "D", "delta", "X", "z0", "zn", "zs", "kind", "ns",
                             "sup", "w", "nw", "used"])

#: Kinds of pole variable: one coordinate, the sum of a pair's two (``_pair``), a direction
#: of several (``_direction``).
SINGLE, PAIR, DIRECTION = 0, 1, 2

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
#: At most this many coordinates in a direction's support.
MAX_SUPPORT = 32
#: Largest pole exponent a direction takes from its own growth (``_direction``).
MAX_EXPONENT = 4.0


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
    # Per pole variable, at most MAX_COUNT of them: B^-1 w is not N x N, which for the
    # full-d model (N = n d, validation) would be large.
    return Poles(np.empty(MAX_COUNT, dtype=np.int64), np.empty(MAX_COUNT),
                 np.empty(MAX_COUNT), np.empty(MAX_COUNT), np.empty((MAX_COUNT, N)),
                 np.empty(N), np.empty(N), np.empty(N), np.empty(MAX_COUNT, dtype=np.int64),
                 np.empty(MAX_COUNT, dtype=np.int64),
                 np.empty((MAX_COUNT, MAX_SUPPORT), dtype=np.int64),
                 np.empty((MAX_COUNT, MAX_SUPPORT)), np.empty(MAX_COUNT),
                 np.empty(N, dtype=np.bool_))


@njit
def _candidate(u, f, h, atol, m):
    """Whether ``u`` (velocity ``f``) qualifies for a step of length ``h``."""
    au = abs(u)
    return m != 0.0 and FLOOR * atol <= au <= SMALL and u * f > 0.0 and (f / u) * h >= GROWTH


@njit
def _growing(y, f0, g, h, atol, K, k, m_overlap, m_other, fastest):
    """Coordinate ``g``'s pole exponent (``m_overlap`` for an overlap, ``m_other`` else) if
    it qualifies (:func:`_candidate`) and grows within ``RATE`` of the ``fastest``; else 0."""
    m = m_overlap if g % K < k else m_other
    if _candidate(y[g], f0[g], h, atol[g], m) and f0[g] / y[g] >= RATE * fastest:
        return m
    return 0.0


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
def pole_part(v, rec, c):
    """``u = w . v`` for the pole variable ``c`` (``v_g`` for a single coordinate,
    ``v_g + v_o`` for a pair)."""
    sup, w = rec.sup[c], rec.w[c]
    acc = 0.0
    for s in range(rec.ns[c]):
        acc += w[s] * v[sup[s]]
    return acc


@njit
def _split(b, rec, c):
    """``b <- L b`` on pole ``c``'s coordinates; returns ``u = w . b``, which the caller puts
    (mapped) into ``b[g]``. ``L`` keeps the component of ``b`` across ``w``: each other
    coordinate ``j`` of the support takes ``b_j - w_j u / |w|^2`` (a pair: half the
    difference), which the pole leaves alone."""
    sup, w = rec.sup[c], rec.w[c]
    u = pole_part(b, rec, c)
    r = u / rec.nw[c]
    for s in range(1, rec.ns[c]):
        b[sup[s]] -= w[s] * r
    return u


@njit
def _join(b, rec, c, u):
    """``b <- L^-1 b`` on pole ``c``'s coordinates, with ``u`` in place of ``b[g]``: the
    support's coordinates from ``u`` and the component across ``w`` (:func:`_split`)."""
    sup, w = rec.sup[c], rec.w[c]
    r = u / rec.nw[c]
    acc = 0.0
    for s in range(1, rec.ns[c]):
        acc += w[s] * b[sup[s]]
    for s in range(1, rec.ns[c]):
        b[sup[s]] += w[s] * r
    b[sup[0]] = -acc / w[0] + w[0] * r


@njit
def _take(rec, c, kind, m, u, f):
    """Pole variable ``c`` (its support and weights already in ``rec``) at ``u`` growing at
    ``f``."""
    rec.kind[c] = kind
    rec.g[c] = rec.sup[c, 0]
    rec.m[c] = m
    nw = 0.0
    for s in range(rec.ns[c]):
        nw += rec.w[c, s] * rec.w[c, s]
        rec.used[rec.sup[c, s]] = True
    rec.nw[c] = nw
    rec.D[c] = -m * abs(u) ** (-m - 1.0)
    # phi''(u) u' / phi'(u) over |w|^2: T^-1 w = w / (|w|^2 phi') (a pair: halved).
    rec.delta[c] = -(m + 1.0) * f / u / nw


@njit
def select(y, f0, h, atol, n, K, k, m_overlap, m_other, fac, rec):
    """Choose the pole variables of a step of length ``h`` from ``y`` (velocity ``f0``, ``n``
    rows of ``K`` numbers, the first ``k`` of each the overlaps, the Jacobian's structured form
    ``fac``, ``woodbury.prepare``): single coordinates, the sums ``u = y_g + y_o`` of the
    pairs of coordinates that make up a Gram entry (``_pair``; two students about to pair up:
    the pole is in their sum, each coordinate alone starts from its own ~d^-1/2 and is not
    one), and where neither kind is pole-like, one direction across the growing coordinates
    (:func:`_direction`). Fills ``rec`` (:func:`allocate`) at ``y``; returns how many."""
    used = rec.used
    used[:] = False
    pairs = m_other != 0.0 and K == k + n
    # The fastest relative growth among the candidates: only those within RATE of it are
    # taken (each costs a solve per step; slower ones do not limit the step).
    fastest = 0.0
    m_fastest = 0.0
    for g in range(y.size):
        m = m_overlap if g % K < k else m_other
        if _candidate(y[g], f0[g], h, atol[g], m) and f0[g] / y[g] > fastest:
            fastest = f0[g] / y[g]
            m_fastest = m
    if pairs:
        for i in range(n):
            for l in range(i + 1, n):
                g, o = _pair(i, l, K, k)
                u, f = y[g] + y[o], f0[g] + f0[o]
                if _candidate(u, f, h, min(atol[g], atol[o]), m_other):
                    fastest = max(fastest, f / u)
    c = 0
    if pairs:
        for i in range(n):
            for l in range(i + 1, n):
                g, o = _pair(i, l, K, k)
                u, f = y[g] + y[o], f0[g] + f0[o]
                if c == MAX_COUNT or not _candidate(u, f, h, min(atol[g], atol[o]), m_other) \
                        or f / u < RATE * fastest:
                    continue
                # df_u/du along (e_g + e_o) / 2, the direction that moves u alone.
                J_uu = 0.5 * (woodbury.entry(fac, g, g, K) + woodbury.entry(fac, o, g, K)
                              + woodbury.entry(fac, g, o, K) + woodbury.entry(fac, o, o, K))
                if _pole_like(u, f, m_other, J_uu):
                    rec.ns[c] = 2
                    rec.sup[c, 0], rec.sup[c, 1] = g, o
                    rec.w[c, 0], rec.w[c, 1] = 1.0, 1.0
                    _take(rec, c, PAIR, m_other, u, f)
                    c += 1
    for g in range(y.size):
        m = _growing(y, f0, g, h, atol, K, k, m_overlap, m_other, fastest)
        u = y[g]
        f = f0[g]
        if c == MAX_COUNT or used[g] or m == 0.0:
            continue
        if _pole_like(u, f, m, woodbury.entry(fac, g, g, K)):
            rec.ns[c] = 1
            rec.sup[c, 0] = g
            rec.w[c, 0] = 1.0
            _take(rec, c, SINGLE, m, u, f)
            c += 1
    if c == 0 and m_fastest != 0.0:
        c = _direction(y, f0, h, atol, n, K, k, m_overlap, m_other, m_fastest, fastest, fac,
                       rec)
    return c


@njit
def _direction(y, f0, h, atol, n, K, k, m_overlap, m_other, m, fastest, fac, rec):
    """A pole that no coordinate or pair carries alone: e.g. a student turning towards the
    axis of an antipodal pair, which turns with it (its Gram entries with both members grow
    like a pole, each member's coordinate along the student is slaved to it and relaxes on its
    own, so neither a coordinate nor a pair's sum feeds on itself). The growing coordinates
    of exponent ``m`` within ``RATE`` of the ``fastest`` rate, weighted by their velocity
    ``w = f0`` (unit length; the flow's direction at a wait, where the pole's growth is all
    of the motion), give ``u = w . y``; it is taken if it qualifies as a candidate and is
    pole-like along ``w`` (``w . J w``, by the structured product). Returns 1 if taken."""
    ns = 0
    big = 0.0
    lo_atol = math.inf
    for g in range(y.size):
        if _growing(y, f0, g, h, atol, K, k, m_overlap, m_other, fastest) != m:
            continue
        if ns == MAX_SUPPORT:
            return 0
        rec.sup[0, ns] = g
        rec.w[0, ns] = f0[g]
        lo_atol = min(lo_atol, atol[g])
        if abs(f0[g]) > big:  # the largest weight first: it is the divisor of _join
            big = abs(f0[g])
            rec.sup[0, ns], rec.sup[0, 0] = rec.sup[0, 0], g
            rec.w[0, ns], rec.w[0, 0] = rec.w[0, 0], f0[g]
        ns += 1
    if ns < 2:
        return 0
    rec.ns[0] = ns
    norm = 0.0
    for s in range(ns):
        norm += rec.w[0, s] * rec.w[0, s]
    norm = math.sqrt(norm)
    wd = rec.zs  # scratch: the step has not started
    Jw = rec.zn
    wd[:] = 0.0
    for s in range(ns):
        rec.w[0, s] /= norm
        wd[rec.sup[0, s]] = rec.w[0, s]
    u = pole_part(y, rec, 0)
    f = pole_part(f0, rec, 0)
    if not _candidate(u, f, h, lo_atol, m):
        return 0
    woodbury.jvp(fac, wd, Jw, n, K)
    J_ww = 0.0
    for s in range(ns):
        J_ww += rec.w[0, s] * Jw[rec.sup[0, s]]
    if not _pole_like(u, f, m, J_ww):
        return 0
    # Its own exponent: df/du = (m + 1) f / u for u' ~ u^(m + 1). A student turning towards
    # an antipodal pair's axis meets the pair's odd couplings cancelled: h3's m = 1 becomes 2.
    m_own = max(1.0, min(MAX_EXPONENT, float(round(J_ww * u / f - 1.0))))
    _take(rec, 0, DIRECTION, m_own, u, f)
    return 1


@njit
def to_z(y, rec, cnt, z):
    """``z`` = ``y`` with each chosen pole variable ``u`` mapped to ``sign(u) |u|^-m`` (in its
    coordinate ``g``; the rest of its support holds the component across its direction,
    which the pole leaves alone, :func:`_split`)."""
    z[:] = y
    for c in range(cnt):
        u = _split(z, rec, c)
        z[rec.g[c]] = math.copysign(abs(u) ** -rec.m[c], u)


@njit
def to_y(z, rec, cnt, y):
    """``y`` = ``z`` mapped back; False where a pole variable left its sign (``u`` passed
    through infinity: the step is too long) or is not finite."""
    ok = True
    y[:] = z
    for c in range(cnt):
        g = rec.g[c]
        v = z[g]
        if not (v * rec.z0[g] > 0.0) or not math.isfinite(v):
            ok = False
            y[g] = math.inf
            continue
        _join(y, rec, c, math.copysign(abs(v) ** (-1.0 / rec.m[c]), v))
    return ok


@njit
def velocity(ys, fs, rec, cnt):
    """The field in ``z`` from the field ``fs`` at ``ys`` (in place)."""
    for c in range(cnt):
        m = rec.m[c]
        u = pole_part(ys, rec, c)
        fs[rec.g[c]] = -m * abs(u) ** (-m - 1.0) * _split(fs, rec, c)


@njit
def to_step(b, rec, cnt):
    """``b <- T^-1 b`` with ``T = dz/dy`` at the step's start (``D`` = ``phi'``)."""
    for c in range(cnt):
        _join(b, rec, c, b[rec.g[c]] / rec.D[c])


@njit
def from_step(b, rec, cnt):
    """``b <- T b``."""
    for c in range(cnt):
        b[rec.g[c]] = rec.D[c] * _split(b, rec, c)


@njit
def error_in_y(e, y, yn, rec, cnt):
    """The error estimate ``e`` (in ``z``) in units of ``y``, in place: a pole variable's
    divided by ``phi'`` at the larger of ``|u|`` at the step's two ends (the smaller
    ``|phi'|``: the larger error), then mapped back like the state."""
    for c in range(cnt):
        m = rec.m[c]
        big = max(abs(pole_part(y, rec, c)), abs(pole_part(yn, rec, c)))
        _join(e, rec, c, -e[rec.g[c]] * big ** (m + 1.0) / m)  # / phi'(u), phi' < 0
