"""Dense LU factorization with partial pivoting and its solves, for the stiff stage's
Rosenbrock matrices (``stiff.py``) and the small matrices of their structured form
(``woodbury.py``)."""

from __future__ import annotations

from ._jit import jit as njit

#: Panel width of :func:`_lu` (its trailing update is written out for exactly 8 columns).
LU_BLOCK = 8


@njit(fastmath={"contract"})
def _lu(W, piv):
    """In-place LU factorization with partial pivoting; False if ``W`` is singular.

    Blocked by panels of ``LU_BLOCK`` columns: the trailing rows take the panel's 8 rank-one
    updates in one pass (8 multiply-adds per load and store of an entry instead of one),
    1.7x faster than the plain right-looking loop at N = 120, where the LU is most of a
    Rosenbrock step. Same pivots; the result differs from it by round-off only.
    """
    # fastmath "contract" lets LLVM fuse multiply-adds; the result stays a deterministic
    # function of the inputs.
    N = W.shape[0]
    for c0 in range(0, N, LU_BLOCK):
        c1 = min(c0 + LU_BLOCK, N)
        # The panel (columns c0..c1-1, every row below c0), unblocked.
        for c in range(c0, c1):
            p = c
            big = abs(W[c, c])
            for r in range(c + 1, N):
                if abs(W[r, c]) > big:
                    big = abs(W[r, c])
                    p = r
            if big == 0.0:
                return False
            piv[c] = p
            if p != c:
                for x in range(N):
                    W[c, x], W[p, x] = W[p, x], W[c, x]
            inv = 1.0 / W[c, c]
            for r in range(c + 1, N):
                f = W[r, c] * inv
                W[r, c] = f
                for x in range(c + 1, c1):
                    W[r, x] -= f * W[c, x]
        # The panel's rows of U right of it: the unit lower triangle of the panel solved.
        for c in range(c0, c1):
            for r in range(c + 1, c1):
                f = W[r, c]
                for x in range(c1, N):
                    W[r, x] -= f * W[c, x]
        # The trailing rows: minus (their panel part of L) times (the panel's rows of U).
        if c1 - c0 == LU_BLOCK:
            for r in range(c1, N):
                f0, f1, f2, f3 = W[r, c0], W[r, c0 + 1], W[r, c0 + 2], W[r, c0 + 3]
                f4, f5, f6, f7 = W[r, c0 + 4], W[r, c0 + 5], W[r, c0 + 6], W[r, c0 + 7]
                for x in range(c1, N):
                    W[r, x] -= (f0 * W[c0, x] + f1 * W[c0 + 1, x] + f2 * W[c0 + 2, x]
                                + f3 * W[c0 + 3, x] + f4 * W[c0 + 4, x] + f5 * W[c0 + 5, x]
                                + f6 * W[c0 + 6, x] + f7 * W[c0 + 7, x])
        else:
            for r in range(c1, N):
                for c in range(c0, c1):
                    f = W[r, c]
                    for x in range(c1, N):
                        W[r, x] -= f * W[c, x]
    return True


#: Fast-math flags of the dot products below: "reassoc" lets LLVM vectorize the sums (the
#: triangular solves 2x faster). The order of summation is then fixed by the compiled loop
#: and the trip count alone, so results stay a deterministic function of the inputs.
DOT_MATH = {"contract", "reassoc"}


@njit(fastmath=DOT_MATH)
def _lu_solve(W, piv, b):
    """Solve ``W x = b`` in place from :func:`_lu`'s factors."""
    N = W.shape[0]
    for c in range(N):
        p = piv[c]
        if p != c:
            b[c], b[p] = b[p], b[c]
    for r in range(N):
        acc = 0.0
        for x in range(r):
            acc += W[r, x] * b[x]
        b[r] -= acc
    for r in range(N - 1, -1, -1):
        acc = 0.0
        for x in range(r + 1, N):
            acc += W[r, x] * b[x]
        b[r] = (b[r] - acc) / W[r, r]
