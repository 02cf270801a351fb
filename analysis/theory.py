"""Closed-form predictions of the paper, used as the reference for every measured quantity."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import comb


def beta_c(p_star: int, k: int) -> float:
    """Saddle-to-minimum threshold of the average point (Theorem 3.2), ``(p*-2)/(k+p*-2)``."""
    if p_star < 2 or k < 1:
        raise ValueError(f"beta_c needs p* >= 2 and k >= 1, got p*={p_star}, k={k}")
    return (p_star - 2) / (k + p_star - 2)


def escape_exponent(p_star: int) -> float:
    """Exponent ``alpha`` of ``T ~ d^alpha`` (Theorem 2.1): ``p*/2 - 1`` (0 means log d)."""
    return p_star / 2 - 1


def sample_exponent(p_star: int) -> float:
    """Exponent of online SGD's samples to escape, ``n ~ d^(p* - 1)`` at step size
    ``~ d^(-p*/2)`` (Ben Arous, Gheissari & Jagannath 2021); ``p* = 2`` is ``d log d``."""
    return p_star - 1.0


def coupon_failure_exact(n: int, k: int) -> float:
    """P(some of k index vectors is collected by none of n neurons), inclusion-exclusion.

    Each neuron collects exactly one index vector (its largest initial overlap), uniformly
    by symmetry of the frame, independently: the coupon collector with n draws.
    """
    n, k = int(n), int(k)
    total = 0.0
    for i in range(1, k + 1):
        total += (-1) ** (i + 1) * comb(k, i, exact=True) * (1 - i / k) ** n
    return min(max(total, 0.0), 1.0)


def coupon_union_bound(n: int, k: int) -> float:
    """The paper's upper bound (5): ``k exp(-n/k)`` (capped at 1)."""
    return min(1.0, k * math.exp(-n / k))


def coupon_lower_bound(n: int, k: int) -> float:
    """The paper's lower bound (6): ``(1 - 1/k)^n``."""
    return (1 - 1 / k) ** n


def coupon_limit(gamma: float) -> float:
    """Proportional limit of the lower bound, ``exp(-gamma)`` with ``gamma = n/k``."""
    return math.exp(-gamma)


def average_overlap(k: int, beta: float) -> float:
    """Overlap ``w_bar . v_j`` of the normalized average of an equiangular frame."""
    return math.sqrt((1 + (k - 1) * beta) / k)


def hessian_at_average_closed_form(c: np.ndarray, k: int, beta: float) -> tuple[float, float]:
    """Spherical Hessian eigenvalues at ``w_bar`` from eq. (18): (in span(V), outside it).

    In span(V) and orthogonal to ``w_bar`` every unit ``v`` has ``sum_j (v.v_j)^2 = 1 - beta``;
    outside span(V) that sum is 0.
    """
    alpha = average_overlap(k, beta)
    inside = outside = 0.0
    for p in range(1, len(c)):
        if c[p] == 0:
            continue
        outside += c[p] * p * k * alpha**p
        inside += c[p] * p * (k * alpha**p - (p - 1) * (1 - beta) * alpha ** (p - 2))
    return inside, outside
