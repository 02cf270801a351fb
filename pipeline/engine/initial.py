"""Exact initial overlaps ``u(0) = V^T w(0)`` for ``w(0)`` uniform on ``S^{d-1}``, any ``d``.

Put the index vectors in the first ``k`` coordinates, ``V = [L^T; 0]`` with ``A = L L^T``.
For ``w = g / ||g||``, ``g ~ N(0, I_d)``, write ``z = g[:k]`` and ``chi2 = ||g[k:]||^2``:

    u(0) = L z / sqrt(||z||^2 + chi2),     r(0) = ||w_perp|| = sqrt(chi2 / (||z||^2 + chi2))

with ``chi2 ~ chi-square(d - k)`` independent of ``z``. The cost is O(k) whatever ``d`` is
(``d = 10**12`` costs what ``d = 100`` costs), and the law is exact, not asymptotic.

Conditioned initializations:

* ``positive``: ``u(0) > 0`` componentwise (the paper's assumption). With ``y = L z ~ N(0, A)``
  and ``||z||^2 = y^T A^{-1} y``, the condition is ``y > 0``. Orthogonal frames: ``|z|``
  (sign flips are exact). Equiangular frames: ``y = sqrt(1-beta) z' + sqrt(beta) g 1`` turns
  the condition into independent truncations ``z'_j > -c g``, ``c = sqrt(beta / (1-beta))``,
  given the scalar ``g`` whose marginal is ``phi(g) Phi(c g)^k``, sampled exactly by rejection
  under a tangent Gaussian envelope (its log-density is concave). Works for k = 20 and beyond.
  Other Grams: rejection on ``y``, refused with a clear message when hopelessly slow.
* ``uncollected``: no neuron has the last index vector ``v_k`` as its largest overlap (the
  paper's Figure 3 situation); exact by rejection, acceptance about ``1 - 1/k``.

**Interacting neurons (MSE loss).** The neurons' perp parts ``g_i[k:] = sqrt(chi2_i) e_i``
interact through their Gram matrix. The directions ``e_i`` are i.i.d. uniform on
``S^{d-k-1}`` and independent of ``(z, chi2)``; their coordinates in an orthonormal basis of
their span are the normalized columns of the QR factor ``T`` of a ``(d-k) x n`` Gaussian
matrix, whose law is Bartlett's: ``T`` is ``m x n`` upper trapezoidal, ``m = min(n, d - k)``,
with independent ``T_ii = sqrt(chi-square(d - k - i))`` (``i = 0..m-1``) and ``T_il ~ N(0, 1)``
for ``l > i``. When ``d - k < n`` this is the rank-deficient case, exactly: ``m = d - k`` rows
(no rows at all when ``d = k``). Hence the exact coordinates of ``w_i``'s perp part::

    Z[:, i] = r_i T[:, i] / ||T[:, i]||,     Q = M A^-1 M^T + Z^T Z

at cost O(n min(n, d - k)) whatever ``d`` is. ``M`` is the draw above, unchanged (common
random numbers: the MSE point of a seed starts where the correlation point starts), and
every conditioning (``positive``, ``uncollected``) is a condition on the ``z``'s alone, which
are independent of ``T``, so the per-neuron rejection stays exact for coupled neurons.
``T`` comes from its own random sub-stream (``seeding.STREAM_ORTHOGONAL``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats
from scipy.linalg import solve_triangular

from ..errors import SpecError
from .params import PARAMS

#: The initial laws (the ``init`` parameter of :data:`pipeline.engine.params.PARAMETERS`).
INITS = PARAMS["init"].constraint.choices
#: Below this acceptance rate a rejection sampler is refused rather than run.
MIN_ACCEPTANCE = 1e-4


@dataclass(frozen=True)
class InitialDraw:
    """Initial conditions of ``n`` neurons.

    ``z`` (n, k) and ``chi2`` (n,) are the Gaussian coordinates described in the module
    docstring; ``u`` (n, k) the overlaps ``V^T w(0)``; ``r`` (n,) the norm of the part of
    ``w(0)`` orthogonal to span(V).
    """

    z: np.ndarray
    chi2: np.ndarray
    u: np.ndarray
    r: np.ndarray


def _chi2(rng: np.random.Generator, d: float, k: int, n: int) -> np.ndarray:
    if d == k:
        return np.zeros(n)
    return rng.chisquare(float(d - k), size=n)


def _is_equiangular(gram: np.ndarray) -> float | None:
    k = gram.shape[0]
    off = gram[~np.eye(k, dtype=bool)]
    if k == 1:
        return 0.0
    if np.all(off == off[0]):
        return float(off[0])
    return None


def _rejection(draw, accept, n: int, rng: np.random.Generator, what: str):
    """Collect ``n`` accepted rows from batches ``draw(m)``, in draw order (deterministic)."""
    chunks, got, tried, m = [], 0, 0, max(2 * n, 64)
    while got < n:
        cand = draw(m)
        ok = accept(cand)
        tried += m
        got += int(ok.sum())
        chunks.append(tuple(c[ok] for c in cand))
        if tried >= 10_000 and got < MIN_ACCEPTANCE * tried:
            raise SpecError(
                "init", what,
                f"an initialization accepted in at least {MIN_ACCEPTANCE:g} of draws "
                f"(observed {got}/{tried})",
                hint="use an orthogonal or equiangular frame, or init = 'uniform'",
            )
        m = min(4 * m, 1_000_000)
    return tuple(np.concatenate([c[i] for c in chunks])[:n] for i in range(len(chunks[0])))


def _sample_equiangular_g(rng: np.random.Generator, n: int, k: int, c: float) -> np.ndarray:
    """Exact draws from the density proportional to ``phi(g) Phi(c g)^k``.

    ``log Phi`` is concave, so its tangent at the mode ``t`` bounds it from above; the
    envelope ``phi(g) exp(k log Phi(c t) + t (g - t))`` is the Gaussian ``N(t, 1)`` up to a
    constant, and a draw is accepted with probability ``Phi(c g)^k / Phi(c t)^k e^{-t (g-t)}``.
    """
    def slope(g):  # d/dg k log Phi(c g) = k c phi(cg) / Phi(cg)
        x = c * g
        return k * c * math.exp(-0.5 * x * x - 0.5 * math.log(2 * math.pi) - special.log_ndtr(x))

    t = optimize.brentq(lambda g: slope(g) - g, 0.0, slope(0.0) + 1.0, xtol=1e-14)
    log_phi_t = special.log_ndtr(c * t)

    def draw(m):
        return (rng.normal(t, 1.0, size=m), rng.random(m))

    def accept(cand):
        g, v = cand
        log_ratio = k * (special.log_ndtr(c * g) - log_phi_t) - t * (g - t)
        return np.log(v) < log_ratio

    (g, _) = _rejection(draw, accept, n, rng, "equiangular positive sampler")
    return g


def _raw_draw(rng, n, d, L, init, beta):
    """Random part of one seed's draw: ``(z, y or None, chi2)`` with ``y = L z`` if computed."""
    k = L.shape[0]
    if init == "uniform":
        return rng.standard_normal((n, k)), None, _chi2(rng, d, k, n)
    if init == "positive" and beta == 0.0:
        return np.abs(rng.standard_normal((n, k))), None, _chi2(rng, d, k, n)
    if init == "positive" and beta is not None and beta > 0.0:
        # the g-mixture needs beta > 0; equal negative overlaps go to rejection below
        c = math.sqrt(beta / (1.0 - beta))
        g = _sample_equiangular_g(rng, n, k, c)
        lower = np.repeat((-c * g)[:, None], k, axis=1)
        zp = stats.truncnorm.rvs(lower, np.inf, size=(n, k), random_state=rng)
        # Keep y as drawn (not L (L^-1 y)) so positivity is exact, not up to round-off.
        y = math.sqrt(1.0 - beta) * zp + math.sqrt(beta) * g[:, None]
        z = solve_triangular(L, y.T, lower=True).T
        return z, y, _chi2(rng, d, k, n)

    def draw(m):
        z = rng.standard_normal((m, k))
        return (z, z @ L.T)

    if init == "positive":
        accept = lambda c: np.all(c[1] > 0, axis=1)  # noqa: E731
    else:
        accept = lambda c: np.argmax(c[1], axis=1) != k - 1  # noqa: E731
    z, y = _rejection(draw, accept, n, rng, init)
    return z, y, _chi2(rng, d, k, n)


