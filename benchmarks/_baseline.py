"""Reference implementations the benchmarks compare against (never used by the package)."""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp


def reduced_rhs(A: np.ndarray, c: np.ndarray):
    """The reduced correlation-loss field (eq. 8) plus r = ||w_perp||, in plain numpy."""
    ps = np.arange(len(c))

    def ascent(u):
        return (c[1:] * ps[1:] * u[:, None] ** (ps[1:] - 1)).sum(axis=1)

    Ainv = np.linalg.inv(A)

    def rhs(t, y):
        u, r = y[:-1], y[-1]
        a = ascent(u)
        ua = u @ a
        return np.r_[A @ a - ua * u, -ua * r]

    def grad_norm(y):
        u, r = y[:-1], y[-1]
        a = ascent(u)
        ua = u @ a
        du = A @ a - ua * u
        return np.sqrt(max(du @ Ainv @ du, 0.0) + (ua * r) ** 2)

    return rhs, grad_norm


def solve_ivp_trajectory(y0, A, c, *, rtol, atol, gtol, t_max, threshold):
    """One trajectory with scipy's RK45 (also Dormand-Prince 5(4)) and the same stopping rule.

    Returns ``(u_final, escape_time, t_final, converged)``.
    """
    rhs, grad_norm = reduced_rhs(A, c)
    k = len(y0) - 1

    def escape(t, y):
        return np.linalg.norm(y[:k]) - threshold

    def converged(t, y):
        # Only after escape, exactly as mimflow's rule: near the saddle the gradient is tiny.
        if np.linalg.norm(y[:k]) < threshold:
            return 1.0
        return grad_norm(y) - gtol

    converged.terminal = True
    escape.direction = 1.0
    sol = solve_ivp(rhs, (0.0, t_max), y0, method="RK45", rtol=rtol, atol=atol,
                    events=(escape, converged))
    t_esc = sol.t_events[0][0] if len(sol.t_events[0]) else np.nan
    if np.linalg.norm(y0[:k]) >= threshold:
        t_esc = 0.0
    return sol.y[:k, -1], t_esc, sol.t[-1], sol.status == 1
