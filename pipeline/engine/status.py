"""The status vocabulary of a trajectory: one table for the kernels, the store and the reports.

A trajectory ends with one of four stored codes; the store adds one for padding and blocks not
computed. The kernels use the codes as compile-time constants (numba freezes module globals).
"""

from __future__ import annotations

#: Stored codes.
CONVERGED, LIMIT, MAX_STEPS, NON_FINITE = 0, 1, 2, 3
#: Code 1 is the time limit of the flow and GD, and the sample budget of online SGD.
T_MAX = SAMPLE_BUDGET = LIMIT
#: Store only: padding (a neuron or index beyond the point's n or k) and blocks not computed.
MISSING = -1
#: Internal only, never stored: the explicit flow kernel hands a trajectory over to
#: ``continuation.py`` (a convergence candidate to verify, or a stiff phase).
HANDOVER = 4

#: Name of every code a trajectory can end with (the columns of status tables).
STATUS_NAMES: dict[int, str] = {CONVERGED: "converged", LIMIT: "t_max", MAX_STEPS: "max_steps",
                                NON_FINITE: "non_finite"}
#: What each code means, for the store's attributes and the docs.
STATUS_MEANINGS: dict[int, str] = {
    CONVERGED: "converged (the rule in the store's convergence_rules attribute)",
    LIMIT: "t_max reached (method sgd: the sample budget max_samples)",
    MAX_STEPS: "max_steps accepted steps reached",
    NON_FINITE: "non-finite state, or a collapsed step size (a solution blowing up)",
}
#: The store's flags: the trajectory codes plus ``missing``.
STORE_FLAGS: dict[int, str] = {MISSING: "missing", **STATUS_NAMES}
