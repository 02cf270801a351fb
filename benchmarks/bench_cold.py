"""Cold-machine benchmark (issue 13): first-call compile times, and the README's main job.

    python benchmarks/bench_cold.py                 # first simulate call per kernel kind
    python benchmarks/bench_cold.py --reproduce     # + pip install -e . && mimflow reproduce

Every measurement uses an empty numba cache (``NUMBA_CACHE_DIR`` pointed at a new folder), in
a fresh process, so it is what a new user's first run pays. Targets on 2 cores: the first
`simulate` call of a correlation-flow point <= 20 s; install + reproduce <= 3 min.

Rows of the first part: for each kernel kind, the first call in a fresh process (cold), then
the first call in another fresh process on the cache the first one filled (warm: loading).

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
t1 = time.perf_counter()
simulate(tiny_point(kind), 1, threads=1)
print(json.dumps({"import": t1 - t0, "first_call": time.perf_counter() - t1}))
"""

KINDS = ["correlation/flow/reduced", "correlation/gd/reduced", "mse/flow/reduced",
         "correlation/sgd/reduced", "mse/sgd/reduced"]


def _child(kind: str, cache: str) -> dict:
    import json

    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD, kind], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_calls(kinds: list[str]) -> None:
    print(f"{'kernel kind':28s} {'cold first call':>16s} {'warm (cache load)':>18s}")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as cache:
            cold = _child(kind, cache)
            warm = _child(kind, cache)
        print(f"{kind:28s} {cold['first_call']:14.1f} s {warm['first_call']:16.2f} s")


def _clock(text: str) -> float:
    parts = [int(x) for x in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def reproduce() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        venv, out, cache = Path(tmp, "venv"), Path(tmp, "results"), Path(tmp, "numba")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                       check=True)
        installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps",
                                    "--no-build-isolation", "-e", str(REPO)]).returncode == 0
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
    args = ap.parse_args()
    first_calls(args.kinds)
    if args.reproduce:
        reproduce()


if __name__ == "__main__":
    main()
