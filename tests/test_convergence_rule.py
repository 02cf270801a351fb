"""MSE stopping rule and stiff continuation (issue 9).

Independent truth: the flow itself, continued from each reported final state for ten times
the elapsed time, by scipy's ``solve_ivp`` (independent of mimflow's integrators and stopping
logic) where that is affordable (d <= 1e5), and at large d by mimflow's compiled flow with
the stopping rule switched off (``gtol = 0``: it runs to its t_max), whose integrator is
checked against Dormand-Prince and scipy separately below; Rosenbrock against
Dormand-Prince on the same trajectories; the closed-form Jacobian against differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import pipeline
from pipeline.engine import dynamics, mse, stiff
from pipeline.engine.activations import get_activation
from pipeline.engine.continuation import (
    CONVERGENCE_RULES,
    VERIFY_FACTOR,
    VERIFY_FLOOR,
    blow_up_time,
    jacobian,
    row_scales,
    steady_growth,
    verify_floor,
)
from pipeline.engine.initial import orthogonal_rank
from pipeline.engine.integrate import Observation, StopRule, Tolerances, solve
from pipeline.engine.params import content_hash, resolve_point
from pipeline.engine.simulate import _initial_state
from pipeline.engine.status import CONVERGED, T_MAX
from pipeline.engine.stiff import _lu, _lu_solve, _pole_before, reduced_jacobian

K = 2
#: A teacher with odd and even Hermite parts (antipodal students cancel only the odd one).
MIXED = {3: 1.0, 4: 0.5}


def _reduced_state(q: np.ndarray, u: np.ndarray, n: int, d: float) -> np.ndarray:
    """A reduced state with Gram ``q`` and overlaps ``u`` (A = I): the perp coordinates are
    recovered up to a rotation, which the flow does not see."""
    lam, U = np.linalg.eigh(q - u @ u.T)
    Z = np.sqrt(np.clip(lam, 0.0, None))[:, None] * U.T
    m = orthogonal_rank(n, int(d), K)
    return mse.pack_reduced(u, Z[n - m:])


def _continue(teacher: str, n: int, d: float, ds, factor: float = 10.0,
              engine: str = "scipy", t_max: float | None = None):
    """For every status-0 seed: the largest change of the loss and of any overlap when the
    flow goes on from the final state for ``factor`` times the elapsed time (or to t_max).

    ``engine``: ``"scipy"`` (Radau of ``solve_ivp``) or ``"mimflow"`` (the compiled flow with
    ``gtol = 0``, so that no stopping rule ends it before its t_max)."""
    a = get_activation(teacher).coefficients
    args = mse.reduced_args(np.eye(K), a, a, n, orthogonal_rank(n, int(d), K))
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    t_max = t_max or resolve_point({"teacher": teacher, "d": d, "k": K}).t_max
    out = []
    for s in range(ds.sizes["seed"]):
        if int(ds.status[s, 0]) != CONVERGED:
            continue
        y = _reduced_state(ds.q.values[s], ds.u.values[s], n, d)
        t0 = float(ds.t_final[s, 0])
        # The flow is autonomous: time from 0, so the first steps are not below ulp(t0).
        span = min(factor * t0, t_max - t0)
        if span <= 0.0:
            continue  # its window ended at t_max: [t_c, 10 t_c] was checked to the end
        if engine == "scipy":
            # Changes of 1e-6 are to be resolved, over up to ~1e12 time units: atol 1e-10
            # keeps the field's round-off (~1e-16 per unit time) from stalling the steps.
            sol = solve_ivp(lambda _t, x: dynamics_field(x, args, work), (0.0, span), y,
                            method="Radau", rtol=1e-9, atol=1e-10,
                            jac=lambda _t, x: jacobian(dynamics.MSE_REDUCED, x, args, work))
            assert sol.success, sol.message
            y1 = sol.y[:, -1]
        else:
            # Tighter than the run's own: at its tolerances a component at ~atol (e.g.
            # overlaps ~2e-12 at d = 1e6) can make the continuation leave a saddle that it
            # does not leave at 1e-10 / 1e-14 / 1e-16.
            r = solve(dynamics.MSE_REDUCED, y, args,
                      stop=StopRule(t_max=span, gtol=0.0, max_steps=10**7),
                      tolerances=Tolerances(1e-10, 1e-14, 1e-16))
            assert int(r.status[0]) == T_MAX
            y1 = r.y[0]
        dloss = abs(mse.mse_loss(dynamics.MSE_REDUCED, y1, args) - float(ds.loss[s, 0]))
        du = float(np.max(np.abs(y1.reshape(n, -1)[:, :K] - ds.u.values[s])))
        out.append((s, dloss, du))
    return out


def dynamics_field(x, args, work):
    dy = np.empty(x.size)
    dynamics.vector_field(dynamics.MSE_REDUCED, x, args, work, dy)
    return dy


@pytest.mark.parametrize("teacher,n,d", [("h3", 3, 1e3), ("h4", 3, 1e3), ("h3", 10, 1e3),
                                         ("h3", 10, 1e5)])
def test_no_false_convergence(teacher, n, d):
    """Status 0 is a state the flow does not leave: continuing it for 10x its elapsed time
    moves the loss by < 1e-6 and no overlap by > 1e-4."""
    ds = pipeline.simulate({"teacher": teacher, "d": d, "k": K, "n": n, "loss": "mse"}, 4)
    # scipy's Radau is Python-driven: at d = 1e5 (windows to t ~ 1e6) the compiled flow.
    checked = _continue(teacher, n, d, ds, engine="scipy" if d <= 1e3 else "mimflow")
    for s, dloss, du in checked:
        assert dloss < 1e-6, (s, dloss)
        assert du < 1e-4, (s, du)
    assert ds.attrs["convergence_rule"] == CONVERGENCE_RULES["mse"]


def test_issue_9_saddle_is_not_converged():
    """The issue's case, d = 1e5, h3, n = 10: two seeds stopped at loss 1 (v_1 unlearned,
    antipodal pairs at the d^-1/2 scale) with status 0; the flow leaves that saddle."""
    ds = pipeline.simulate({"teacher": "h3", "d": 1e5, "k": K, "n": 10, "loss": "mse"}, [2, 6])
    assert bool((ds.status == CONVERGED).all())
    np.testing.assert_allclose(ds.loss.isel(neuron=0), 0.0, atol=1e-6)
    # The stop is at the end of a confirmed window: well after the last escape.
    assert np.all(ds.t_final.isel(neuron=0).values
                  >= VERIFY_FACTOR * 0.999 * ds.escape_time.max("neuron").values)


@pytest.mark.parametrize("d,seed", [(1e6, 5), (1e9, 6)])
def test_slow_second_escape_is_not_converged(d, seed):
    """Grid seeds that stopped at status 0 at loss 0.55 (d = 1e6) and 1.0 (d = 1e9) while an
    overlap ~1e-4 grew by 4% per window: the flow left within 30x the elapsed time (to loss
    0.37). Now their status-0 states stay put for 30x the elapsed time."""
    ds = pipeline.simulate({"teacher": "h3", "d": d, "k": K, "n": 3, "loss": "mse",
                            "t_max": 1e16}, [seed])
    assert int(ds.status[0, 0]) == CONVERGED
    checked = _continue("h3", 3, d, ds, factor=30.0, engine="mimflow", t_max=1e16)
    assert len(checked) == 1
    _, dloss, du = checked[0]
    assert dloss < 1e-6 and du < 1e-4, (dloss, du)


def _batch(teacher, n, d, seeds):
    p = resolve_point({"teacher": teacher, "d": d, "k": K, "n": n, "loss": "mse"})
    a = get_activation(teacher).coefficients
    return _initial_state(p, p.gram_matrix, a, a, 0, content_hash(p.initial_key()),
                          np.arange(seeds))


def test_implicit_agrees_with_explicit():
    """Radau from t = 0 against Dormand-Prince throughout, snapshots and final states."""
    model, args, y0, _ = _batch("h3", 4, 200.0, 4)
    obs = Observation(0.5, np.concatenate([[0.0], np.logspace(-1, 4, 30)]))
    ex = solve(model, y0, args, observe=obs, integrator="explicit")
    im = solve(model, y0, args, observe=obs, integrator="implicit")
    au = solve(model, y0, args, observe=obs)
    assert ex.status.tolist() == im.status.tolist() == au.status.tolist() == [CONVERGED] * 4
    for other in (im, au):
        assert float(np.nanmax(np.abs(other.u_t - ex.u_t))) <= 1e-6
        assert float(np.nanmax(np.abs(other.loss_t - ex.loss_t))) <= 1e-6
        np.testing.assert_allclose(other.escape_time, ex.escape_time, rtol=1e-6)


@pytest.mark.parametrize("tolerances,bound", [
    (Tolerances.at_dimension(1e-8, 1e-12, 1e12), 1e-6),  # what simulate() uses at d = 1e12
    (Tolerances(1e-8, 1e-12), 2e-5),  # the overlaps' atol not scaled to their d^-1/2 size
])
def test_escape_time_after_a_long_wait_at_d_1e12(tolerances, bound):
    """d = 1e12, h3, n = 10, seed 0: the second escape comes ~4.5e5 after the first, from
    overlaps ~1e-5 that grow like 1 / (T - t) while the first neuron sits at rest (Rosenbrock
    steps up to ~1e5 long). From a state after the first escape, the flow against scipy's
    Radau at rtol 1e-12 with the closed-form Jacobian: the times of the next escape agree to
    ``bound`` of the wait. Measured: 1.2e-5 with atol = 1e-12 for every coordinate; 2.3e-4
    here (1.4e-3 in an uninterrupted run) when one round-off floor of atol, from the
    converged neuron's O(1) terms, held the slow overlaps to ~1e-10 absolute."""
    model, args, y0, _ = _batch("h3", 10, 1e12, 1)
    n, threshold = 10, Observation().escape_threshold
    K_row = y0.shape[1] // n
    before = solve(model, y0, args, tolerances=tolerances, stop=StopRule(t_max=1.6e5))
    assert int(before.status[0]) == T_MAX and np.sum(before.escape_time[0] <= 1.6e5) == 1
    y1 = before.y[0]

    def norms(y):
        return np.linalg.norm(y.reshape(n, K_row)[:, :K], axis=1)

    waiting = np.flatnonzero(norms(y1) < threshold)
    after = solve(model, y1, args, tolerances=tolerances, stop=StopRule(t_max=1e6))
    t_next = np.nanmin(after.escape_time[0, waiting])
    work = np.empty(dynamics.work_size(model, args))
    dy, J = np.empty(y1.size), np.empty((y1.size, y1.size))

    def jac(_t, y):
        reduced_jacobian(y, args, work, dy, J)
        return J.copy()

    def escape(_t, y):
        return np.max(norms(y)[waiting]) - threshold

    escape.terminal = True
    ref = solve_ivp(lambda _t, y: dynamics_field(y, args, work), (0.0, 1e6), y1,
                    method="Radau", jac=jac, rtol=1e-12, atol=1e-17, events=escape)
    t_ref = float(ref.t_events[0][0])
    assert 4e5 < t_ref < 5e5
    print(f"\nnext escape {t_next:.10g}, Radau {t_ref:.10g}: {abs(t_next / t_ref - 1):.2g}")
    assert abs(t_next - t_ref) <= bound * t_ref, (t_next, t_ref)


