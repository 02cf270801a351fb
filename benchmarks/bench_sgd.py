"""Online SGD benchmark: per-sample cost of the reduced chain at d = 1e2 and 1e12, and of the
explicit full-d backend at d = 1e4, in one run (ratios of like with like).

Workload: h3, k = 2, equiangular frame (beta = 0.2), batch 1, lr = 1e-4, a fixed number of
samples per chain (gtol = 0: no early stop), one thread, so the numbers are per-core costs:

    python benchmarks/bench_sgd.py [--chains 64] [--samples 200000] [--full-samples 200]

Targets (issue 11): cost per sample at d = 1e12 at most 1.2x that at d = 1e2; the reduced
chain at least 1000x cheaper per sample than the explicit backend at d = 1e4. The last rows
time the MSE loss's coupled chain (n = 3) at d = 1e2 and 1e12.
"""

from __future__ import annotations

import argparse
import time

import pipeline

POINT = {"teacher": "h3", "k": 2, "beta": 0.2, "init": "uniform", "method": "sgd",
         "lr": 1e-4, "batch": 1, "gtol": 1e-300}


def per_sample(d: int, chains: int, samples: int, backend: str = "reduced",
               **extra) -> float:
    """Seconds per sample of ``chains`` chains of ``samples`` samples at dimension ``d``."""
    point = {**POINT, "d": d, "backend": backend, "max_samples": samples, **extra}
    pipeline.simulate({**point, "max_samples": 2}, 1, threads=1)  # compile / load the cache
    t0 = time.perf_counter()
    ds = pipeline.simulate(point, chains, threads=1)
    dt = time.perf_counter() - t0
    return dt / float(ds["steps"].sum() * point["batch"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--full-chains", type=int, default=8)
    ap.add_argument("--full-samples", type=int, default=200)
    args = ap.parse_args()
    small = per_sample(100, args.chains, args.samples)
    huge = per_sample(10**12, args.chains, args.samples)
    reduced_1e4 = per_sample(10**4, args.chains, args.samples)
    full_1e4 = per_sample(10**4, args.full_chains, args.full_samples, backend="full")
    print(f"reduced chain, d = 1e2:   {small * 1e9:10.1f} ns/sample")
    print(f"reduced chain, d = 1e12:  {huge * 1e9:10.1f} ns/sample   "
          f"ratio to d = 1e2: {huge / small:.3f}  (target <= 1.2)")
    print(f"reduced chain, d = 1e4:   {reduced_1e4 * 1e9:10.1f} ns/sample")
    print(f"explicit SGD,  d = 1e4:   {full_1e4 * 1e9:10.1f} ns/sample   "
          f"reduced is {full_1e4 / reduced_1e4:.0f}x cheaper  (target >= 1000)")
    mse = {"loss": "mse", "n": 3}
    mse_small = per_sample(100, args.chains, args.samples // 4, **mse)
    mse_huge = per_sample(10**12, args.chains, args.samples // 4, **mse)
    print(f"MSE, n = 3 coupled, d = 1e2:  {mse_small * 1e9:7.1f} ns/sample")
    print(f"MSE, n = 3 coupled, d = 1e12: {mse_huge * 1e9:7.1f} ns/sample   "
          f"ratio to d = 1e2: {mse_huge / mse_small:.3f}")


if __name__ == "__main__":
    main()
