"""Adaptive sweeps (sweeps/refine.py, analysis/refine.py): the [refine] syntax, the decisions,
and refinement rounds into one store (bisection of beta_f, resume after SIGKILL)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from analysis.bifurcation import BifurcationPoint
from analysis.refine import median_escape_time, wilson
from analysis.tables import analyze
from pipeline.store import open_results
from sweeps.refine import Estimate, Rule, bisect_step, densify_step, midpoint
from sweeps.spec import parse_spec

from conftest import cli, data_bytes, interrupt_cli

K2 = """
name = "refine-k2"
seeds = 4
block_seeds = 4
[params]
d = 1000
n = 1
init = "positive"
teacher = "h3"
k = 2
[grid]
beta = {linspace = [0.0, 0.72, 3]}
[observe]
gtol = 1e-6
t_max = 1e7
"""
RULE = """[refine]
max_seeds = 32
beta = {bisect = "fraction_at_average >= 0.5", tol = 1e-3}
"""
#: beta_f of h3, k = 2 (d = 1000, positive init) as measured on a dense grid of 1e-4 steps:
#: 0.333 < beta_f <= 0.334 (beta_c = 1/3 plus the small gap of Figure 2).
BETA_F = (0.333, 0.334)


def _write(tmp_path: Path, text: str, name: str = "spec.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _computed(store: str) -> int:
    """Trajectories actually in the store (seeds whose status is not -1 = missing)."""
    status = open_results(store)["status"].values
    return int((status != -1).any(axis=-1).sum())


def _plan(store: str) -> dict:
    return json.loads((Path(store) / "_mimflow" / "refine.json").read_text())


# --- syntax ----------------------------------------------------------------------------------

BAD_RULES = [
    ('beta = {bisect = "fraction_at_average >= 0.5"}', "refine.beta.tol"),
    ('beta = {bisect = "fraction_at_average >= 0.5", tol = -1.0}', "refine.beta.tol"),
    ('beta = {bisect = "frac >= 0.5", tol = 1e-3}', "refine.beta.bisect"),
    ('beta = {bisect = "fraction_at_average >= 1.5", tol = 1e-3}', "refine.beta.bisect"),
    ('beta = {bisect = "fraction_at_average => 0.5", tol = 1e-3}', "refine.beta.bisect"),
    ('beta = {bisect = "fraction_at_average >= 0.5", tol = 1e-3, step = 2}',
     "refine.beta.step"),
    ('d = {bisect = "fraction_at_average >= 0.5", tol = 1e-3}', "refine.d"),
    ('beta = {densify = "median_escape_time", points = 0}', "refine.beta.points"),
    ('beta = {densify = "mean_escape_time", points = 3}', "refine.beta.densify"),
    ('beta = {densify = "median_escape_time", points = 3, scale = "cubic"}',
     "refine.beta.scale"),
    ("beta = 0.5", "refine.beta"),
    ('max_seeds = 6\nbeta = {bisect = "fraction_at_average >= 0.5", tol = 1e-3}',
     "refine.max_seeds"),
    ('max_seeds = 2\nbeta = {bisect = "fraction_at_average >= 0.5", tol = 1e-3}',
     "refine.max_seeds"),
    ('max_rounds = 0\nbeta = {bisect = "fraction_at_average >= 0.5", tol = 1e-3}',
     "refine.max_rounds"),
    ("max_seeds = 8", "refine"),
]


@pytest.mark.parametrize(("rule", "field"), BAD_RULES)
def test_invalid_refine_rules_exit_2_naming_the_field(tmp_path, rule, field):
    path = _write(tmp_path, K2 + "[refine]\n" + rule + "\n")
    code, _, err = cli("validate", path)
    assert code == 2, err
    assert f"invalid {field} = " in err, err
    assert "allowed is" in err


@pytest.mark.parametrize("setting", ["unit_points = 2", "unit_seeds = 8"])
def test_work_unit_settings_are_refused_in_a_refined_spec(tmp_path, setting):
    """A later round adds seed blocks to single points, so a refined sweep's units are single
    blocks (no shard is ever rewritten); a unit size in its spec is refused by name."""
    path = _write(tmp_path, K2.replace("block_seeds = 4\n", f"block_seeds = 4\n{setting}\n")
                  + RULE)
    code, _, err = cli("validate", path)
    assert code == 2, err
    assert f"invalid {setting.split()[0]} = " in err and "[refine]" in err, err


def test_a_refined_sweep_runs_only_its_planned_single_block_units():
    from pipeline.store import Layout
    from sweeps.refine import Plan, RefinedSpec

    first = RefinedSpec(parse_spec(K2 + RULE), Plan.first(parse_spec(K2 + RULE)))
    layout = Layout.for_spec(first)
    assert layout.grid == (1, 4) and layout.seeds == 32
    assert [u.id for u in layout.units()] == [b.id for b in first.blocks]
    assert layout.n_units == len(first.blocks) == 3  # 4 of 32 seeds at each of 3 points


def test_invalid_rule_is_refused_by_run_before_anything_is_written(tmp_path):
    path = _write(tmp_path, K2 + '[refine]\nbeta = {bisect = "x >= 0.5", tol = 1e-3}\n')
    code, _, err = cli("run", path, "--store", str(tmp_path / "s.zarr"))
    assert code == 2 and "refine.beta.bisect" in err
    assert not (tmp_path / "s.zarr").exists()


def test_valid_rules_parse_and_the_seed_axis_is_max_seeds():
    spec = parse_spec(K2 + RULE)
    assert spec.refine.rule == Rule("beta", "bisect", "fraction_at_average", ">=", 0.5,
                                    tol=1e-3)
    assert (spec.refine.seeds, spec.seeds) == (4, 32)
    other = parse_spec(K2 + RULE.replace("tol = 1e-3", "tol = 1e-2"))
    assert other.hash != spec.hash  # the rule decides the stored points
    assert parse_spec(K2).hash != spec.hash


# --- decisions -------------------------------------------------------------------------------

@pytest.mark.parametrize("x_star", [0.05, 0.3333, 0.61, 0.7199])
def test_bisection_of_a_sharp_threshold_brackets_it_within_tol(x_star):
    # a sharp threshold at x_star: fraction 0 below, 1 at and above
    rule = Rule("beta", "bisect", "fraction_at_average", ">=", 0.5, tol=1e-3)
    seeds = {0.0: 4, 0.36: 4, 0.72: 4}
    for _ in range(40):
        xs = sorted(seeds)
        est = [wilson(seeds[x] if x >= x_star else 0, seeds[x]) for x in xs]
        d = bisect_step(rule, xs, est, xs, 32)
        if not d.values and not d.more_seeds:
            break
        seeds.update({x: 4 for x in d.values})
        seeds.update({x: 32 for x in d.more_seeds})
    assert d.outcome["status"] == "bracketed"
    assert seeds[d.outcome["lo"]] == seeds[d.outcome["hi"]] == 32  # both ends confirmed
    assert d.outcome["lo"] < x_star <= d.outcome["hi"]
    assert d.outcome["hi"] - d.outcome["lo"] <= 1e-3
    assert len(xs) <= 3 + math.ceil(math.log2(0.36 / 1e-3))


def test_an_undecided_point_gets_seeds_then_is_flagged_with_the_certain_bracket():
    rule = Rule("beta", "bisect", "fraction_at_average", ">=", 0.5, tol=1e-3)
    xs = [0.0, 0.3, 0.6]
    est = [wilson(0, 8), wilson(4, 8), wilson(8, 8)]  # 0.5 at 0.3: its interval holds 0.5
    d = bisect_step(rule, xs, est, [10, 11, 12], 32)
    assert d.more_seeds == [11] and not d.values and d.outcome["status"] == "adding_seeds"
    est[1] = wilson(16, 32)
    d = bisect_step(rule, xs, est, [10, 11, 12], 32)
    # at max seeds: the gaps on both sides of the undecided point are bisected
    assert not d.more_seeds and d.values == [0.15, 0.45]
    assert d.outcome["status"] == "narrowing"
    xs, est = [0.0, 0.2995, 0.3, 0.3005], [wilson(0, 32), wilson(0, 8), wilson(16, 32),
                                           wilson(32, 32)]
    d = bisect_step(rule, xs, est, [10, 11, 12, 13], 32)
    assert d.more_seeds == [11] and d.outcome["status"] == "confirming"
    est[1] = wilson(0, 32)
    d = bisect_step(rule, xs, est, [10, 11, 12, 13], 32)
    assert not d.more_seeds and not d.values
    assert d.outcome == {"lo": 0.2995, "hi": 0.3005, "status": "undecided",
                         "note": "undecided at max_seeds at 0.3"}
    xs, est = [0.0, 0.299, 0.3, 0.3005], [wilson(0, 32), wilson(0, 32), wilson(16, 32),
                                          wilson(32, 32)]
    d = bisect_step(rule, xs, est, [10, 11, 12, 13], 32)
    assert d.outcome["status"] == "undecided"  # 0.0015 wide, but each gap is within tol


def test_a_non_monotone_condition_is_flagged_not_bracketed():
    rule = Rule("beta", "bisect", "fraction_at_average", ">=", 0.5, tol=1e-3)
    est = [wilson(0, 8), wilson(8, 8), wilson(0, 8)]
    d = bisect_step(rule, [0.0, 0.3, 0.6], est, [0, 1, 2], 8)
    assert d.outcome["status"] == "non_monotone" and d.outcome["lo"] is None
    assert not d.values


def test_no_crossing_in_the_range_says_so():
    rule = Rule("beta", "bisect", "fraction_at_average", ">=", 0.5, tol=1e-3)
    d = bisect_step(rule, [0.0, 0.3], [wilson(0, 8), wilson(0, 8)], [0, 1], 8)
    assert d.outcome == {"lo": 0.3, "hi": None, "status": "no_crossing"}


def test_densify_splits_the_segment_where_the_statistic_jumps():
    rule = Rule("d", "densify", "median_escape_time", points=2, scale="log")
    xs = [100, 1000, 10000, 100000]
    est = [Estimate(v, v, v, 8) for v in (1.0, 1.1, 9.0, 9.5)]
    d = densify_step(rule, xs, est, added=0)
    assert d.values == [3162]  # geometric midpoint of the jump, an integer d
    assert densify_step(rule, xs, est, added=2).outcome["status"] == "done"
    assert midpoint(Rule("beta", "bisect", "x"), 0.1, 0.2) == 0.15


def test_median_interval_covers_the_median_of_a_known_distribution():
    # Exponential(1) escape times: the median is log 2; the order-statistic interval covers
    # it in about 95% of samples (binomial truth), and a never-escaped neuron counts as inf.
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        t = rng.exponential(size=(25, 1))
        e = median_escape_time({}, None, None, t)
        hits += e.lo <= math.log(2) <= e.hi
    assert 0.93 * 400 <= hits <= 0.995 * 400
    e = median_escape_time({}, None, None, np.full((5, 1), np.nan))
    assert e.value == math.inf


@pytest.mark.parametrize(("hits", "total"), [(0, 4), (4, 4), (3, 4), (7, 16), (500, 1000)])
def test_wilson_interval_is_scipys(hits, total):
    ci = binomtest(hits, total).proportion_ci(0.95, "wilson")
    e = wilson(hits, total)
    assert (e.value, e.seeds) == (hits / total, total)
    assert e.lo == pytest.approx(ci.low, abs=1e-12) and e.hi == pytest.approx(ci.high,
                                                                               abs=1e-12)


# --- rounds into one store -------------------------------------------------------------------

def test_bisection_on_k2_h3_brackets_beta_f_with_few_trajectories(tmp_path, scheduler):
    refined, dense = str(tmp_path / "refined.zarr"), str(tmp_path / "dense.zarr")
    code, _, err = cli("run", _write(tmp_path, K2 + RULE), "--store", refined,
                       "--scheduler", scheduler)
    assert code == 0, err
    plan = _plan(refined)
    assert plan["done"]
    (group,) = plan["outcome"]
    lo, hi = group["lo"], group["hi"]
    assert group["status"] == "bracketed" and hi - lo <= 1e-3
    assert lo < BETA_F[1] and hi > BETA_F[0]  # overlaps the measured (0.333, 0.334]

    # The dense grid of the paper's sweep (37 betas, 16 seeds) on the same point.
    dense_text = K2.replace("seeds = 4\nblock_seeds = 4", "seeds = 16\nblock_seeds = 16")
    code, _, err = cli("run", _write(tmp_path, dense_text.replace("0.72, 3", "0.72, 37"),
                                     "dense.toml"), "--store", dense, "--scheduler", scheduler)
    assert code == 0, err
    grid = BifurcationPoint().fit(open_results(dense).load()).summary_.iloc[0]
    assert grid["beta_f_lo"] - 1e-3 <= lo and hi <= grid["beta_f_hi"] + 1e-3
    assert _computed(refined) * 5 < _computed(dense) == 37 * 16

    # analyze reads the refined points: the estimator finds the driver's bracket.
    ds = open_results(refined)
    assert ds.sizes["point"] == 3 + len(plan["added"])
    row = BifurcationPoint().fit(ds.load()).summary_.iloc[0]
    assert (row["beta_f_lo"], row["beta_f_hi"]) == (lo, hi)
    (again,) = analyze(ds.load())["refinement"].to_dict("records")
    assert (again["status"], again["lo"], again["hi"]) == ("bracketed", lo, hi)
    # each point records the round and the rule that created it
    assert list(ds["refine_round"].values[:3]) == [0, 0, 0]
    assert list(ds["refine_round"].values[3:]) == [a["round"] for a in plan["added"]]
    assert set(ds["refine_rule"].values[3:]) == {
        "beta: bisect fraction_at_average >= 0.5, tol 0.001"}

    code, text, _ = cli("status", refined)
    assert code == 0
    n = sum(plan["seeds"]) // 4  # blocks of 4 seeds
    assert f"units:     {n} of {n} done (100%) (planned by the refinement)" in text
    assert "bracketed" in text and "finished" in text and "missing:" not in text

    code, text, _ = cli("run", _write(tmp_path, K2 + RULE), "--store", refined,
                        "--scheduler", scheduler)
    assert code == 0 and _plan(refined) == plan  # a finished refinement stays as it is


def test_sigkill_mid_refinement_then_rerun_gives_the_uninterrupted_store(tmp_path, scheduler):
    spec = _write(tmp_path, K2 + RULE)
    whole, killed = str(tmp_path / "whole.zarr"), str(tmp_path / "killed.zarr")
    code, _, err = cli("run", spec, "--store", whole, "--scheduler", scheduler)
    assert code == 0, err

    # Five blocks pass the gate (rounds 0, 1 and 2); the block of round 3 writes its data
    # and is held before its marker: the driver is killed there, mid-round.
    gate = tmp_path / "gate"
    gate.write_text("5")
    held = tmp_path / "gate-held"
    code, text = interrupt_cli(["run", spec, "--store", killed, "--workers", "1"],
                               lambda: held.exists() and any(held.iterdir()),
                               env={"MIMFLOW_TEST_GATE": str(gate)}, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL, text
    assert _plan(killed)["round"] == 3 and not _plan(killed)["done"]
    gate.unlink()

    code, _, err = cli("run", spec, "--store", killed, "--scheduler", scheduler)
    assert code == 0, err
    assert _plan(killed) == _plan(whole)
    assert data_bytes(killed) == data_bytes(whole)
    a, b = open_results(killed), open_results(whole)
    for name in ("beta", "point_hash", "refine_round", "refine_rule"):
        assert list(a[name].values) == list(b[name].values)


def test_densify_adds_its_budget_of_points_along_d(tmp_path, scheduler):
    text = """
