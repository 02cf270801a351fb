"""The analysis estimators on small simulated sweeps, against the paper's predictions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from analysis._testing import simulate_points
from analysis.bifurcation import BifurcationPoint, bisect_beta_f
from analysis.coupon import CouponCollector
from analysis.escape import EscapeScaling, SampleComplexity
from analysis.theory import beta_c


@pytest.fixture(scope="module")
def escape_sweep():
    points = [{"teacher": t, "d": int(d), "k": 2, "init": "positive", "rtol": 1e-7,
               "gtol": 1e-5} for t in ("h2", "h3", "h4") for d in np.logspace(3, 7, 5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_points(points, 200)


def test_escape_exponents_match_theorem_2_1(escape_sweep):
    est = EscapeScaling(n_resamples=500).fit(escape_sweep)
    s = est.summary_.set_index("teacher")
    for teacher, p_star in (("h3", 3), ("h4", 4)):
        assert s.loc[teacher, "alpha"] == pytest.approx(p_star / 2 - 1, abs=0.05)
        assert s.loc[teacher, "alpha_lo"] < s.loc[teacher, "alpha"] < s.loc[teacher, "alpha_hi"]
    assert s.loc["h2", "law"] == "log d"
    assert s.loc["h2", "log_slope"] == pytest.approx(0.25, abs=0.02)
    assert len(est.per_d_) == 15 and (est.per_d_["escaped"] == 1).all()


def test_escape_scaling_returns_self_and_rejects_bad_statistic(escape_sweep):
    est = EscapeScaling()
    assert est.fit(escape_sweep) is est
    with pytest.raises(ValueError, match="statistic"):
        EscapeScaling(statistic="mode").fit(escape_sweep)


@pytest.mark.parametrize("k,gammas", [(2, (1.0, 2.0, 3.0)), (4, (1.0, 2.0, 3.0)),
                                      (8, (2.0, 3.0)), (16, (3.0,))])
def test_coupon_failure_matches_the_exact_probability(k, gammas):
    points = [{"teacher": "h3", "d": 200, "k": k, "gamma": g, "init": "positive",
               "gtol": 1e-5} for g in gammas]
    table = CouponCollector().fit(simulate_points(points, 300)).table_
    for _, row in table.iterrows():
        # Wilson standard error: half-width of the 95% interval / 1.96.
        se = (row["hi"] - row["lo"]) / (2 * 1.96)
        assert abs(row["failure"] - row["exact"]) <= 3 * se + 1e-12, row.to_dict()
        # Proposition 2.2: the failures are exactly those predicted at initialization.
        assert row["failure"] == pytest.approx(row["failure_at_init"])
        assert row["lower_bound"] <= row["exact"] <= row["union_bound"]


def test_bifurcation_grid_brackets_beta_f():
    points = [{"teacher": "h3", "d": 1000, "k": 2, "beta": float(b), "init": "positive"}
              for b in np.linspace(0.2, 0.5, 7)]
    est = BifurcationPoint().fit(simulate_points(points, 32))
    row = est.summary_.iloc[0]
    assert row["beta_c"] == pytest.approx(1 / 3)
    assert row["beta_c_hessian"] == pytest.approx(1 / 3, abs=1e-9)
    assert row["beta_f_lo"] == pytest.approx(0.3) and row["beta_f_hi"] == pytest.approx(0.35)
    assert est.fractions_["at_average"].is_monotonic_increasing


def test_beta_f_sits_just_above_beta_c_for_k2_h3():
    lo, hi = bisect_beta_f({"teacher": "h3", "d": 1000, "k": 2, "init": "positive"}, 48,
                           tol=1e-3)
    bc = beta_c(3, 2)
    # beta_f is in (lo, hi]: no trajectory settles on a strict saddle (beta_f >= beta_c up to
    # the bisection resolution) and the gap is small (the paper's Figure 2).
    assert lo >= bc - 1e-3
    assert hi - bc < 0.05


def _sgd_escape_sweep(teacher, ds, seeds, **extra):
    p_star = int(teacher[1:])
    points = [{"teacher": teacher, "d": int(d), "k": 1, "init": "positive", "method": "sgd",
               "lr": {"scale": 0.5, "d_power": -p_star / 2}, "gtol": 1e3,  # stop at escape
               "max_samples": 10**11, **extra} for d in ds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_points(points, seeds)


def test_sample_complexity_exponent_p3_over_two_decades():
    """Online SGD at lr = 0.5 d^-1.5: samples to escape ~ d^2 (BAJ 2021), d = 10 .. 1000."""
    sweep = _sgd_escape_sweep("h3", np.logspace(1, 3, 5), 64)
    est = SampleComplexity(n_resamples=500).fit(sweep)
    row = est.summary_.iloc[0]
    assert row["theory_alpha"] == 2.0 and row["law"] == "d^2"
    assert row["alpha"] == pytest.approx(2.0, abs=0.15), row.to_dict()
    assert row["alpha_lo"] < row["alpha"] < row["alpha_hi"]
    assert (est.per_d_["escaped"] == 1).all() and len(est.summary_) == 1  # one lr law
    # Flow estimators skip SGD points: escape times are never mixed with sample counts.
    assert EscapeScaling().fit(sweep).summary_.empty


def test_exponent_interval_is_flagged_not_guessed_when_a_seed_starts_escaped():
    """At d = 10 a seed can start past the escape threshold (escape at sample 0): the median
    is still a number, but resamples whose median is 0 have no logarithm. The exponent's
    interval is then undefined, and theory_in_ci says so (None), not False; the per-d table
    counts the seeds that started escaped. No warning leaks from the fit."""
    sweep = _sgd_escape_sweep("h3", [10, 31, 100], 8, escape_threshold=0.5)
    samples = sweep["escape_samples"].values
    assert (samples == 0).any()  # the case under test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = SampleComplexity(n_resamples=200).fit(sweep)
    row = est.summary_.iloc[0]
    assert np.isfinite(row["alpha"])
    assert np.isnan(row["alpha_lo"]) and np.isnan(row["alpha_hi"])
    assert row["theory_in_ci"] is None
    started = est.per_d_.set_index("d")["escaped_at_start"]
    assert started.loc[10] > 0 and started.loc[100] == 0


@pytest.mark.slow
def test_sample_complexity_exponent_p4_over_two_decades():
    """p* = 4 at lr = 0.5 d^-2: samples ~ d^3, d = 10 .. 1000 (the top point is ~2.5e8
    samples per chain: minutes)."""
    sweep = _sgd_escape_sweep("h4", np.logspace(1, 3, 5), 24)
    row = SampleComplexity(n_resamples=500).fit(sweep).summary_.iloc[0]
    assert row["alpha"] == pytest.approx(3.0, abs=0.15), row.to_dict()


def test_sgd_bifurcation_and_coupon_count_chains_at_their_budget():
    """SGD never comes to rest: chains that used their sample budget (status 1) are
    classified, with the looser SGD tolerance, next to the flow points of the same grid."""
    base = {"teacher": "h3", "d": 50, "k": 2, "init": "positive", "lr": 1e-4,
            "max_samples": 300_000, "gtol": 1e-6}
    points = [{**base, "method": m, "beta": b} for m in ("flow", "sgd") for b in (0.2, 0.5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = simulate_points(points, 16)
    frac = BifurcationPoint().fit(sweep).fractions_.set_index(["method", "beta"])["at_average"]
    assert frac[("flow", 0.2)] == 0 and frac[("flow", 0.5)] == 1
    assert frac[("sgd", 0.2)] == 0 and frac[("sgd", 0.5)] > 0.5
    coupon = CouponCollector().fit(sweep.isel(point=[2])).table_
    assert coupon["method"].iloc[0] == "sgd" and coupon["seeds"].iloc[0] == 16
