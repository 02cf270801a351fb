"""Compile once per machine (issue 13): with a cold numba cache, a sweep on a 2-worker
LocalCluster compiles each kernel it needs exactly once, on one worker, before its blocks
run; the other worker loads the kernels from the cache, and no kernel of a model or method the
sweep does not use is compiled at all. Compilations are counted by numba's own per-function
cache-miss counters, in every process."""

from __future__ import annotations

import io
import logging
from collections import Counter

from distributed import Client, LocalCluster

from pipeline import ledger
from pipeline.engine.warm import ENTRY_KERNELS
from pipeline.execute import run_sweep
from pipeline.ledger import StoreRef
from pipeline.warmup import sweep_kinds, workers_by_host
from sweeps.spec import parse_spec

from conftest import tiny_spec


def _misses() -> dict[str, int]:
    """Per compiled function (and signature) of mimflow, this process's compilations."""
    import sys

    from numba.core.dispatcher import Dispatcher

    out: dict[str, int] = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("pipeline.engine.") and module is not None:
            for attr, obj in vars(module).items():
                if isinstance(obj, Dispatcher) and obj.__module__ == name:
                    for sig, n in obj.stats.cache_misses.items():
                        out[f"{name}.{attr}{sig}"] = n
    return out


def test_cold_cache_sweep_compiles_each_kernel_once(tmp_path, monkeypatch):
    # Workers are spawned with this environment: their numba cache starts empty.
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-cache"))
    # 16 work units of one block each: plenty of tasks for both workers
    spec = parse_spec(tiny_spec("cold", seeds=8, block_seeds=2).replace(
        "t_max = 1e6", "t_max = 1e6\nsnapshots = [0.5, 5.0]").replace(
        "block_seeds = 2\n", "block_seeds = 2\nunit_points = 1\nunit_seeds = 2\n"),
        source="cold.toml")
    assert sweep_kinds(spec) == [("correlation", "flow", "reduced")]
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=":0",
                           silence_logs=logging.ERROR)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2)
            assert len(workers_by_host(client)) == 1  # one machine
            out = io.StringIO()
            report = run_sweep(spec, tmp_path / "cold.zarr", client=client, out=out)
            assert report.ok and len(report.computed) == 16
            per_worker = client.run(_misses)
    finally:
        cluster.close()
    text = out.getvalue()
    assert "compiling kernels (once per machine, 1 machine): correlation/flow/reduced" in text
    assert "kernels compiled in" in text
    # The bar's final line says how long compilation took.
    assert any(line.startswith("[###") and "16/16 work units" in line
               and "(kernels compiled in" in line for line in text.splitlines()), text
    workers = {r["worker"] for r in ledger.read_markers(StoreRef.parse(
        str(tmp_path / "cold.zarr"))).records.values()}
    assert len(workers) == 2  # both workers ran blocks
    # Both workers ran blocks, but only the one that warmed the cache compiled anything, and
    # every kernel was compiled once in all.
    counts = sorted(sum(m.values()) for m in per_worker.values())
    assert counts[0] == 0 and counts[1] > 0, per_worker
    total = Counter()
    for m in per_worker.values():
        total.update(m)
    assert set(total.values()) == {1}, total
    assert any("_flow_batch" in name for name in total)
    # The kernel split: only the reduced correlation flow's entry kernel and what it calls;
    # no MSE code, no full-d code, no other entry kernel.
    entry = ENTRY_KERNELS[("correlation", "flow", "reduced")]
    assert any(f".{entry}(" in name for name in total), total
    other = ("pipeline.engine.mse.", "._flow_full(", "._flow_mse", "._gd", "._full_")
    assert not [name for name in total if any(o in name for o in other)], total
    assert (tmp_path / "numba-cache").is_dir()