def sample_initial_batch(
    rngs: Sequence[np.random.Generator], n: int, d: float, gram: np.ndarray,
    init: str = "uniform",
) -> InitialDraw:
    """Exact initial conditions of ``n`` independent neurons for each generator in ``rngs``.

    Each seed's draws come from its own generator, in a fixed order, so a seed's initial
    condition does not depend on the other seeds; the arithmetic that follows the draws is
    done once for the whole batch. Arrays are shaped ``(len(rngs), n, ...)``.

    Parameters
    ----------
    rngs:
        One generator per seed: any sequence with a length (a lazy one is best for many
        seeds, see :class:`pipeline.engine.seeding.SeedStreams`).
    n:
        Number of neurons per seed.
    d:
        Ambient dimension (``d >= k``; any size, the cost does not depend on it).
    gram:
        The validated Gram matrix ``A`` (k x k).
    init:
        ``"uniform"``, ``"positive"`` or ``"uncollected"``.
    """
    if init not in INITS:
        raise SpecError("init", init, "one of " + ", ".join(INITS))
    A = np.asarray(gram, dtype=float)
    k = A.shape[0]
    if init == "uncollected" and k < 2:
        raise SpecError("init", init, "'uncollected' only with k >= 2")
    L = np.linalg.cholesky(A)
    beta = _is_equiangular(A)
    # Consume the generators one at a time into preallocated arrays: a million seeds must
    # not mean a million live generators or a million small arrays.
    S = len(rngs)
    z = np.empty((S, n, k))
    chi2 = np.empty((S, n))
    y = None
    for i, rng in enumerate(rngs):
        z[i], y_i, chi2[i] = _raw_draw(rng, n, d, L, init, beta)
        if y_i is not None:
            if y is None:
                y = np.empty((S, n, k))
            y[i] = y_i
    if y is None:
        y = z @ L.T
    norm2 = np.einsum("...j,...j->...", z, z) + chi2
    return InitialDraw(z=z, chi2=chi2, u=y / np.sqrt(norm2)[..., None], r=np.sqrt(chi2 / norm2))


