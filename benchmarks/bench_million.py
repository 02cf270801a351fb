"""Sweep-scale benchmark (issue 12): many points of trivial trajectories, end to end.

    python benchmarks/bench_million.py [--points 1000000] [--seeds 4] [--workers 2]
                                       [--old-points 10000] [--old-rev 357aaff]

A sweep of ``--points`` points x ``--seeds`` seeds of trivial trajectories (``t_max = 1e-3``:
nearly all the cost is the pipeline) is run by ``mimflow run`` in a child process with an
embedded cluster of ``--workers`` one-thread workers, and measured:

* wall time of the whole command (spec parsing, cluster start, store creation, every unit
  simulated and written, metadata consolidated);
* the driver's peak resident memory (``ru_maxrss`` of the child: driver and the scheduler
  it hosts, not the workers);
* objects in the store (files) and objects per 1,000 trajectories;
* bytes on disk (allocated blocks) and apparent, against the uncompressed data;
* ``mimflow status`` wall time on the finished store (a child process, imports included).

The same figures are printed beside it for today's per-block code (``--old-rev``, checked out
with ``git archive`` into a temporary folder, so both run on this machine in the same run) on
``--old-points`` points (0 to skip), and per trajectory, so the two scale to each other.
Targets of the issue, at 10^6 points x 4 seeds on 2 cores: <= 15 min, <= 1 object per 1,000
trajectories, on disk <= 3x the data, driver <= 1 GB, status <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
name = "bench-million"
seeds = {seeds}
block_seeds = {seeds}
[params]
teacher = "h3"
k = 2
n = 1
d = 100
[grid]
escape_threshold = {{linspace = [0.5, 0.9, {points}]}}
[observe]
t_max = 1e-3
"""


def spec_text(points: int, seeds: int) -> str:
    """The benchmark's spec: ``points`` points on one axis, trivial trajectories."""
    return SPEC.format(points=points, seeds=seeds)


def _child(code_root: str, spec: str, store: str, workers: int) -> None:
    """Runs in a child process: ``mimflow run`` of the code at ``code_root``, then its peak
    memory (bench_sweep's driver-memory child)."""
    sys.path.insert(0, code_root)
    from bench_sweep import _memory_child

    _memory_child(spec, store, workers)


def _store_figures(store: Path) -> dict:
    files = disk = apparent = 0
    for root, _, names in os.walk(store):
        for name in names:
            st = os.stat(os.path.join(root, name))
            files += 1
            disk += st.st_blocks * 512
            apparent += st.st_size
    return {"objects": files, "disk_bytes": disk, "apparent_bytes": apparent}


def _data_bytes(code_root: str, spec: str) -> int:
    """Uncompressed bytes of the store's data variables (its layout's own count)."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]);"
         "from sweeps.spec import load_spec; from pipeline.store import Layout;"
         "print(Layout.for_spec(load_spec(sys.argv[2])).store_nbytes())", code_root, spec],
        capture_output=True, text=True, check=True, env=_env(code_root))
    return int(out.stdout.strip().splitlines()[-1])


def _env(code_root: str) -> dict:
    return {**os.environ, "PYTHONPATH": code_root}


def measure(code_root: str, tmp: Path, name: str, points: int, seeds: int,
            workers: int) -> dict:
    """Run the sweep with the code at ``code_root``; every figure of the module docstring."""
    spec = tmp / f"{name}.toml"
    spec.write_text(spec_text(points, seeds))
    store = tmp / f"{name}.zarr"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", code_root, str(spec),
                          str(store), str(workers)],
                         capture_output=True, text=True, env=_env(code_root), check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    t0 = time.perf_counter()
    status = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", str(store)],
                            capture_output=True, text=True, env=_env(code_root), check=True)
    status_s = time.perf_counter() - t0
    trajectories = points * seeds
    figures = _store_figures(store)
    data = _data_bytes(code_root, str(spec))
    shutil.rmtree(store, ignore_errors=True)
    return {"name": name, "points": points, "seeds": seeds, "trajectories": trajectories,
            "wall_s": wall, "status_s": status_s, "data_bytes": data, **result, **figures,
            "objects_per_1000": 1000 * figures["objects"] / trajectories,
            "disk_over_data": figures["disk_bytes"] / data,
            "ms_per_trajectory": 1000 * wall / trajectories,
            "status_head": status.stdout.splitlines()[4:6]}


def _show(r: dict) -> None:
    print(f"{r['name']}: {r['points']} points x {r['seeds']} seeds = {r['trajectories']} "
          f"trajectories")
    print(f"  wall {r['wall_s']:.1f} s ({r['ms_per_trajectory']:.3f} ms per trajectory), "
          f"driver peak {r['driver_peak_mb']:.0f} MB, status {r['status_s']:.2f} s")
    print(f"  {r['objects']} objects ({r['objects_per_1000']:.2f} per 1,000 trajectories), "
          f"{r['disk_bytes'] / 1e6:.1f} MB on disk ({r['apparent_bytes'] / 1e6:.1f} MB "
          f"apparent) for {r['data_bytes'] / 1e6:.1f} MB of data "
          f"({r['disk_over_data']:.2f}x)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--old-points", type=int, default=10_000,
                    help="points of the run with today's per-block code (0: skip)")
    ap.add_argument("--old-rev", default="357aaff",
                    help="git revision of the per-block code to compare with")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mimflow-million-"))
    try:
        results = []
        if args.old_points:
            old = tmp / "old-code"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old_rev],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            results.append(measure(str(old), tmp, f"per-block code ({args.old_rev})",
                                   args.old_points, args.seeds, args.workers))
            _show(results[-1])
        results.append(measure(str(ROOT), tmp, "work units (this code)", args.points,
                               args.seeds, args.workers))
        _show(results[-1])
        if len(results) == 2:
            old, new = results
            print(f"per trajectory, this code vs per-block: "
                  f"{old['ms_per_trajectory'] / new['ms_per_trajectory']:.1f}x faster, "
                  f"{old['objects_per_1000'] / new['objects_per_1000']:.0f}x fewer objects, "
                  f"{old['disk_over_data'] / new['disk_over_data']:.1f}x less disk per byte")
        print(json.dumps(results))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