def test_stiff_phase_steps_do_not_grow_with_d():
    """After the first neurons settle, the explicit kernel hands the stiff phase to Radau:
    the step count at d = 1e7 stays of the order of d = 1e3's (it was ~40x before)."""
    steps = {}
    for d in (1e3, 1e7):
        ds = pipeline.simulate({"teacher": "h3", "d": d, "k": K, "n": 10, "loss": "mse"}, 8)
        assert bool((ds.status == CONVERGED).all())
        steps[d] = float(np.median(ds.steps.isel(neuron=0)))
    assert steps[1e7] <= 4 * steps[1e3]


def _check_grid_point(teacher, n, d, seeds, t_max=1e16, factor=10.0):
    # h4's escapes take t ~ d: at d = 1e12 the default t_max (1e12) ends every seed at status 1.
    point = {"teacher": teacher, "d": d, "k": K, "n": n, "loss": "mse", "t_max": t_max}
    ds = pipeline.simulate(point, seeds)
    checked = _continue(teacher, n, d, ds, factor=factor, engine="mimflow", t_max=t_max)
    # The record of a grid run (pytest -s): statuses and the largest changes.
    print(f"\n{teacher} n={n} d={d:g}: status counts "
          f"{np.bincount(ds.status.isel(neuron=0).values.astype(int), minlength=4).tolist()}, "
          f"max dloss {max((c[1] for c in checked), default=0.0):.2g}, "
          f"max du {max((c[2] for c in checked), default=0.0):.2g}")
    for s, dloss, du in checked:
        assert dloss < 1e-6, (s, dloss)
        assert du < 1e-4, (s, du)
    return checked