def sample_initial(
    rng: np.random.Generator, n: int, d: float, gram: np.ndarray, init: str = "uniform"
) -> InitialDraw:
    """Exact initial conditions of ``n`` independent neurons from one generator.

    Same as :func:`sample_initial_batch` for a single seed, without the leading axis.
    """
    draw = sample_initial_batch([rng], n, d, gram, init)
    return InitialDraw(z=draw.z[0], chi2=draw.chi2[0], u=draw.u[0], r=draw.r[0])


def explicit_weights(
    z: np.ndarray, chi2: np.ndarray, d: int, rng: np.random.Generator
) -> np.ndarray:
    """Explicit unit vectors ``w(0)`` in ``R^d`` (n x d) for one seed's draw ``(z, chi2)``.

    ``g[k:] = sqrt(chi2) e`` with ``e`` uniform on ``S^{d-k-1}`` independent of ``chi2``, so
    the result is uniform on the sphere (conditioned as the draw was) and ``V^T w`` equals
    the draw's ``u`` up to round-off. For the full-d validation backend only.
    """
    n, k = z.shape
    g = np.zeros((n, int(d)))
    g[:, :k] = z
    if d > k:
        e = rng.standard_normal((n, int(d) - k))
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        g[:, k:] = np.sqrt(chi2)[:, None] * e
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def orthogonal_rank(n: int, d: float, k: int) -> int:
    """``m = min(n, d - k)``: dimension of the span of the n neurons' perp parts (a.s.)."""
    return int(min(n, d - k))


def _bartlett(rng: np.random.Generator, n: int, df: float, m: int) -> np.ndarray:
    """The ``m x n`` QR factor of a ``df x n`` standard Gaussian matrix (Bartlett's law)."""
    T = np.zeros((m, n))
    if m == 0:
        return T
    T[np.arange(m), np.arange(m)] = np.sqrt(rng.chisquare(df - np.arange(m, dtype=float)))
    rows, cols = np.triu_indices(m, 1, n)
    T[rows, cols] = rng.standard_normal(rows.size)
    return T


def sample_orthogonal_factor(
    rngs: list[np.random.Generator], r: np.ndarray, d: float, k: int
) -> np.ndarray:
    """Exact coordinates ``Z`` (seeds, m, n) of the neurons' parts orthogonal to span(V).

    ``r`` (seeds, n) are the norms ``||w_i_perp||`` of a draw (``InitialDraw.r``); each seed's
    Bartlett factor comes from its own generator in ``rngs`` (see the module docstring).
    ``Z^T Z`` is the Gram of the perp parts, so ``Q = M A^-1 M^T + Z^T Z``.
    """
    r = np.asarray(r, dtype=float)
    S, n = r.shape
    m = orthogonal_rank(n, d, k)
    Z = np.zeros((S, m, n))
    for s, rng in enumerate(rngs):
        T = _bartlett(rng, n, float(d - k), m)
        if m:
            Z[s] = T * (r[s] / np.linalg.norm(T, axis=0))
    return Z


def explicit_coupled_weights(
    z: np.ndarray, chi2: np.ndarray, Z: np.ndarray, d: int, rng: np.random.Generator
) -> np.ndarray:
    """Explicit ``W`` (n x d) with ``V^T W^T = M`` and perp parts ``U Z`` for one seed.

    ``U`` is a random orthonormal ``(d - k) x m`` basis (drawn from ``rng``), so the result
    is uniform on the sphere (conditioned as the draw was) and its overlaps ``(Q, M)`` equal
    the reduced ones up to round-off. For the full-d MSE validation backend only.
    """
    n, k = z.shape
    m = Z.shape[0]
    W = np.zeros((n, int(d)))
    W[:, :k] = z / np.sqrt(np.einsum("ij,ij->i", z, z) + chi2)[:, None]
    if m:
        U, R = np.linalg.qr(rng.standard_normal((int(d) - k, m)))
        U *= np.sign(np.diag(R))  # the Haar-distributed orthonormal basis
        W[:, k:] = (U @ Z).T
    return W
