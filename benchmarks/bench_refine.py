"""Adaptive-sweep benchmark (issue 14): beta_f located by bisection to +-1e-3 against a dense
beta grid at +-1e-2, in the same run, on the same LocalCluster.

    python benchmarks/bench_refine.py [--k 2 3 4 ... 20] [--teachers h3 h4 h5] [--workers 2]

* dense: the beta grid 0, 0.02, ..., 0.72 (37 values, bracket width 0.02, i.e. +-1e-2) with
  16 seeds per point, as the paper's beta-f-vs-k sweep ran before, one ``run_sweep``;
* refined: the grid 0, 0.18, ..., 0.72 (5 values) with 4 seeds per point, then rounds of
  bisection to a bracket of width <= 1e-3 (undecided points get up to 32 seeds),
  ``analysis.refine.run_refined``. Its bracket is the certain one (95% Wilson intervals on
  both sides); where the fraction crosses 1/2 slowly, 32 seeds cannot place the points near
  beta_f and the group ends ``undecided`` with a bracket wider than 1e-3. The dense grid's
  bracket is ``BifurcationPoint``'s, from point estimates at 16 seeds.

Both start after the cluster is up and the kernels are loaded. Reported: trajectories actually
computed (status != -1 in the store), wall time, and per group both brackets and whether they
overlap (they must: both hold beta_f). The
default is the full set of the issue, k = 2..20 and p* = 3, 4, 5.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
name = "bench-beta-f-{kind}"
seeds = {seeds}
block_seeds = 4
[params]
d = 1000
n = 1
init = "positive"
[grid]
teacher = {teachers}
k = {ks}
beta = {{linspace = [0.0, 0.72, {betas}]}}
[observe]
gtol = 1e-6
t_max = 1e7
"""

REFINE = """
[refine]
max_seeds = 32
beta = {bisect = "fraction_at_average >= 0.5", tol = 1e-3}
"""


def _computed(store: str) -> int:
    from pipeline.store import open_results

    status = open_results(store)["status"].values
    return int((status != -1).any(axis=-1).sum())


def main() -> None:
    """Run both sweeps and print the comparison."""
    import numpy as np
    import pandas as pd
    from distributed import Client, LocalCluster

    from analysis.bifurcation import BifurcationPoint
    from analysis.refine import run_refined
    from pipeline.execute import run_sweep
    from pipeline.store import open_results
    from pipeline.warmup import sweep_kinds, warm_cluster
    from sweeps.spec import parse_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=list(range(2, 21)))
    ap.add_argument("--teachers", nargs="+", default=["h3", "h4", "h5"])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    common = {"teachers": str(args.teachers).replace("'", '"'), "ks": str(args.k)}
    dense = parse_spec(SPEC.format(kind="dense", seeds=16, betas=37, **common))
    refined = parse_spec(SPEC.format(kind="refined", seeds=4, betas=5, **common) + REFINE)
    tmp = Path(tempfile.mkdtemp(prefix="bench-refine-"))
    log = open(tmp / "log.txt", "w")  # noqa: SIM115 - the runs' progress, kept out of sight
    try:
        with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                          dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            warm_cluster(client, sweep_kinds(dense), False, log)
            t0 = time.perf_counter()
            run_sweep(dense, str(tmp / "dense.zarr"), client=client, out=log)
            t_dense = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = run_refined(refined, str(tmp / "refined.zarr"), client=client, out=log)
            t_refined = time.perf_counter() - t0
        a = BifurcationPoint().fit(open_results(str(tmp / "dense.zarr")).load()).summary_
        # The refinement's bracket is the certain one: the last beta where the fraction is
        # surely below 1/2 and the first where it is surely above (95% Wilson intervals).
        b = pd.DataFrame(report.plan.outcome).rename(
            columns={"lo": "beta_f_lo_refined", "hi": "beta_f_hi_refined"})
        keys = ["teacher", "k"]
        both = a[keys + ["p_star", "beta_c", "beta_f_lo", "beta_f_hi"]].rename(
            columns={"beta_f_lo": "beta_f_lo_dense", "beta_f_hi": "beta_f_hi_dense"}).merge(
            b[keys + ["beta_f_lo_refined", "beta_f_hi_refined", "status"]], on=keys)
        # Both brackets hold beta_f, so they must overlap (the refined one may stick out of
        # the dense one by less than its width when beta_f sits on a dense grid value).
        both["consistent"] = (np.maximum(both["beta_f_lo_refined"], both["beta_f_lo_dense"])
                              < np.minimum(both["beta_f_hi_refined"], both["beta_f_hi_dense"]))
        both["width_refined"] = both["beta_f_hi_refined"] - both["beta_f_lo_refined"]
        with pd.option_context("display.width", 200, "display.max_rows", 200):
            print(both.to_string(index=False))
        n_dense = _computed(str(tmp / "dense.zarr"))
        n_refined = _computed(str(tmp / "refined.zarr"))
        print(f"\ngroups: {len(both)} (teachers {args.teachers}, k {args.k}); refined brackets "
              f"consistent with the dense ones: {int(both['consistent'].sum())} of {len(both)}; "
              f"widest refined bracket {both['width_refined'].max():.2g}; statuses: "
              f"{both['status'].value_counts().to_dict()}")
        print(f"dense grid  (+-1e-2): {n_dense:6d} trajectories, {t_dense:7.1f} s")
        print(f"refined     (+-1e-3): {n_refined:6d} trajectories, {t_refined:7.1f} s "
              f"({report.rounds} rounds)")
        print(f"ratio refined/dense:  trajectories {n_refined / n_dense:.3f}, wall time "
              f"{t_refined / t_dense:.3f}")
    finally:
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
