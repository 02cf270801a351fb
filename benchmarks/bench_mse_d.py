"""MSE cost against d (issue 9): steps and wall time per trajectory, in one run.

Workload: h3, k = 2, n = 10, uniform init, defaults otherwise, the same seed indices at every
d (the same sqrt(d) u law), one thread:

    python benchmarks/bench_mse_d.py [--seeds 64] [--d 1e3 1e6 1e9 1e12] [--max-steps N]

Printed per d: median and max accepted steps per trajectory, wall seconds per trajectory,
status counts and the fraction of seeds ending at loss < 1e-6. The goal of the issue is a
ratio d = 1e12 / d = 1e3 of at most 2 in median steps and in wall time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pipeline

POINT = {"teacher": "h3", "k": 2, "n": 10, "loss": "mse", "init": "uniform"}


def run(d: float, seeds: int, max_steps: int) -> dict:
    """Simulate ``seeds`` trajectories at dimension ``d``; return the measurements."""
    point = {**POINT, "d": d, "max_steps": max_steps}
    t0 = time.perf_counter()
    ds = pipeline.simulate(point, seeds, threads=1)
    wall = time.perf_counter() - t0
    steps = ds.steps.isel(neuron=0).values
    status = ds.status.isel(neuron=0).values
    return {"d": d, "median_steps": float(np.median(steps)), "max_steps": int(steps.max()),
            "s_per_traj": wall / seeds,
            "status": {int(s): int((status == s).sum()) for s in np.unique(status)},
            "learned": float((ds.loss.isel(neuron=0).values < 1e-6).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--d", type=float, nargs="+", default=[1e3, 1e6, 1e9, 1e12])
    ap.add_argument("--max-steps", type=int, default=1_000_000)
    a = ap.parse_args()
    pipeline.simulate({**POINT, "d": 1e3}, [0], threads=1)  # compile outside the timings
    rows = [run(d, a.seeds, a.max_steps) for d in a.d]
    print(f"{'d':>8} {'median steps':>13} {'max steps':>10} {'s/traj':>8} {'learned':>8}  status")
    for r in rows:
        print(f"{r['d']:8.0e} {r['median_steps']:13.0f} {r['max_steps']:10d} "
              f"{r['s_per_traj']:8.3f} {r['learned']:8.3f}  {r['status']}")
    base = rows[0]
    for r in rows[1:]:
        steps = r["median_steps"] / base["median_steps"]
        wall = r["s_per_traj"] / base["s_per_traj"]
        print(f"d = {r['d']:.0e} / d = {base['d']:.0e}: steps x{steps:.2f}, wall x{wall:.2f}")


if __name__ == "__main__":
    main()
