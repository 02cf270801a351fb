"""Double-double arithmetic: a number is an unevaluated sum ``hi + lo`` of two floats with
``|lo| <= ulp(hi) / 2`` (~106 bits), from the error-free transformations of Knuth (TwoSum)
and Dekker (TwoProduct by Veltkamp splitting; Python 3.11's ``math`` has no ``fma``).

Why the engine needs it: at rest, the MSE velocity is a sum of O(1) terms that cancel to
~1e-12 or less, so the plain float field carries round-off ~ eps * (the terms) that is far
larger than the velocity itself. An L-stable step of length h turns that round-off, along the
flow's neutral directions (antipodal pairs, the rotation gauge of the reduced coordinates),
into a drift ~ h * eps * (the terms), which both the error estimate and the continuation
check then see: at d = 1e12 the steps at rest were capped at ~3e8 by that drift and a
verification window [t_c, 10 t_c] took ~1,000 of them (``mse.reduced_field_accurate``).

These functions must be compiled without fast-math flags (no contraction, no reassociation):
the transformations are exact only in plain IEEE arithmetic.
"""

from __future__ import annotations

from ._jit import jit as njit

#: Veltkamp's splitter for 53-bit doubles, 2^27 + 1.
SPLITTER = 134217729.0


@njit
def two_sum(a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@njit
def quick_two_sum(a, b):
    """``two_sum`` for ``|a| >= |b|``."""
    s = a + b
    return s, b - (s - a)


@njit
def _split(a):
    c = SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


@njit
def two_prod(a, b):
    """``(p, e)`` with ``p = fl(a * b)`` and ``a * b = p + e`` exactly (no overflow for the
    O(1) numbers of the engine)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@njit
def add(ah, al, bh, bl):
    """Double-double ``a + b``."""
    s, e = two_sum(ah, bh)
    t, f = two_sum(al, bl)
    e += t
    s, e = quick_two_sum(s, e)
    e += f
    return quick_two_sum(s, e)


@njit
def mul(ah, al, bh, bl):
    """Double-double ``a * b``."""
    p, e = two_prod(ah, bh)
    e += ah * bl + al * bh
    return quick_two_sum(p, e)


@njit
def mul_d(ah, al, b):
    """Double-double ``a * b`` for a float ``b``."""
    p, e = two_prod(ah, b)
    e += al * b
    return quick_two_sum(p, e)


@njit
def fma_d(ch, cl, ah, al, b):
    """Double-double ``c + a * b`` for a float ``b``."""
    ph, pl = mul_d(ah, al, b)
    return add(ch, cl, ph, pl)


@njit
def poly(c, L, xh, xl):
    """``sum_{q < L} c_q x^q`` by Horner in double-double (float coefficients ``c``)."""
    acc_h, acc_l = 0.0, 0.0
    for q in range(L - 1, -1, -1):
        acc_h, acc_l = mul(acc_h, acc_l, xh, xl)
        acc_h, acc_l = add(acc_h, acc_l, c[q], 0.0)
    return acc_h, acc_l