@pytest.mark.parametrize("teacher", ["h3", "h4"])
def test_no_false_convergence_at_d_1e12(teacher):
    """The issue's grid at its largest d, cheaply: n = 3, 4 seeds (the full grid is slow).

    h3: status-0 seeds exist and stay put. h4 (escapes at t ~ d): two neurons escape by
    t ~ 3e11, the third one's overlaps keep growing slowly, so no window confirms before
    t_max = 1e16 and every seed must end with status 1 at loss 1, never a false 0."""
    checked = _check_grid_point(teacher, 3, 1e12, 4)
    assert len(checked) > 0 if teacher == "h3" else len(checked) == 0


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["h3", "h4"])
@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("d", [1e3, 1e6, 1e9, 1e12])
def test_no_false_convergence_large_d(teacher, n, d):
    """The issue's grid: d in {1e3, 1e6, 1e9, 1e12} x h3/h4 x n in {3, 10}, 16 seeds."""
    _check_grid_point(teacher, n, d, 16)


@pytest.mark.slow
@pytest.mark.parametrize("teacher,n,d", [
    (t, n, d) for t in ("h3", "h4") for n in (3, 10) for d in (1e3, 1e6, 1e9, 1e12)
] + [("h4", 3, 1e2)] + [(MIXED, n, d) for n in (3, 10) for d in (1e6, 1e9, 1e12)])
def test_no_departure_before_t_max(teacher, n, d):
    """Stricter than the issue's test: every status-0 seed continued to t_max = 1e16, not
    just for 10x its time. Holds on the issue's grid, for h4, n = 3 at d = 1e2 and for the
    mixed-parity teacher (slow saddles the steady-growth tests catch). Until the second half
    of a window was tested on its own, on the window's actual end, h4, n = 3 left in 4 of 16
    seeds at d = 1e3 and 2 at d = 1e2, 1e5-1e7 times after their confirmation, and mixed,
    n = 10, d = 1e9, seed 6 (four antipodal pairs confirmed at t = 1e10 at loss 4.0) broke up
    by ~1e15. Cases still open are in the README ("Still open")."""
    _check_grid_point(teacher, n, d, 16, factor=1e30)


@pytest.mark.parametrize("n", [1, 2])
def test_no_false_convergence_n_at_most_k(n):
    """n < k and n = k: no surplus neurons (every status-0 state is a real rest point)."""
    assert _check_grid_point("h3", n, 1e6, 4)


