"""Cold-machine benchmark (issue 13): first-call compile times, and the README's main job.

    python benchmarks/bench_cold.py                 # first simulate call per kernel kind
    python benchmarks/bench_cold.py --reproduce     # + pip install -e . && mimflow reproduce

Every measurement uses an empty numba cache (``NUMBA_CACHE_DIR`` pointed at a new folder), in
a fresh process, so it is what a new user's first run pays. Targets on 2 cores: the first
`simulate` call of a correlation-flow point <= 20 s; install + reproduce <= 3 min.

Rows of the first part: for each kernel kind, the first call in a fresh process (cold), then
the first call in another fresh process on the cache the first one filled (warm: loading).
Compilation is single-threaded, so its CPU time (in parentheses) is what the wall time would
be on an idle core; on a shared machine the wall time is larger. ``--against TREE`` adds the
cold first call of another source tree (the commit before a change), run alternately.

``--reproduce`` makes a new virtual environment (``--system-site-packages``: the
dependencies are taken as installed, so the install row is the package's own install, not a
download), runs ``pip install -e .`` and ``mimflow reproduce --out <tmp>`` with a cold cache,
and prints the split: install, compile (the driver's "compiling kernels" phases), sweeps
(the rest until the analysis starts) and analysis (tables, figures, report).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time, json
t0 = time.perf_counter()
from pipeline.engine.warm import tiny_point
from pipeline.engine.simulate import simulate
kind = tuple(sys.argv[1].split("/"))
t1, c1 = time.perf_counter(), time.process_time()
simulate(tiny_point(kind), 1, threads=1)
print(json.dumps({"import": t1 - t0, "first_call": time.perf_counter() - t1,
                  "cpu": time.process_time() - c1}))
"""

KINDS = ["correlation/flow/reduced", "correlation/gd/reduced", "mse/flow/reduced",
         "correlation/sgd/reduced", "mse/sgd/reduced"]


def _child(kind: str, cache: str, repo: Path = REPO) -> dict:
    import json

    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(repo)}
    # cwd: `python -c` puts the working directory first on sys.path, before PYTHONPATH.
    out = subprocess.run([sys.executable, "-c", CHILD, kind], env=env, check=True, cwd=repo,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_calls(kinds: list[str], against: Path | None = None) -> None:
    """Cold and warm first calls per kind; with ``against`` (another source tree, e.g. the
    commit before a change), that tree's cold first call too, measured alternately with
    this one's so that both see the same load."""
    head = f"{'kernel kind':28s} {'cold first call (CPU)':>24s} {'warm (cache load)':>18s}"
    print(head + (f" {'against: cold (CPU)':>22s} {'ratio (CPU)':>12s}" if against else ""))
    for kind in kinds:
        with tempfile.TemporaryDirectory() as cache:
            cold = _child(kind, cache)
            warm = _child(kind, cache)
        row = (f"{kind:28s} {cold['first_call']:10.1f} s ({cold['cpu']:5.1f} s)"
               f" {warm['first_call']:16.2f} s")
        if against:
            with tempfile.TemporaryDirectory() as cache:
                base = _child(kind, cache, against)
            row += (f" {base['first_call']:10.1f} s ({base['cpu']:5.1f} s)"
                    f" {cold['cpu'] / base['cpu']:12.2f}")
        print(row, flush=True)


def _clock(text: str) -> float:
    parts = [int(x) for x in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def reproduce() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        venv, out, cache = Path(tmp, "venv"), Path(tmp, "results"), Path(tmp, "numba")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                       check=True)
        # The README's command as it is (the dependencies come from the system site: no
        # download); --no-build-isolation would need `wheel` in the system site.
        installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e",
                                    str(REPO)]).returncode == 0
        install = time.perf_counter() - t0
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
        env.pop("PYTHONPATH", None)
        command = [str(venv / "bin" / "mimflow")]
        if not installed:  # (no `wheel` here, say): this environment's mimflow, this source
            print("  pip install -e . failed in the new environment; using this one's "
                  "`mimflow` on this source (install time not measured)")
            env["PYTHONPATH"] = str(REPO)
            command, install = ["mimflow"], float("nan")
        t1 = time.perf_counter()
        proc = subprocess.Popen([*command, "reproduce", "--out", str(out)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        compile_s, analysis_at, started = 0.0, None, None
        for line in proc.stdout:
            now = time.perf_counter() - t1
            if "compiling kernels" in line:
                started = now
            elif started is not None and re.search(r"kernels (compiled|loaded)", line):
                compile_s += now - started
                started = None
            elif "analysing stores" in line:
                analysis_at = now
        rc = proc.wait()
        total = time.perf_counter() - t1
        analysis_at = analysis_at if analysis_at is not None else total
        print(f"reproduce exit {rc}")
        print(f"  install   {install:7.1f} s")
        print(f"  compile   {compile_s:7.1f} s  (once per machine, before the blocks)")
        print(f"  sweeps    {analysis_at - compile_s:7.1f} s  (cluster start, blocks, stores)")
        print(f"  analysis  {total - analysis_at:7.1f} s  (tables, figures, report)")
        print(f"  total     {install + total:7.1f} s  (target: 180 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="*", default=KINDS)
    ap.add_argument("--reproduce", action="store_true")
    ap.add_argument("--against", type=Path, metavar="TREE",
                    help="another source tree to compare first calls with (e.g. "
                         "`git worktree add /tmp/base <commit>`)")
    args = ap.parse_args()
    first_calls(args.kinds, args.against)
    if args.reproduce:
        reproduce()


if __name__ == "__main__":
    main()