name = "refine-d"
seeds = 8
block_seeds = 8
[params]
teacher = "h3"
k = 2
n = 1
[grid]
d = [100, 1000, 10000]
[observe]
t_max = 1e6
[refine]
d = {densify = "median_escape_time", points = 3, scale = "log"}
"""
    store = str(tmp_path / "d.zarr")
    code, _, err = cli("run", _write(tmp_path, text), "--store", store, "--scheduler", scheduler)
    assert code == 0, err
    plan = _plan(store)
    assert plan["done"] and len(plan["added"]) == 3
    values = [a["value"] for a in plan["added"]]
    assert all(isinstance(v, int) and 100 < v < 10000 for v in values)
    assert len(set(values)) == 3
    # the escape time grows like sqrt(d) (p* = 3): the biggest jump, hence the first new
    # point, is in the upper decade
    assert values[0] == 3162
    assert open_results(store).sizes["point"] == 6


def test_extend_points_grows_the_store_once_and_refuses_other_points(tmp_path):
    from pipeline import store as zstore
    from pipeline.errors import SpecError
    from pipeline.ledger import StoreRef
    from pipeline.preflight import store_attrs
    from sweeps.refine import Added, Plan, RefinedSpec

    spec = parse_spec(K2 + RULE)
    ref = StoreRef.parse(str(tmp_path / "s.zarr"))
    first = RefinedSpec(spec, Plan.first(spec))
    zstore.create(ref, first, store_attrs(first))
    grown = RefinedSpec(spec, Plan(1, (Added(0.18, 0, 1),), (4, 4, 4, 4)))
    assert zstore.extend_points(ref, grown, grown.provenance())
    assert not zstore.extend_points(ref, grown, grown.provenance())  # idempotent
    ds = open_results(str(tmp_path / "s.zarr"))
    assert ds.sizes == {**ds.sizes, "point": 4, "seed": 32}
    assert list(ds["beta"].values) == [0.0, 0.36, 0.72, 0.18]
    assert list(ds["refine_round"].values) == [0, 0, 0, 1]
    assert (ds["status"].values == -1).all()  # nothing computed yet: all missing
    other = RefinedSpec(spec, Plan(1, (Added(0.2, 0, 1),), (4, 4, 4, 4)))
    with pytest.raises(SpecError, match="first points"):
        zstore.extend_points(ref, RefinedSpec(parse_spec(K2.replace("0.72, 3", "0.7, 3")
                                                         + RULE), other.plan))
