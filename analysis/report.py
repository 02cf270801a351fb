"""``report.md`` and the files beside it: each store's tables as CSV, its figures, and the
report that puts every theoretical prediction next to the measured value.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from pipeline.engine.status import STATUS_NAMES
from pipeline.provenance import git_revision, utc_now, versions

from . import figures as F
from . import figures_sgd as FS
from .tables import analyze, hessian_table

#: Figure builders by spec name (the `name` field of each sweeps/paper spec). Each is called
#: as ``builder(ds, out, tables=...)``, ``tables`` being :func:`analyze`'s output or None.
FIGURES = {
    "paper-fig1-gd": F.figure1,
    "paper-fig2-bifurcation": F.figure2,
    "paper-fig3-mse-uncollected": F.figure3,
    "paper-fig4-mse-trajectories": F.figure4,
    "paper-fig5-k": F.figure5,
    "escape-scaling": F.figure_escape,
    "coupon-collector": F.figure_coupon,
    "beta-f-vs-k": F.figure_beta_f,
    "sgd-sample-complexity": FS.figure_sample_complexity,
    "sgd-lr-to-flow": FS.figure_lr_to_flow,
}


def write_outputs(out: Path, names: list[str], *, timings: dict[str, float] | None = None,
                  total: float | None = None, stream: TextIO | None = None) -> Path:
    """Analyse the stores ``out/stores/<name>.zarr``: tables, figures and the report."""
    from pipeline.store import open_results

    stream = stream if stream is not None else sys.stderr
    tables_dir, fig_dir = out / "tables", out / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, pd.DataFrame]] = {}
    figures: dict[str, list[Path]] = {}
    for name in names:
        path = out / "stores" / f"{name}.zarr"
        if not path.exists():
            continue
        ds = open_results(str(path)).load()
        tables = analyze(ds)
        for key, df in tables.items():
            df.to_csv(tables_dir / f"{name}__{key}.csv", index=False)
        results[name] = tables
        if name in FIGURES:  # the builder reuses the fits in `tables` instead of refitting
            figures[name] = FIGURES[name](ds, fig_dir, tables=tables)
            stream.write(f"mimflow: figure {figures[name][0]}\n")
    figures["phase-portraits"] = F.figure6(fig_dir)
    figures["hessian"] = F.figure_hessian(fig_dir)
    hess = hessian_table()
    hess.to_csv(tables_dir / "hessian_beta_c.csv", index=False)
    report = out / "report.md"
    report.write_text(_report(results, figures, hess, out, timings or {}, total))
    stream.write(f"mimflow: report {report}\n")
    return report


def _md(df: pd.DataFrame, columns: list[str] | None = None, digits: int = 4) -> str:
    df = df[[c for c in (columns or df.columns) if c in df.columns]]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)

    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return f"{v:.{digits}g}"
        return str(v)

    rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def _img(figures: dict[str, list[Path]], key: str, out: Path) -> str:
    if key not in figures:
        return "_(figure not produced: its store is missing)_\n"
    png = figures[key][0]
    return f"![{key}]({png.relative_to(out)})  \n([PDF]({figures[key][1].relative_to(out)}))\n"


def _sgd_sections(results, figures, out: Path) -> list[str]:
    """Beyond the paper: online SGD beside the flow (the sweeps of ``sweeps/sgd``)."""
    lines = ["## Beyond the paper: online SGD, exact at every d", "",
             "Online SGD on the correlation loss is simulated as an exact Markov chain on "
             "(u, ||P_perp w||): B(k+1) Gaussians and one chi-square per step, whatever d "
             "(docs/design.md §1.4). SGD points count samples; status 1 there means the "
             "sample budget.", "",
             "### Samples to escape against d", "",
             "Prediction (Ben Arous, Gheissari & Jagannath 2021): at lr ~ d^(-p*/2), "
             "n ~ d^(p*-1) samples for p* >= 3 and d log d for p* = 2. Measured: exponent of "
             "the median samples to escape (bootstrap 95% CI), lr = 0.5 d^(-p*/2). The d "
             "ranges are what the reproduce budget allows (for p* = 5 less than a decade, "
             "so finite-d bias dominates there); the right panel puts SGD's escape in "
             "flow time, lr x steps, beside the flow's escape from the same u(0).", ""]
    sc = results.get("sgd-sample-complexity", {}).get("samples_summary")
    if sc is not None and len(sc):
        lines += [_md(sc, ["teacher", "p_star", "d_min", "d_max", "alpha", "alpha_lo",
                           "alpha_hi", "theory_alpha", "law", "deviation"]), ""]
    lines += [_img(figures, "sgd-sample-complexity", out), "",
              "### lr -> 0: SGD approaches the flow at t = lr x steps", "",
              "Same u(0) seed by seed (common random numbers); the RMS distance shrinks "
              "like sqrt(lr) once lr d is small.", "",
              _img(figures, "sgd-lr-to-flow", out), ""]
    bf = results.get("sgd-beta-f", {}).get("beta_f")
    lines += ["### Does SGD noise move beta_f?", "",
              "Flow (converged) and SGD (after its sample budget, t = 30) on one beta grid. An "
              "SGD chain is at the average point when its overlaps agree within 0.1: near "
              "beta_c the direction along the average is flat and the noise spreads them.", ""]
    if bf is not None and len(bf):
        lines += [_md(bf, ["method", "teacher", "k", "d", "beta_f_lo", "beta_f_hi",
                           "beta_c"]), ""]
    cc = results.get("sgd-coupon", {}).get("coupon")
    lines += ["### Coupon collector under SGD", "",
              "Each SGD neuron runs on its own sample stream (independent neurons, as at "
              "initialization); a neuron matches v_j when u_j >= 0.9 at the end.", ""]
    if cc is not None and len(cc):
        lines += [_md(cc, ["method", "k", "n", "gamma", "seeds", "failure", "lo", "hi",
                           "failure_at_init", "exact"]), ""]
    return lines


def _report(results, figures, hess, out: Path, timings: dict[str, float],
            total: float | None) -> str:
    lines = ["# mimflow reproduction report", "",
             f"Generated {utc_now()} (git {git_revision()}); "
             + ", ".join(f"{k} {v}" for k, v in versions().items()), ""]
    if timings:
        lines += ["## Sweeps", "", "| sweep | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
        if total is not None:
            lines.append(f"| **total** | {total:.1f} |")
        lines.append("")

    esc = results.get("escape-scaling", {}).get("escape_summary")
    lines += ["## Theorem 2.1: escape time against d", "",
              "Prediction: `T ~ d^(p*/2 - 1)` for p* >= 3 and `T ~ log d` for p* = 2. Measured: "
              "exponent of the median escape time over d in [1e3, 1e7] (bootstrap 95% CI).", ""]
    if esc is not None and len(esc):
        lines += [_md(esc, ["teacher", "p_star", "k", "beta", "alpha", "alpha_lo", "alpha_hi",
                            "theory_alpha", "deviation", "theory_in_ci", "log_slope"]), "",
                  "The interval holds the statistical error only; over a finite range of d the "
                  "O(1) offset of the escape time biases the slope by about 0.01-0.02, so "
                  "`deviation` is the number to read. For p* = 2 the law is `T = a + b log d`; "
                  "`log_slope` is b (1/4 for h2 with k = 1, where ||u||^2 grows like e^{4t}).",
                  ""]
    lines += [_img(figures, "escape-scaling", out), ""]

    coupon = results.get("coupon-collector", {}).get("coupon")
    lines += ["## Section 2.3: coupon-collector failure against n/k", "",
              "Prediction: P(fail) = exact coupon-collector probability (inclusion-exclusion), "
              "between (1-1/k)^n and k e^(-n/k), tending to e^(-gamma). Measured at convergence "
              "(Wilson 95%); `z` is the distance to the exact value in standard errors. Points "
              "with the same k share their seeds' initial conditions (common random numbers), "
              "so their deviations are correlated, not independent.", ""]
    if coupon is not None:
        lines += [_md(coupon, ["k", "n", "gamma", "seeds", "failure", "lo", "hi", "exact",
                               "lower_bound", "union_bound", "limit", "z"]), ""]
    lines += [_img(figures, "coupon-collector", out), ""]

    lines += ["## Theorem 3.2: beta_c from the Hessian at the average point", "",
              "Prediction: `beta_c = (p*-2)/(k+p*-2)`. Measured: root of the smallest in-span "
              "eigenvalue of the explicit spherical Hessian.", "",
              _md(hess, digits=8), "", _img(figures, "hessian", out), ""]

    bif = results.get("paper-fig2-bifurcation", {}).get("beta_f")
    lines += ["## Figure 2: bifurcation, beta_f against beta_c (k = 2, h3)", ""]
    if bif is not None and len(bif):
        lines += [_md(bif, ["teacher", "k", "p_star", "beta_f_lo", "beta_f_hi", "beta_c",
                            "beta_c_hessian"]), ""]
    lines += [_img(figures, "paper-fig2-bifurcation", out), ""]

    bfk = results.get("beta-f-vs-k", {}).get("beta_f")
    lines += ["## Beyond the paper: beta_f and beta_c against k", "",
              "beta_f is located by bisection to 1e-3 (sweeps/paper/beta_f.toml, "
              "[refine]). (beta_f_lo, beta_f_hi] is the bracket of the point estimates; "
              "(certain_lo, certain_hi] the one the 95% intervals decide on both sides, "
              "wider than 1e-3 where 32 seeds cannot place the points near beta_f "
              "(status undecided). The gap to "
              "beta_c is the measured 'small gap' of Figure 2.", ""]
    if bfk is not None and len(bfk):
        bfk = bfk.assign(gap_hi=bfk["beta_f_hi"] - bfk["beta_c"])
        columns = ["teacher", "p_star", "k", "beta_f_lo", "beta_f_hi", "beta_c", "gap_hi"]
        refinement = results.get("beta-f-vs-k", {}).get("refinement")
        if refinement is not None and {"teacher", "k"} <= set(refinement.columns):
            # The refinement's certain bracket (95% intervals on both sides) and its status:
            # a bracket wider than tol says why (undecided at max seeds, ...).
            bfk = bfk.merge(refinement[["teacher", "k", "lo", "hi", "status"]].rename(
                columns={"lo": "certain_lo", "hi": "certain_hi"}), on=["teacher", "k"],
                how="left")
            columns += ["certain_lo", "certain_hi", "status"]
        lines += [_md(bfk, columns), ""]
    lines += [_img(figures, "beta-f-vs-k", out), ""]

    ktab = results.get("paper-fig5-k", {}).get("k_bifurcation")
    lines += ["## Figure 5: largest overlap at convergence against k", ""]
    if ktab is not None:
        lines += [_md(ktab), ""]
    lines += [_img(figures, "paper-fig5-k", out), ""]

    v2 = results.get("paper-fig3-mse-uncollected", {}).get("v_last_learned")
    lines += ["## Figure 3: MSE collects what the correlation loss cannot", "",
              "Prediction: with v2 collected by no neuron at initialization, no neuron ends "
              "with overlap > 0.9 with v2 under the correlation loss (Proposition 2.2); under "
              "the MSE loss some neuron does.", ""]
    if v2 is not None:
        lines += [_md(v2), ""]
    lines += [_img(figures, "paper-fig3-mse-uncollected", out), "",
              "## Figure 4: correlation vs MSE trajectories and loss curves", "",
              _img(figures, "paper-fig4-mse-trajectories", out), "",
              "## Figure 1: projected GD, k = 2, d = 1000, lr = 0.1", "",
              _img(figures, "paper-fig1-gd", out), "",
              "## Figure 6: phase portraits, d = k = 2", "",
              _img(figures, "phase-portraits", out), ""]

    lines += _sgd_sections(results, figures, out)
    lines += ["## Trajectory status per sweep", ""]
    for name, tables in results.items():
        st = tables["status"]
        totals = st[list(STATUS_NAMES.values())].sum()
        lines.append(f"- {name}: " + ", ".join(f"{k} {int(v)}" for k, v in totals.items()))
    lines.append("")
    return "\n".join(lines)
