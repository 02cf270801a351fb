"""The batched integrators against closed-form solutions, and their stopping rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.engine import dynamics, mse
from pipeline.engine.integrate import (
    Observation,
    StopRule,
    Tolerances,
    absolute_tolerances,
    solve,
)
from pipeline.engine.status import CONVERGED, MAX_STEPS, NON_FINITE, T_MAX


def _k1(p: int, u0: np.ndarray):
    """k = 1, sigma = sigma* = h_p: du/dt = p u^(p-1) (1 - u^2) exactly."""
    c = np.zeros(p + 1)
    c[p] = 1.0
    y0 = np.column_stack([u0, np.sqrt(1 - u0**2)])
    return y0, dynamics.reduced_args(np.eye(1), c)


def t_h2(u0, u):
    """Exact time for h2 to go from u0 to u: v = u^2 solves dv/dt = 4 v (1 - v)."""
    v0, v = u0**2, u**2
    return 0.25 * np.log(v * (1 - v0) / (v0 * (1 - v)))


def t_h3(u0, u):
    """Exact time for h3: dt = du / (3 u^2 (1 - u^2))."""
    return (1 / u0 - 1 / u + np.arctanh(u) - np.arctanh(u0)) / 3


@pytest.mark.parametrize("p,exact", [(2, t_h2), (3, t_h3)])
def test_escape_time_is_located_inside_the_step(p, exact):
    # From d ~ 1e2 to d ~ 1e12 initial overlaps: the event is found on the dense output.
    u0 = np.array([0.1, 1e-2, 1e-4, 1e-6])
    y0, args = _k1(p, u0)
    res = solve(dynamics.REDUCED, y0, args, tolerances=Tolerances(1e-10, 1e-16),
                stop=StopRule(gtol=1e-8), observe=Observation(0.5))
    assert np.all(res.status == CONVERGED)
    np.testing.assert_allclose(res.escape_time[:, 0], exact(u0, 0.5), rtol=1e-7)
    # Step endpoints would be far off: the event is not an endpoint.
    assert np.all(res.steps > 10)


@pytest.mark.parametrize("d", [1e6, 1e9, 1e12])
def test_escape_time_accuracy_does_not_degrade_with_d(d):
    """h3 from overlaps at the d^-1/2 scale, at the default rtol and atol as simulate() sets
    them (``Tolerances.at_dimension``): the escape time keeps the accuracy of small d
    (measured 1.2e-9, 2.5e-9, 2.5e-9 against the closed form). With atol = 1e-12 for the
    overlaps at every d, d = 1e12 (overlaps ~1e-6, only 1e6 atol) came 1.8e-7 off."""
    u0 = np.array([1.0, 0.7, 1.3, 2.0]) / math.sqrt(d)
    y0, args = _k1(3, u0)
    res = solve(dynamics.REDUCED, y0, args, tolerances=Tolerances.at_dimension(1e-8, 1e-12, d),
                stop=StopRule(t_max=1e16), observe=Observation(0.5))
    assert res.status.tolist() == [CONVERGED] * 4
    np.testing.assert_allclose(res.escape_time[:, 0], t_h3(u0, 0.5), rtol=1e-8)


def test_absolute_tolerances_per_coordinate():
    """overlap_atol goes to the overlaps (the first k numbers of each neuron's row) of the
    reduced models only; at_dimension lowers it to rtol / sqrt(d) and never raises it."""
    a = np.zeros(4)
    a[3] = 1.0
    tol = Tolerances(1e-8, 1e-12, overlap_atol=1e-15)
    corr = absolute_tolerances(dynamics.REDUCED, dynamics.reduced_args(np.eye(2), a), 3, tol)
    assert corr.tolist() == [1e-15, 1e-15, 1e-12]
    margs = mse.reduced_args(np.eye(2), a, a, 3, 3)
    m = absolute_tolerances(dynamics.MSE_REDUCED, margs, 15, tol).reshape(3, 5)
    assert (m[:, :2] == 1e-15).all() and (m[:, 2:] == 1e-12).all()
    full = absolute_tolerances(dynamics.MSE_FULL, mse.full_args(np.eye(4)[:, :2], a, a, 3),
                               12, tol)
    assert (full == 1e-12).all()
    assert Tolerances.at_dimension(1e-8, 1e-12, 1e6).overlap_atol == 1e-12
    assert Tolerances.at_dimension(1e-8, 1e-12, 1e12).overlap_atol == pytest.approx(1e-14)
    assert absolute_tolerances(dynamics.REDUCED, dynamics.reduced_args(np.eye(2), a), 3,
                               Tolerances(1e-8, 1e-12)).tolist() == [1e-12] * 3


def test_snapshots_follow_the_exact_solution():
    u0 = np.array([0.05, 0.2])
    y0, args = _k1(2, u0)
    times = np.concatenate([[0.0], np.logspace(-2, 1.5, 30)])
    res = solve(dynamics.REDUCED, y0, args, tolerances=Tolerances(1e-10, 1e-14),
                stop=StopRule(gtol=1e-8), observe=Observation(0.5, times))
    v0 = u0[:, None] ** 2
    v = v0 * np.exp(4 * times) / (1 - v0 + v0 * np.exp(4 * times))
    np.testing.assert_allclose(res.u_t[:, :, 0], np.sqrt(v), atol=1e-8)


def test_snapshots_after_stop_hold_or_blank():
    u0 = np.array([0.3])
    y0, args = _k1(3, u0)
    times = np.array([0.0, 1.0, 1e6])
    conv = solve(dynamics.REDUCED, y0, args, observe=Observation(0.5, times))
    assert conv.status[0] == CONVERGED and conv.t_final[0] < 1e6
    assert conv.u_t[0, -1, 0] == conv.y[0, 0]  # converged: the final state is held
    cut = solve(dynamics.REDUCED, y0, args, stop=StopRule(t_max=0.5),
                observe=Observation(0.5, times))
    assert cut.status[0] == T_MAX and cut.t_final[0] == 0.5
    assert np.isnan(cut.u_t[0, -1, 0]) and np.isnan(cut.u_t[0, 1, 0])


def test_status_codes_and_bad_trajectories_do_not_stop_the_batch():
    y0, args = _k1(3, np.array([0.3, 0.3, 0.3]))
    y0[1, 0] = np.nan
    res = solve(dynamics.REDUCED, y0, args, stop=StopRule(max_steps=5))
    assert res.status.tolist() == [MAX_STEPS, NON_FINITE, MAX_STEPS]
    assert res.steps.tolist() == [5, 0, 5]
    ok = solve(dynamics.REDUCED, y0[[0, 2]], args)
    assert ok.status.tolist() == [CONVERGED, CONVERGED]
    gd = solve(dynamics.REDUCED, y0, args, method="gd", lr=0.5)
    assert gd.status.tolist() == [CONVERGED, NON_FINITE, CONVERGED]


def test_convergence_is_not_declared_at_the_saddle():
    # At u ~ 1e-6 (d ~ 1e12) the h4 gradient is ~ 1e-17, far below gtol: still not converged.
    y0, args = _k1(4, np.array([1e-6]))
    res = solve(dynamics.REDUCED, y0, args, stop=StopRule(gtol=1e-6, t_max=1e15))
    assert res.status[0] == CONVERGED
    assert res.escape_time[0, 0] > 1e10  # ~ d^(p*/2 - 1) = 1e12 / (p (p-2))
    assert res.y[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_gradient_tolerance_is_reached_at_tight_rtol():
    # The cancellation-free gradient norm lets gtol follow rtol well below sqrt(eps).
    y0, args = _k1(3, np.array([0.2]))
    res = solve(dynamics.REDUCED, y0, args, tolerances=Tolerances(1e-12, 1e-16),
                stop=StopRule(gtol=1e-10))
    assert res.status[0] == CONVERGED
    work = np.empty(4)
    assert dynamics.grad_norm(dynamics.REDUCED, res.y[0], args, work) < 1e-10


def test_gd_time_is_learning_rate_times_iterations():
    y0, args = _k1(3, np.array([0.2]))
    res = solve(dynamics.REDUCED, y0, args, method="gd", lr=0.05,
                observe=Observation(0.5, np.array([0.0, 0.07, 1.0])))
    assert res.t_final[0] == pytest.approx(0.05 * res.steps[0])
    assert math.isclose(res.escape_time[0, 0] / 0.05, round(res.escape_time[0, 0] / 0.05))
    # Snapshot at 0.07 is the iterate floor(0.07 / 0.05) = 1.
    one = solve(dynamics.REDUCED, y0, args, method="gd", lr=0.05, stop=StopRule(max_steps=1))
    assert res.u_t[0, 1, 0] == one.y[0, 0]


def test_results_do_not_depend_on_batch_or_threads():
    rng = np.random.default_rng(5)
    u0 = rng.uniform(0.01, 0.2, size=(64, 3))
    y0 = np.column_stack([u0, np.sqrt(1 - (u0**2).sum(1))])
    c = np.array([0, 0, 0.3, 1.0, 0.2])
    args = dynamics.reduced_args(np.full((3, 3), 0.2) + 0.8 * np.eye(3), c)
    obs = Observation(0.5, np.logspace(-1, 3, 9))
    a = solve(dynamics.REDUCED, y0, args, observe=obs, threads=1)
    b = solve(dynamics.REDUCED, y0, args, observe=obs, threads=2)
    c_ = solve(dynamics.REDUCED, y0[40:], args, observe=obs, threads=2)
    for name in ("y", "t_final", "steps", "status", "escape_time", "u_t"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
        assert np.array_equal(getattr(a, name)[40:], getattr(c_, name), equal_nan=True), name


def test_solve_rejects_unknown_method():
    y0, args = _k1(3, np.array([0.2]))
    with pytest.raises(ValueError, match="method"):
        solve(dynamics.REDUCED, y0, args, method="rk4")
    with pytest.raises(ValueError, match="lr"):
        solve(dynamics.REDUCED, y0, args, method="gd")


@pytest.mark.parametrize("make,message", [
    (lambda: StopRule(t_max=0.0), r"StopRule.t_max = 0.0: must be a number > 0"),
    (lambda: StopRule(t_max=float("inf")), r"StopRule.t_max = inf"),
    (lambda: StopRule(gtol=-1e-6), r"StopRule.gtol = -1e-06: must be a number >= 0"),
    (lambda: StopRule(verify_floor=0.0), r"StopRule.verify_floor = 0.0: must be a number > 0"),
    (lambda: StopRule(max_steps=0), r"StopRule.max_steps = 0: must be an integer >= 1"),
    (lambda: StopRule(max_steps=1.5), r"StopRule.max_steps = 1.5"),
    (lambda: Tolerances(rtol=1.0), r"Tolerances.rtol = 1.0: must be a number in \[0, 1\)"),
    (lambda: Tolerances(atol=0.0), r"Tolerances.atol = 0.0: must be a number > 0"),
    (lambda: Tolerances(atol="1e-12"), r"Tolerances.atol = '1e-12'"),
    (lambda: Tolerances(overlap_atol=-1.0), r"Tolerances.overlap_atol = -1.0: must be a number"),
])
def test_stop_rule_and_tolerances_reject_bad_values(make, message):
    """Bad limits are refused when built, naming the field, the value and what is allowed
    (t_max = 0 divided by zero inside the compiled kernel)."""
    with pytest.raises(ValueError, match=message):
        make()


def test_late_escape_still_converges():
    # h5 from u0 = 3e-5 escapes near t ~ 1e12 and then relaxes on an O(1) time scale: the
    # step-size floor must be relative to the ulp of t, not to t (that would be a false
    # "non-finite" status after the escape).
    y0, args = _k1(5, np.array([3e-5]))
    res = solve(dynamics.REDUCED, y0, args, stop=StopRule(t_max=1e15))
    assert res.status[0] == CONVERGED
    assert res.escape_time[0, 0] > 1e12


def test_late_escape_is_not_a_collapsed_step():
    """An escape at t ~ 1e14 (h3, u0 = 3e-15, as from d ~ 1e29 or a slow drift) runs on an O(1)
    clock, steps below 8 ulp of t: the two-double time takes them. It was status 3
    (non_finite) with every number finite; now it converges, at the exact escape time."""
    u0 = np.array([3e-15, 1e-14])
    y0, args = _k1(3, u0)
    # atol far below u0: the slow approach is then accurate relative to u itself.
    res = solve(dynamics.REDUCED, y0, args, tolerances=Tolerances(1e-10, 1e-30),
                stop=StopRule(t_max=1e16), observe=Observation(0.5))
    assert res.status.tolist() == [CONVERGED, CONVERGED]
    np.testing.assert_allclose(res.y[:, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(res.escape_time[:, 0], t_h3(u0, 0.5), rtol=1e-6)


def test_odd_teacher_from_negative_overlap_stays_negative():
    """h3 from u0 < 0: u -> 0- like -1/(3t), never through the invariant u = 0. Once |u| was
    below atol a step crossed 0 and the flow 'escaped' to u = +1 at t ~ 1e13 (then stopped as
    a collapsed step, status 3, or with two-double time a false status 0). Now: t_max with
    u < 0 within atol of the exact solution."""
    u0 = np.array([-0.03, -1e-3, -1e-6])
    y0, args = _k1(3, u0)
    t_max = 1e16
    res = solve(dynamics.REDUCED, y0, args, stop=StopRule(t_max=t_max),
                observe=Observation(0.5))
    assert res.status.tolist() == [T_MAX] * 3
    assert np.all(np.isnan(res.escape_time))
    exact = -1.0 / (3.0 * (t_max + 1.0 / (3.0 * np.abs(u0))))  # arctanh(u) ~ u: < 1e-30
    assert np.all(res.y[:, 0] < 0.0)
    np.testing.assert_allclose(res.y[:, 0], exact, atol=1e-11)
