"""MSE benchmark: the reduced (Q, M) flow against the full-d backend, in one run (issue 5).

Workload: h3, k = 2, n = 10, d = 1000, orthogonal frame, uniform init, to convergence, the
same seeds (hence the same initial conditions) through `pipeline.simulate` with
``backend = "reduced"`` and ``backend = "full"``, one thread each:

    python benchmarks/bench_mse.py [--seeds 8] [--repeat 5] [--d 1000 4000]

Printed per d: seconds per trajectory of each backend (the reduced one is the best of
``--repeat`` runs, the full one the best of two), their ratio, the largest difference of the
overlaps over whole trajectories (64 log-spaced snapshots), of the loss curves and of the final
Gram matrices, and the statuses and steps. For context, the ratio of floating-point operations
per field evaluation, ``(1.5 n^2 d + 2 n d k) / (1.5 n^2 K + n k^2)`` with
``K = k + min(n, d - k)``: the reduced kernel does the full-d arithmetic in a K-dimensional
space, so at n = 10 and d = 1000 the work itself shrinks about 100-fold, and any speed-up
beyond that has to come from the small kernel running faster per operation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pipeline

POINT = {"teacher": "h3", "k": 2, "n": 10, "loss": "mse", "init": "uniform",
         "rtol": 1e-10, "atol": 1e-14, "gtol": 1e-8}


def _best(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _flop_ratio(n: int, k: int, d: int) -> float:
    K = k + min(n, d - k)
    return (1.5 * n * n * d + 2 * n * d * k) / (1.5 * n * n * K + n * k * k)


def run(d: int, seeds: int, repeat: int) -> dict:
    """Time both backends on the same seeds at dimension ``d``; return the measurements."""
    point = {**POINT, "d": d}
    seed_idx = list(range(seeds))
    kw = {"snapshots": True, "threads": 1}
    pipeline.simulate(point, [0], **kw)  # compile / load the cached kernels outside timings
    pipeline.simulate({**point, "backend": "full"}, [0], **kw)
    red, t_red = _best(lambda: pipeline.simulate(point, seed_idx, **kw), repeat)
    full, t_full = _best(lambda: pipeline.simulate({**point, "backend": "full"}, seed_idx, **kw),
                         2)
    return {
        "d": d,
        "reduced_s": t_red / seeds,
        "full_s": t_full / seeds,
        "ratio": t_full / t_red,
        "flop_ratio": _flop_ratio(POINT["n"], POINT["k"], d),
        "du": float(np.nanmax(np.abs(red.u_t.values - full.u_t.values))),
        "dloss": float(np.nanmax(np.abs(red.loss_t.values - full.loss_t.values))),
        "dq": float(np.abs(red.q.values - full.q.values).max()),
        "status": (red.status.values[:, 0].tolist(), full.status.values[:, 0].tolist()),
        "steps": (int(red.steps.values[:, 0].sum()), int(full.steps.values[:, 0].sum())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5, help="best-of for the reduced timing")
    ap.add_argument("--d", type=int, nargs="+", default=[1000])
    args = ap.parse_args()
    print(f"h3, k = 2, n = 10, uniform init, rtol {POINT['rtol']:g}, gtol {POINT['gtol']:g}, "
          f"{args.seeds} seeds, one thread")
    ok = True
    for d in args.d:
        r = run(d, args.seeds, args.repeat)
        agree = max(r["du"], r["dloss"], r["dq"]) <= 1e-6 and r["status"][0] == r["status"][1]
        ok &= agree
        print(f"\nd = {d}")
        print(f"  reduced  {r['reduced_s'] * 1e3:9.3f} ms / trajectory   ({r['steps'][0]} steps)")
        print(f"  full-d   {r['full_s'] * 1e3:9.3f} ms / trajectory   ({r['steps'][1]} steps)")
        print(f"  speed-up {r['ratio']:9.1f} x   (operations per field evaluation: "
              f"{r['flop_ratio']:.0f} x; target >= 100 x: "
              f"{'met' if r['ratio'] >= 100 else 'NOT met'})")
        print(f"  agreement: max |du| {r['du']:.1e}, |dloss| {r['dloss']:.1e}, |dQ| {r['dq']:.1e} "
              f"(<= 1e-6: {'yes' if agree else 'NO'}); status reduced {r['status'][0]}, "
              f"full {r['status'][1]}")
    if not ok:
        raise SystemExit("reduced and full-d MSE flows disagree")


if __name__ == "__main__":
    main()