def test_kinds_of_a_mixed_sweep_and_every_kind_has_a_tiny_point():
    from pipeline.engine.params import resolve_point
    from pipeline.engine.warm import ALL_KINDS, tiny_point

    spec = parse_spec(tiny_spec("mixed").replace('teacher = "h3"',
                                                 'teacher = "h3"\nloss = "mse"')
                      .replace("d = [100, 1000]", 'd = [100, 1000]\nmethod = ["flow", "gd"]'),
                      source="mixed.toml")
    assert sweep_kinds(spec) == [("mse", "flow", "reduced"), ("mse", "gd", "reduced")]
    from importlib import import_module

    from numba.core.dispatcher import Dispatcher

    from pipeline.engine.warm import ENTRY_KERNELS

    assert set(ENTRY_KERNELS) == set(ALL_KINDS)
    for kind in ALL_KINDS:  # what the Kubernetes image compiles at build time
        p = resolve_point(tiny_point(kind))
        assert (p.loss, p.method, p.backend) == kind
        module, name = ENTRY_KERNELS[kind].split(".")
        assert isinstance(getattr(import_module(f"pipeline.engine.{module}"), name), Dispatcher)
    from pathlib import Path
    dockerfile = (Path(__file__).parents[1] / "cluster" / "Dockerfile").read_text()
    assert "warm(ALL_KINDS)" in dockerfile and "warm(ALL_KINDS, snapshots=True)" in dockerfile


def test_kinds_split_over_the_workers_of_a_host():
    """Each compile unit is compiled by one worker: the reduced MSE flow as its explicit
    kernel and its stage, the stage (the longest compile) on a worker of its own on 2 workers
    and the explicit kernel beside the other kinds; never more groups than workers or
    units."""
    from pipeline.engine.warm import ALL_KINDS, EXPLICIT, STAGE, split_kinds, units

    mse_flow = ("mse", "flow", "reduced")
    reproduce = [("correlation", "flow", "reduced"), ("correlation", "gd", "reduced"),
                 ("correlation", "sgd", "reduced"), mse_flow, ("mse", "sgd", "reduced")]
    every = sorted([k for k in reproduce if k != mse_flow]
                   + [mse_flow + (EXPLICIT,), mse_flow + (STAGE,)])
    assert units(reproduce) == every
    two = split_kinds(reproduce, 2)
    assert [mse_flow + (STAGE,)] in two and len(two) == 2
    assert sorted(k for g in two for k in g) == every
    assert split_kinds(reproduce, 1) == [every]
    many = split_kinds(ALL_KINDS, 64)
    assert len(many) == len(ALL_KINDS) + 1 and all(len(g) == 1 for g in many)
    assert split_kinds([], 4) == []


def test_the_units_of_the_mse_flow_compile_what_its_points_run():
    """Warming the reduced MSE flow's stage unit touches its stage alone (so two workers can
    compile the two side by side), and the two units leave nothing for a point of that kind
    to compile or add: its entry kernels get no new signature (a fresh process)."""
    import json
    import subprocess
    import sys

    code = """
import json
from pipeline.engine import integrate, stiff
from pipeline.engine.dynamics import MSE_REDUCED
from pipeline.engine.simulate import simulate
from pipeline.engine.warm import split_kinds, tiny_point, warm, compilations
kind = ("mse", "flow", "reduced")
entries = (integrate._ENTRIES["flow"][MSE_REDUCED], stiff.FINISH[MSE_REDUCED])
stage, explicit = split_kinds([kind], 2)
warm(stage)
alone = [len(e.signatures) for e in entries]
warm(explicit)
before = [len(e.signatures) for e in entries], compilations()
simulate(tiny_point(kind), 3, threads=1)
after = [len(e.signatures) for e in entries], compilations()
print(json.dumps([stage, alone, before, after]))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)
    stage, alone, (sigs0, comp0), (sigs1, comp1) = json.loads(out.stdout.splitlines()[-1])
    assert stage == [["mse", "flow", "reduced", "stage"]] and alone == [0, 1], out.stdout
    assert sigs0 == sigs1 == [1, 1] and comp1 == comp0, out.stdout
