"""The main job end to end on tiny versions of the paper sweeps, and `mimflow analyze`."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.reproduce import analyze, default_specs, reproduce
from pipeline.cli import main
from pipeline.store import open_results
from sweeps.spec import load_spec

TINY = {
    "paper-fig2-bifurcation": """
name = "paper-fig2-bifurcation"
description = "tiny Figure 2"
seeds = 4
block_seeds = 4
[params]
teacher = "h3"
d = 200
k = 2
init = "positive"
[grid]
beta = [0.2, 0.3, 0.4, 0.5]
""",
    "beta-f-vs-k": """
name = "beta-f-vs-k"
description = "tiny refined beta_f against k"
seeds = 4
block_seeds = 4
[params]
d = 200
n = 1
init = "positive"
[grid]
teacher = ["h3"]
k = [2, 3]
beta = {linspace = [0.0, 0.72, 3]}
[refine]
max_seeds = 8
beta = {bisect = "fraction_at_average >= 0.5", tol = 1e-2}
""",
    "coupon-collector": """
name = "coupon-collector"
description = "tiny coupon collector"
seeds = 8
block_seeds = 4
[params]
teacher = "h3"
d = 200
init = "positive"
[grid]
k = [2, 3]
gamma = [1.0, 2.0]
""",
    "sgd-sample-complexity": """
name = "sgd-sample-complexity"
description = "tiny SGD sample complexity"
seeds = 8
block_seeds = 8
[params]
method = "sgd"
teacher = "h3"
k = 1
init = "positive"
lr = {scale = 0.5, d_power = -1.5}
[grid]
d = [10, 31, 100]
[observe]
gtol = 1e3
""",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    specs = []
    for name, text in TINY.items():
        path = root / f"{name}.toml"
        path.write_text(text)
        specs.append(path)
    out = root / "out"
    report = reproduce(out, workers=1, specs=specs)
    return out, report


def test_reproduce_writes_stores_tables_figures_and_report(run):
    out, report = run
    assert report == out / "report.md"
    text = report.read_text()
    for heading in ("Theorem 3.2", "coupon-collector failure", "Figure 2"):
        assert heading in text
    assert (out / "stores" / "coupon-collector.zarr").is_dir()
    coupon = pd.read_csv(out / "tables" / "coupon-collector__coupon.csv")
    assert set(coupon["k"]) == {2, 3} and (coupon["seeds"] == 8).all()
    for fig in ("figure2", "coupon", "figure6", "hessian"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000
        assert (out / "figures" / f"{fig}.pdf").read_bytes()[:4] == b"%PDF"
    assert "![paper-fig2-bifurcation](figures/figure2.png)" in text
    # The refined sweep: brackets within tol, with their status, in the report and tables.
    refinement = pd.read_csv(out / "tables" / "beta-f-vs-k__refinement.csv")
    assert list(refinement["status"]) == ["bracketed", "bracketed"]
    assert ((refinement["hi"] - refinement["lo"]) <= 1e-2).all()
    assert "| bracketed |" in text or "bracketed" in text.split("Beyond the paper: beta_f")[1]
    assert (out / "figures" / "beta_f_vs_k.png").stat().st_size > 10_000
    # Online SGD: samples (never times) in their own table and figure.
    assert "Samples to escape against d" in text
    samples = pd.read_csv(out / "tables" / "sgd-sample-complexity__samples_summary.csv")
    assert samples["theory_alpha"].tolist() == [2.0]
    assert not (out / "tables" / "sgd-sample-complexity__escape_summary.csv").exists()
    assert (out / "figures" / "sgd_sample_complexity.png").stat().st_size > 10_000


def test_reproduce_resumes_without_recomputing(run, capsys):
    out, _ = run
    specs = sorted(p for p in out.parent.glob("*.toml"))
    reproduce(out, workers=1, specs=specs)
    err = capsys.readouterr().err
    assert err.count("nothing to do, every work unit is in the store") == len(TINY)


def test_analyze_picks_the_estimators_that_apply(run, capsys):
    out, _ = run
    tables = analyze(open_results(str(out / "stores" / "paper-fig2-bifurcation.zarr")).load())
    assert set(tables) == {"status", "beta_f", "beta_f_fractions"}
    assert tables["beta_f"]["beta_c"].iloc[0] == pytest.approx(1 / 3)
    code = main(["analyze", str(out / "stores" / "coupon-collector.zarr")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "== coupon ==" in printed and "== status ==" in printed


def test_paper_specs_are_valid_and_named_for_their_figures():
    from analysis.reproduce import FIGURES

    names = {load_spec(p).name for p in default_specs()}
    assert set(FIGURES) <= names
    assert len(names) == len(default_specs())


def test_k_table_reports_beta_c_of_the_sweeps_own_teacher():
    # an h4 k-sweep: beta_c = (p* - 2) / (k + p* - 2) with p* = 4, not the paper's h3 value
    from analysis._testing import simulate_points
    from analysis.tables import k_table
    from analysis.theory import beta_c

    points = [{"teacher": "h4", "d": 200, "k": k, "beta": beta, "t_max": 1e4}
              for k in (2, 3) for beta in (0.1, 0.6)]
    table = k_table(simulate_points(points, 2))
    assert list(table["p_star"]) == [4] * 4 and list(table["teacher"]) == ["h4"] * 4
    assert table["beta_c"].tolist() == [beta_c(4, k) for k in table["k"]]
    assert beta_c(4, 2) == 0.5 and beta_c(4, 3) == 0.4
    assert table["beta_above_beta_c"].tolist() == [b > beta_c(4, k) for b, k in
                                                    zip(table["beta"], table["k"], strict=True)]