def test_an_unlearned_index_vector_is_not_a_rest_point():
    """h3, k = 3, n = 5, d = 1e12: seeds 0, 1, 3 stopped with status 0 at loss 2, 4, 2 under
    the continuation check alone (a learned v_2, antipodal pairs and free neurons whose
    overlaps with v_1, v_3 were negative and shrinking); the flow left them 2.5e3x to 2e5x
    later and reached loss 0 by t = 1e18. With n >= k every index vector must be learned
    for a candidate: they go on, and end at loss 0."""
    ds = pipeline.simulate({"teacher": "h3", "d": 1e12, "k": 3, "n": 5, "loss": "mse",
                            "t_max": 1e18}, [0, 1, 3])
    assert bool((ds.status == CONVERGED).all())
    np.testing.assert_allclose(ds.loss.isel(neuron=0), 0.0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("d", [1e6, 1e12])
def test_no_false_convergence_three_index_vectors(d):
    """Beyond the issue's grid: h3, k = 3, n = 5, 16 seeds, t_max = 1e18; every status-0 seed
    continued to t = 1e18 (the compiled flow without a stopping rule) keeps its loss to 1e-6.
    Before the learned-directions rule 2 (d = 1e6) and 8 (d = 1e12) of them did not."""
    k, n = 3, 5
    ds = pipeline.simulate({"teacher": "h3", "d": d, "k": k, "n": n, "loss": "mse",
                            "t_max": 1e18}, 16)
    a = get_activation("h3").coefficients
    m = orthogonal_rank(n, int(d), k)
    args = mse.reduced_args(np.eye(k), a, a, n, m)
    checked = 0
    for s in np.flatnonzero(ds.status.isel(neuron=0).values == CONVERGED):
        q, u = ds.q.values[s], ds.u.values[s]
        lam, U = np.linalg.eigh(q - u @ u.T)
        Z = np.sqrt(np.clip(lam, 0.0, None))[:, None] * U.T
        y = mse.pack_reduced(u, Z[n - m:])
        r = solve(dynamics.MSE_REDUCED, y, args, stop=StopRule(t_max=1e18, gtol=0.0),
                  tolerances=Tolerances.at_dimension(1e-8, 1e-12, d))
        loss = mse.mse_loss(dynamics.MSE_REDUCED, r.y[0], args)
        assert abs(loss - float(ds.loss[s, 0])) < 1e-6, (s, float(ds.loss[s, 0]), loss)
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("m", [0.0, 1.0, 2.0])
def test_blow_up_time_recovers_the_pole_from_two_samples(m):
    """A pole |x| = c (T - t)^(-1/m) sampled at t0 and t1 gives back T (any c); for m = 0,
    |x| = x0 e^(lambda (t - t0)) gives the time it reaches 1; a component that does not grow
    never blows up."""
    T, t0, t1 = 8.5e16, 5.3e13, 5.3e14
    if m > 0:
        x0, x1 = 3e-5 * (T - t0) ** (-1 / m), 3e-5 * (T - t1) ** (-1 / m)
        assert blow_up_time(x0, -x1, t0, t1, m) == pytest.approx(T, rel=1e-6)
    else:
        lam = 1e-15
        x0, x1 = 1e-6, 1e-6 * np.exp(lam * (t1 - t0))
        assert blow_up_time(x0, x1, t0, t1, m) == pytest.approx(
            t0 + np.log(1e6) / lam, rel=1e-9)
    assert blow_up_time(x1, x0, t0, t1, m) == np.inf
    assert blow_up_time(0.0, x1, t0, t1, m) == np.inf


def test_slow_pole_before_t_max_is_not_converged():
    """h4, k = 2, n = 3, d = 1e9, seed 6: at t = 5.3e14 two overlaps ~3e-5 grow by 0.28 % per
    window (below VERIFY_GROWTH), a pole that blows up at ~8.5e16; the flow then goes to loss
    0.5693. With t_max = 1e16 the state stays put until t_max (status 0 at loss 0.5696, as
    before); with t_max = 1e18 the check no longer confirms it (it was status 0 at 0.5696):
    the trajectory goes through the escape and, with no window left before t_max, ends with
    status 1 at the later state. Seed 4, the mirror state (overlaps +-2e-6 that do not grow),
    is confirmed as before."""
    point = {"teacher": "h4", "d": 1e9, "k": K, "n": 3, "loss": "mse"}
    short = pipeline.simulate({**point, "t_max": 1e16}, [4, 6])
    long = pipeline.simulate({**point, "t_max": 1e18}, [4, 6])
    for ds in (short, long):
        assert int(ds.status[0, 0]) == CONVERGED
        assert float(ds.loss[0, 0]) == pytest.approx(0.569641, abs=1e-6)
    assert int(short.status[1, 0]) == CONVERGED
    assert float(short.loss[1, 0]) == pytest.approx(0.569641, abs=1e-6)
    assert int(long.status[1, 0]) == T_MAX
    assert float(long.loss[1, 0]) == pytest.approx(0.569293, abs=1e-6)


@pytest.mark.parametrize("drift,noise_late,caught", [
    (5e-15, 1e-16, True),    # a drift under the settling: the second half shows it
    (0.0, 1e-16, False),     # settling alone: its tail is gone by the last quarter
    (5e-15, 1e-13, False),   # the same drift within 100x that half's error estimates
])
def test_second_half_shows_a_drift_under_a_settling_component(drift, noise_late, caught):
    """Closed form, the shape of h4, n = 3, d = 1e3, seed 5: a component ~1e-3 that settles
    upwards by 6.6e-11 with a time constant of 30 while it drifts at ``drift`` per unit time,
    over the window [100, 1000] sampled at its middle and three quarters (log time). The
    settling sets the first half's rate, so the whole window's growth is not steady; the
    second half's is (linear), and read as a pole (m = 2) it blows up at ~1e11, before
    t_max = 1e12."""
    t0, t1 = 100.0, 1000.0
    tm, tq = t0 * 10 ** 0.5, t0 * 10 ** 0.75

    def x(t):
        return 1e-3 + 6.6e-11 * (1.0 - np.exp(-(t - t0) / 30.0)) + drift * (t - t0)

    x0, xm, xq, x1 = x(t0), x(tm), x(tq), x(t1)
    assert not steady_growth(x0, xm, x1, t0, tm, t1)  # the whole window's test misses it
    assert _pole_before(x0, xm, xq, x1, t0, tm, tq, t1, 1e12, 2.0, 1e-9, 1e-15,
                        noise_late) == caught
    if caught:  # ... and not where t_max comes before the extrapolated pole
        assert not _pole_before(x0, xm, xq, x1, t0, tm, tq, t1, 1e10, 2.0, 1e-9, 1e-15,
                                noise_late)


def test_steady_growth_tells_an_instability_from_a_component_settling():
    """Three samples of |x| over a window [t0, 10 t0] (the middle at sqrt(10) t0): an
    exponential, a pole and a growth whose rate rises are steady; a component that settles
    (all of its growth early), one that shrinks and one that grows and falls back are not."""
    t0, t1 = 1e11, 1e12
    tm = np.sqrt(t0 * t1)

    def samples(x):
        return x(t0), x(tm), x(t1), t0, tm, t1

    assert steady_growth(*samples(lambda t: 4e-9 * np.exp(6e-15 * t)))
    assert steady_growth(*samples(lambda t: -1e-6 / (4e15 - t)))
    assert steady_growth(*samples(lambda t: 1e-8 * (1.0 + 1e-5 * (t / t0) ** 2)))
    assert not steady_growth(*samples(lambda t: 0.3 * (1.0 - 1e-5 * np.exp(-t / t0))))
    assert not steady_growth(*samples(lambda t: 1e-6 * np.exp(-1e-15 * t)))
    assert not steady_growth(2e-9, 2.1e-9, 2.05e-9, t0, tm, t1)
    assert not steady_growth(2e-9, 2.1e-9, 2.2e-9, t0, t0, t1)  # no middle sample


def test_slow_instability_below_the_pole_noise_is_not_converged():
    """Mixed teacher {3: 1, 4: 0.5}, k = 2, n = 3, d = 1e12, t_max = 1e16. Seed 2 reaches a
    saddle (loss 0.699, two students sharing v_2) at t ~ 4e10 with antisymmetric v_1
    overlaps +-4.1e-9; they grew by 9.9e-5 over the window [3.9e10, 3.9e11], just below
    VERIFY_POLE_NOISE, at a constant rate (40 times their tolerance), and the check confirmed
    it (status 0); the flow leaves at ~3e15 for loss 0.502, before t_max. Read as a pole
    (the growth is steady), it blows up at ~3.9e15: not confirmed, the trajectory goes on
    through the escape (status 1: the window after it cannot finish by t_max). Seed 12
    rests at the same saddle with those overlaps at +-9e-13, below the growth floor, and
    stays there to t_max: still status 0."""
    teacher, n, d = MIXED, 3, 1e12
    ds = pipeline.simulate({"teacher": teacher, "d": d, "k": K, "n": n, "loss": "mse",
                            "t_max": 1e16}, [2, 12])
    loss = ds.loss.isel(neuron=0).values
    assert int(ds.status[0, 0]) == T_MAX and loss[0] == pytest.approx(0.5025, abs=1e-3)
    assert int(ds.status[1, 0]) == CONVERGED and loss[1] == pytest.approx(0.6989, abs=1e-4)
    checked = _continue(teacher, n, d, ds.isel(seed=[1]), factor=1e6, engine="mimflow",
                        t_max=1e16)
    assert len(checked) == 1 and checked[0][1] < 1e-6 and checked[0][2] < 1e-4, checked


def test_pair_drifting_below_its_tolerance_is_not_converged():
    """Mixed teacher {3: 1, 4: 0.5}, k = 2, n = 4, d = 1e6, seed 12: two students learn the
    index vectors and the other two form an antipodal pair (its odd parts cancel, its even
    part is left: loss 1.0). At t_c ~ 4e2 the pair's overlaps ~3e-4 grow by 1.2e-10 over the
    window, far below their error tolerance (rtol |x| ~ 3e-12) but ~280 times what the
    window's step error estimates could explain, and steadily; the check confirmed it
    (status 0 at t = 4.2e3) and the pair broke up at ~1e12 (loss 0.823). Now the growth is
    extrapolated (a pole at ~3.5e13 < t_max = 1e16) and the flow goes on to loss 0.823."""
    ds = pipeline.simulate({"teacher": MIXED, "d": 1e6, "k": K, "n": 4,
                            "loss": "mse", "t_max": 1e16}, [12])
    assert int(ds.status[0, 0]) == CONVERGED
    assert float(ds.loss[0, 0]) == pytest.approx(0.8229, abs=1e-4)
    assert float(ds.t_final[0, 0]) > 1e12


def test_pole_extrapolation_allows_for_an_early_escape():
    """h4, k = 2, n = 3, d = 1e6, seed 0: confirmed at t = 7.1e10 (loss 0.5696) while two
    overlaps ~5e-5 grew by 3e-6 per window; their pole law puts the blow-up at 1.07e16, just
    past t_max = 1e16, but the flow left at 8-9e15 (the components that drive the growth
    grow too). With the extrapolation's margin it is not confirmed: the trajectory goes
    through that escape and ends at t_max (status 1) at the later state."""
    ds = pipeline.simulate({"teacher": "h4", "d": 1e6, "k": K, "n": 3, "loss": "mse",
                            "t_max": 1e16}, [0])
    assert int(ds.status[0, 0]) == T_MAX
    assert float(ds.loss[0, 0]) == pytest.approx(0.569293, abs=1e-6)


def test_drift_under_a_settling_component_is_not_converged():
    """h4, k = 2, n = 3, d = 1e3, seed 5 (t_max = 1e12): at t ~ 4e3 one student sits on v_2
    and an antipodal pair on v_1 (loss 0.5696), the pair's v_2 overlaps ~9.7e-4. Over the
    window [101, 4173] they settled by 6.6e-11 in its first half and drifted by 1.9e-11 in
    the second (3e4 times that half's error estimates, at a constant rate: a degenerate
    saddle, its escape rate ~5e-12 set by those overlaps): the first-half rate hid the drift
    from the whole-window test and the check confirmed (status 0). The flow leaves at ~5e10 for loss
    0.56929. Tested on the second half alone, the drift is extrapolated (a pole at ~1e11)
    and the trajectory goes on to that loss, which scipy's LSODA reaches from the old stop."""
    point = {"teacher": "h4", "d": 1e3, "k": K, "n": 3, "loss": "mse", "t_max": 1e12}
    ds = pipeline.simulate(point, [5])
    assert int(ds.status[0, 0]) == CONVERGED
    assert float(ds.loss[0, 0]) == pytest.approx(0.569293, abs=1e-6)
    assert float(ds.t_final[0, 0]) > 1e10
    # The independent truth: from where the check used to stop, scipy's flow leaves too.
    t_c = 4173.2
    at = pipeline.simulate({**point, "t_max": t_c}, [5])
    assert float(at.loss[0, 0]) == pytest.approx(0.569641, abs=1e-6)
    y = _reduced_state(at.q.values[0], at.u.values[0], 3, 1e3)
    a = get_activation("h4").coefficients
    args = mse.reduced_args(np.eye(K), a, a, 3, orthogonal_rank(3, 1000, K))
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    # LSODA: Radau takes ~2e5 steps of its costlier kind here (75 s at rtol 1e-9).
    sol = solve_ivp(lambda _t, x: dynamics_field(x, args, work), (0.0, 1e11 - t_c), y,
                    method="LSODA", rtol=1e-10, atol=1e-14,
                    jac=lambda _t, x: jacobian(dynamics.MSE_REDUCED, x, args, work))
    assert sol.success
    assert mse.mse_loss(dynamics.MSE_REDUCED, sol.y[:, -1], args) == pytest.approx(
        0.569293, abs=1e-5)


def test_window_samples_are_placed_on_its_actual_end():
    """h4, k = 2, n = 3, d = 1e2, seed 1: the same saddle as above. The window planned as
    [117, 1167] ended with one step at rest from 656 to 12,328; the samples at the planned
    middle and three quarters (369, 656) still saw the settling that went on to ~700, so
    the second half's growth did not hold up over its quarters, and the check confirmed
    (status 0 at loss 0.5696) a state the flow leaves. With the samples taken again on the
    closing step, at the actual window's middle and three quarters, the drift is steady
    and the trajectory goes on to loss 0.569293."""
    ds = pipeline.simulate({"teacher": "h4", "d": 1e2, "k": K, "n": 3, "loss": "mse",
                            "t_max": 1e16}, [1])
    assert int(ds.status[0, 0]) == CONVERGED
    assert float(ds.loss[0, 0]) == pytest.approx(0.569293, abs=1e-6)
    assert float(ds.t_final[0, 0]) > 1e10


def test_settling_components_are_confirmed_whatever_t_max():
    """h3, n = 10, d = 1e3 (loss 0): at the first window Gram entries of 0.01-0.8 are still
    settling, by 1e-7 to 5e-5 (10 to 4000 tolerances), all of it in the window's first half.
    Read as poles they would blow up at ~1e9-5e10, so with t_max = 1e16 every window would
    restart (t_final up to 30x later) and with t_max = 1e6 none: the steadiness test keeps
    the confirmation independent of t_max."""
    point = {"teacher": "h3", "d": 1e3, "k": K, "n": 10, "loss": "mse"}
    short = pipeline.simulate({**point, "t_max": 1e6}, 8)
    long = pipeline.simulate({**point, "t_max": 1e16}, 8)
    assert bool((short.status == CONVERGED).all()) and bool((long.status == CONVERGED).all())
    np.testing.assert_array_equal(long.t_final.values, short.t_final.values)


def test_growth_floor_scales_with_d():
    """h3, k = 3, n = 4, d = 1e12, seed 10: with a growth floor of 1e-7 at every d, the
    check confirmed a state at loss 0.37 while the v_2 components of three neurons, ~3e-8
    (d^-1/2 = 1e-6), grew by ~30% per window; the flow left 4x later (loss 0.29). With the
    floor at 0.001 d^-1/2 the state is not confirmed; what is, stays put for 10x its time."""
    assert verify_floor(1e6) == VERIFY_FLOOR and verify_floor(1e8) == VERIFY_FLOOR
    assert verify_floor(1e12) == pytest.approx(1e-9)
    d, k, n = 1e12, 3, 4
    ds = pipeline.simulate({"teacher": "h3", "d": d, "k": k, "n": n, "loss": "mse",
                            "t_max": 1e16}, [10])
    assert float(ds.loss[0, 0]) < 0.37
    if int(ds.status[0, 0]) == CONVERGED:
        a = get_activation("h3").coefficients
        m = orthogonal_rank(n, int(d), k)
        args = mse.reduced_args(np.eye(k), a, a, n, m)
        q, u = ds.q.values[0], ds.u.values[0]
        lam, U = np.linalg.eigh(q - u @ u.T)
        Z = np.sqrt(np.clip(lam, 0.0, None))[:, None] * U.T
        t0 = float(ds.t_final[0, 0])
        r = solve(dynamics.MSE_REDUCED, mse.pack_reduced(u, Z[n - m:]), args,
                  stop=StopRule(t_max=min(10 * t0, 1e16 - t0), gtol=0.0),
                  tolerances=Tolerances.at_dimension(1e-8, 1e-12, d))
        loss = mse.mse_loss(dynamics.MSE_REDUCED, r.y[0], args)
        assert abs(loss - float(ds.loss[0, 0])) < 1e-6


def test_fewer_neurons_than_index_vectors_each_learn_their_own():
    """n < k: h3, k = 3, n = 2, d = 1e4, seeds 1 and 3 stopped with status 0 at loss 2.55
    (both neurons on one index vector); the flow went on to loss 1 (one neuron per index
    vector). A candidate now needs min(n, k) index vectors learned."""
    ds = pipeline.simulate({"teacher": "h3", "d": 1e4, "k": 3, "n": 2, "loss": "mse",
                            "t_max": 1e18}, [1, 3])
    assert bool((ds.status == CONVERGED).all())
    np.testing.assert_allclose(ds.loss.isel(neuron=0), 1.0, atol=1e-6)


def test_learned_directions_use_the_coordinates_in_the_index_basis():
    """With correlated index vectors (beta = 0.6) a neuron on v_1 has M = (1, 0.6): v_2 is
    not learned until a neuron is on it (the coordinates A^-1 M, not M)."""
    A = np.array([[1.0, 0.6], [0.6, 1.0]])
    a = get_activation("h3").coefficients
    args = mse.reduced_args(A, a, a, 3, 3)
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    M = np.array([[1.0, 0.6], [0.3, 0.3], [0.01, 0.02]])  # v_1; in between; at the saddle
    z = np.zeros((3, 3))
    z[1, 0] = np.sqrt(1.0 - 0.3 * 0.3 * 2 / 1.6)
    z[2, 1] = 1.0
    y = mse.pack_reduced(M, z.T)
    assert mse._learned_directions(dynamics.MSE_REDUCED, y, args, work, 0.5) == 1
    M[2] = A[1]  # a neuron on v_2
    z[2] = 0.0
    assert mse._learned_directions(dynamics.MSE_REDUCED, mse.pack_reduced(M, z.T), args,
                                   work, 0.5) == 2


def test_round_off_scales_per_neuron_bound_each_rows_round_off():
    """``row_scales`` (the stage's round-off floor, per neuron): every row's plain-field
    round-off, measured against the double-double field, is within ``eps`` times its scale;
    and a neuron at the saddle (overlaps ~1e-6, d = 1e12) has a scale ~1e-6 of the converged
    neurons', whose O(1) terms set the one floor of all rows before."""
    a = get_activation("h3").coefficients
    n = 6
    args = mse.reduced_args(np.eye(K), a, a, n, n)
    rng = np.random.default_rng(5)
    M = 1e-6 * rng.standard_normal((n, K))
    M[0], M[1] = [0.999, 0.01], [0.02, -0.998]  # two neurons at (near) rest on v1, v2
    M[2], M[3] = [0.3, 0.1], [-0.3, -0.1]  # an antipodal pair (their terms cancel)
    z = np.linalg.qr(rng.standard_normal((n, n)))[0]  # row i: neuron i's perp coordinates
    z[3] = -z[2]
    z *= np.sqrt(1.0 - np.sum(M ** 2, axis=1))[:, None]
    y = mse.pack_reduced(M, z.T)
    work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
    plain, exact = np.empty(y.size), np.empty(y.size)
    mse.reduced_field_accurate(y, args, work, exact)
    dynamics.vector_field(dynamics.MSE_REDUCED, y, args, work, plain)
    scales = np.empty(n)
    top = row_scales(dynamics.MSE_REDUCED, y, args, work, scales)
    assert top == scales.max()
    err = np.abs(plain - exact).reshape(n, -1).max(axis=1)
    eps = np.finfo(float).eps
    assert np.all(err <= 2 * eps * scales), (err, scales)
    assert scales[4:].max() < 1e-4 * scales[:4].min(), scales


def test_closed_form_jacobian():
    """The closed-form Jacobian of the reduced field against central differences, on random
    states (not at rest) of odd and even activations, rank-deficient perp part included."""
    rng = np.random.default_rng(0)
    for teacher, n, m in [("h3", 3, 3), ("h4", 5, 5), ("h3", 4, 1)]:
        a = get_activation(teacher).coefficients
        gram = np.array([[1.0, 0.2], [0.2, 1.0]])
        args = mse.reduced_args(gram, a, a, n, m)
        y = 0.4 * rng.standard_normal(n * (K + m))
        work = np.empty(dynamics.work_size(dynamics.MSE_REDUCED, args))
        J = np.empty((y.size, y.size))
        reduced_jacobian(y, args, work, np.empty(y.size), J)
        central = np.empty_like(J)
        for j in range(y.size):
            e = np.zeros(y.size)
            e[j] = 1e-6
            central[:, j] = (dynamics_field(y + e, args, work)
                             - dynamics_field(y - e, args, work)) / 2e-6
        np.testing.assert_allclose(J, central, atol=1e-7 * max(1.0, np.abs(J).max()))


@pytest.mark.parametrize("N", [1, 5, 8, 17, 120])
def test_blocked_lu_solves(N):
    """The stage's blocked LU and its solves against numpy's LAPACK solve, for sizes below,
    at and off multiples of the panel width, with pivoting needed (a zero diagonal); a
    singular matrix is reported, not factored."""
    rng = np.random.default_rng(N)
    W = rng.standard_normal((N, N))
    W[0, 0] = 0.0 if N > 1 else 0.5
    b = rng.standard_normal(N)
    F, piv, x = W.copy(), np.empty(N, dtype=np.int64), b.copy()
    assert _lu(F, piv)
    _lu_solve(F, piv, x)
    np.testing.assert_allclose(x, np.linalg.solve(W, b), rtol=1e-9, atol=1e-9 * np.abs(x).max())
    S = W.copy()
    S[:, N // 2] = 0.0  # stays zero under elimination: a zero pivot column
    assert not _lu(S, piv)


def test_stage_is_deterministic_across_threads_and_batches():
    """The compiled stage gives the same bits for any thread count and batch composition."""
    model, args, y0, _ = _batch("h3", 10, 1e9, 4)
    one = solve(model, y0, args, threads=1)
    two = solve(model, y0, args, threads=2)
    alone = solve(model, y0[2:3], args, threads=1)
    for other in (two,):
        np.testing.assert_array_equal(other.y, one.y)
        np.testing.assert_array_equal(other.t_final, one.t_final)
        np.testing.assert_array_equal(other.steps, one.steps)
    np.testing.assert_array_equal(alone.y[0], one.y[2])
    np.testing.assert_array_equal(alone.escape_time[0], one.escape_time[2])


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["h3", "h4"])
def test_outcome_does_not_depend_on_d(teacher):
    """Same seeds, same sqrt(d) u law: the fraction ending at loss < 1e-6 agrees across d
    within binomial noise (a two-sided 3-sigma band around the pooled fraction)."""
    fractions = []
    for d in (1e6, 1e9, 1e12):
        ds = pipeline.simulate({"teacher": teacher, "d": d, "k": K, "n": 10, "loss": "mse",
                                "t_max": 1e16}, 16)
        fractions.append(float((ds.loss.isel(neuron=0) < 1e-6).mean()))
    print(f"\n{teacher}: fraction at loss < 1e-6 at d = 1e6, 1e9, 1e12: {fractions}")
    pooled = np.mean(fractions)
    band = 3 * np.sqrt(max(pooled * (1 - pooled), 1 / 16) / 16)
    assert max(fractions) - min(fractions) <= 2 * band, fractions


def test_late_escape_in_the_stage_is_not_a_collapsed_step():
    """MSE, n = k = 1, h3: an overlap u0 = 3e-15 grows like du/dt = 6 u^2 (1 + O(u)) and
    escapes at t = 1 / (6 u0) + O(1) ~ 5.6e13, where the O(1) steps of the escape are below
    8 ulp of t. Both paths (Dormand-Prince then the stage; Rosenbrock from t = 0) ended it
    as a collapsed step (status 3, every number finite, loss ~1). Now the window confirms
    the rest point (status 0, loss 0) and the escape time is the closed form's."""
    a = get_activation("h3").coefficients
    args = mse.reduced_args(np.eye(1), a, a, 1, 1)
    u0 = 3e-15
    y0 = mse.pack_reduced(np.array([[[u0]]]), np.array([[[1e-3]]]))
    for integrator in ("auto", "implicit"):
        # atol far below u0: the slow growth is then accurate relative to u itself.
        r = solve(dynamics.MSE_REDUCED, y0, args, tolerances=Tolerances(1e-10, 1e-30),
                  stop=StopRule(t_max=1e17), integrator=integrator)
        assert int(r.status[0]) == CONVERGED, integrator
        assert mse.mse_loss(dynamics.MSE_REDUCED, r.y[0], args) < 1e-9
        np.testing.assert_allclose(r.escape_time[0, 0], 1.0 / (6.0 * u0), rtol=1e-9)


def test_window_at_rest_takes_few_steps():
    """A verification window at rest late in time costs a few Rosenbrock steps at any d.

    From a confirmed rest point of d = 1e12 (h3, n = 10), restarted at t = 1e11 so that its
    window is [1e11, 1e12]: with the plain field the round-off of the velocity (~eps times
    its O(1) terms, ~1e-15) carried along the neutral directions grew with h until it filled
    the capped round-off floor, which held h at ~3e8, and the window took ~3,000 steps (the
    last window of a typical d = 1e12 seed: ~1,000 of its ~5,000 steps) while the state
    drifted. The double-double field of the long steps (``stiff.py``) lets h grow with t and
    the state stays put."""
    model, args, y0, _ = _batch("h3", 10, 1e12, 4)
    # Seed 3 ends with two antipodal pairs at O(1) overlaps (their terms cancel in the
    # velocity); the old stage took 3,008 steps here and moved the state by 2.4e-5.
    r = solve(model, y0[3:4], args, stop=StopRule(t_max=1e16))
    assert int(r.status[0]) == CONVERGED
    y, t_esc = r.y[0].copy(), r.escape_time[0].copy()
    stats = np.zeros(stiff.N_STATS)
    t, steps, status = stiff.finish(model, y, 1e11, 0, args, 1e-8, np.full(y.size, 1e-12),
                                    1e16, 10**6, 1e-6, 0.5, 1e-7, np.zeros(0),
                                    np.empty((0, 21)), t_esc, stiff.SWITCHING, stats)
    assert status == CONVERGED and t >= 1e12
    assert steps < 100, steps
    np.testing.assert_allclose(y, r.y[0], rtol=0, atol=1e-8)
