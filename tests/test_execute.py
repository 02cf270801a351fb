"""Sweeps on Dask: determinism across workers and block sizes, resume after a kill, failures."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

import pipeline
from pipeline import execute, ledger, worker
from pipeline.cli import main
from pipeline.execute import run_sweep
from pipeline.ledger import StoreRef
from pipeline.progress import Progress, render
from pipeline.store import Layout, open_results
from sweeps.spec import load_spec, parse_spec

from conftest import data_bytes, tiny_spec

SPEC = tiny_spec("exec-test", observe="t_max = 1e6\nsnapshots = [0.5, 5.0, 50.0]")

# 4 points x 12 blocks of 500 seeds: long enough to be killed part-way.
KILL_SPEC = """
name = "kill-test"
seeds = 6000
block_seeds = 500
unit_seeds = 1000
[params]
teacher = "h3"
n = 1
[grid]
d = [100, 1000]
k = [2, 3]
"""


def _client(n: int) -> Iterator[Client]:
    """A LocalCluster of ``n`` one-thread worker processes, closed when the fixture ends."""
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def client2():
    yield from _client(2)


@pytest.fixture(scope="module")
def client1():
    yield from _client(1)


def _with(text: str, **settings) -> str:
    """``text`` (a spec) with top-level ``settings`` added after its block size."""
    extra = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return text.replace("block_seeds = 4\n", f"block_seeds = 4\n{extra}")


def test_same_bits_for_any_worker_count_grouping_and_block_size(tmp_path, client1, client2):
    specs = {  # name: (spec, client, work units)
        "one worker": (SPEC, client1, 4),  # auto: 1 point x all 10 seeds per unit
        "two workers": (SPEC, client2, 4),
        "units of one block (today's tasks)": (_with(SPEC, unit_points=1, unit_seeds=4),
                                                client2, 12),
        "units of 2 points x 2 blocks": (_with(SPEC, unit_points=2, unit_seeds=8), client1, 4),
        "one unit": (_with(SPEC, unit_points=4), client2, 1),
        "blocks of 3 in units of 3 points": (
            _with(SPEC, unit_points=3).replace("block_seeds = 4", "block_seeds = 3"),
            client2, 2),
    }
    stores = {}
    for n, (name, (text, client, units)) in enumerate(specs.items()):
        spec = parse_spec(text, source=f"exec{n}.toml")
        report = run_sweep(spec, tmp_path / f"{n}.zarr", client=client, out=io.StringIO())
        assert report.ok and len(report.computed) == units, name
        stores[name] = data_bytes(tmp_path / f"{n}.zarr")
    first = stores["one worker"]
    assert set(first) == {"u0", "u", "escape_time", "t_final", "steps", "status", "loss", "u_t"}
    for name, data in stores.items():
        assert data == first, name
    assert open_results(str(tmp_path / "5.zarr"))["u"].encoding["chunks"][1] == 3
    # and they are what simulate() gives for the same point and seeds
    spec4 = parse_spec(SPEC, source="exec.toml")
    ds = open_results(str(tmp_path / "1.zarr"))
    direct = pipeline.simulate(spec4.points[3].params, 10, snapshots=spec4.snapshots, threads=1)
    stored = ds.sel(d=1000, k=3)
    assert stored["escape_time"].values.tobytes() == direct["escape_time"].values.tobytes()
    assert stored["u_t"].values.tobytes() == direct["u_t"].values.tobytes()


def test_a_sweep_uses_only_its_own_client_when_another_is_the_default(tmp_path, client1,
                                                                      client2):
    """Two clients in one process (client1, client2): a sweep on the one that is not the
    default must not run anything on the default's event loop. It once tracked its futures
    there, from another thread, and a CI run hung inside tornado. Here the default's loop is
    held stuck: the sweep must finish all the same, with the same bits as the other run."""
    default = Client.current()
    assert default in (client1, client2)
    mine = client1 if default is client2 else client2
    release = threading.Event()
    default.loop.add_callback(release.wait)  # the default client's loop is stuck from now on
    outcome: dict = {}

    def sweep() -> None:
        try:
            outcome["report"] = run_sweep(parse_spec(SPEC, source="own.toml"),
                                          tmp_path / "own.zarr", client=mine,
                                          out=io.StringIO())
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    thread.join(timeout=240)  # a liveness bound (the sweep takes seconds), not a timing test
    stuck = thread.is_alive()
    release.set()
    thread.join()
    assert not stuck, "the sweep waited on the default client's event loop"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].ok
    reference = run_sweep(parse_spec(SPEC, source="ref.toml"), tmp_path / "ref.zarr",
                          client=default, out=io.StringIO())
    assert reference.ok
    assert data_bytes(tmp_path / "own.zarr") == data_bytes(tmp_path / "ref.zarr")


def main_out(argv: list[str]) -> str:
    """What ``mimflow argv`` prints on stdout."""
    out = io.StringIO()
    main(argv, out=out, err=io.StringIO())
    return out.getvalue()


def test_same_bits_as_a_store_of_layout_1(tmp_path, client2):
    """The fixture was written by the code before work units and shards (one task and one
    chunk per block): the sharded store of the same spec holds the same bytes, and the old
    store still opens, queries, resumes and verifies."""
    import shutil

    from conftest import LEGACY_SPEC, LEGACY_STORE

    spec = load_spec(LEGACY_SPEC)
    new = run_sweep(spec, tmp_path / "new.zarr", client=client2, out=io.StringIO())
    assert new.ok
    old = data_bytes(LEGACY_STORE)
    assert data_bytes(tmp_path / "new.zarr") == old
    # a copy of the old store with one block lost resumes in its own layout
    copy = tmp_path / "old.zarr"
    shutil.copytree(LEGACY_STORE, copy)
    (copy / ledger.LEDGER / "000002-0000000004.json").unlink()
    (copy / "u" / "c" / "2" / "1" / "0" / "0").unlink()
    out = io.StringIO()
    report = run_sweep(spec, copy, client=client2, out=out)
    assert report.ok and report.computed == ["000002-0000000004"], out.getvalue()
    assert "7 of 8 blocks already done" in out.getvalue()
    assert data_bytes(copy) == old
    assert main(["verify", str(copy)], out=io.StringIO(), err=io.StringIO()) == 0
    # the reading commands read the fixture itself, and leave it as it is
    before = {p: p.read_bytes() for p in LEGACY_STORE.rglob("*") if p.is_file()}
    for argv in (["status"], ["query", "--var", "u", "--stat", "mean", "--by", "d"],
                 ["analyze"]):
        out = io.StringIO()
        code = main([argv[0], str(LEGACY_STORE), *argv[1:]], out=out, err=io.StringIO())
        assert code == 0 and out.getvalue(), argv
    assert "blocks:    8 of 8 done" in main_out(["status", str(LEGACY_STORE)])
    assert {p: p.read_bytes() for p in LEGACY_STORE.rglob("*") if p.is_file()} == before


def test_killed_run_resumes_with_only_the_missing_blocks(tmp_path, client2):
    spec_path = tmp_path / "kill.toml"
    spec_path.write_text(KILL_SPEC)
    store = tmp_path / "kill.zarr"
    ref = StoreRef.parse(store)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(spec_path), "--store", str(store),
         "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 300
    try:
        while len(ledger.done_ids(ref)) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no block finished in time"
            time.sleep(0.01)
    finally:
        # the driver, its LocalCluster and the workers: a hard crash of the whole run
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0].decode()
    assert "dashboard http://127.0.0.1:" in output
    markers = Path(ref.url) / ledger.LEDGER
    before = {p.name: p.read_bytes() for p in markers.glob("*.json")}
    spec = load_spec(spec_path)
    all_ids = {u.id for u in Layout.for_spec(spec).units()}
    assert len(all_ids) == 24 and 3 <= len(before) < len(all_ids)

    out = io.StringIO()
    report = run_sweep(spec, store, client=client2, out=out)
    assert report.ok and report.already_done == len(before)
    done_before = {name[: -len(".json")] for name in before}
    assert set(report.computed) == all_ids - done_before
    assert "resuming" in out.getvalue()
    # the blocks of the killed run were not touched again
    assert {p.name: p.read_bytes() for p in markers.glob("*.json") if p.name in before} == before
    runs = {r["run"] for r in ledger.done_records(ref).values()}
    assert len(runs) == 2 and report.run_id in runs

    reference = run_sweep(spec, tmp_path / "ref.zarr", client=client2, out=io.StringIO())
    assert reference.ok and len(reference.computed) == len(all_ids)
    assert data_bytes(store) == data_bytes(tmp_path / "ref.zarr")
    # nothing left to do: a third run computes nothing
    again = run_sweep(spec, store, client=client2, out=io.StringIO())
    assert again.ok and again.computed == []


def test_failing_block_is_reported_and_the_rest_completes(tmp_path, monkeypatch):
    spec_path = tmp_path / "exec.toml"
    spec_path.write_text(_with(SPEC, unit_points=2))  # 2 units of 2 points x 10 seeds
    store = str(tmp_path / "fail.zarr")
    real = worker.compute

    def flaky(params, seeds, **kwargs):
        if params["d"] == 1000 and params["k"] == 3:
            raise FloatingPointError("boom")
        return real(params, seeds, **kwargs)

    # workers in this process (threads), so that the patched compute is the one they call
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        monkeypatch.setattr(worker, "compute", flaky)
        err = io.StringIO()
        code = main(["run", str(spec_path), "--store", store,
                     "--scheduler", cluster.scheduler_address], err=err)
        text = err.getvalue()
        assert code == 1, text
        # the unit is named, and within it the point and seeds that failed
        assert ("FAILED unit 000002-0000000000 (points #2..#3: d=1000, k=2, gamma=1.0 .. "
                "d=1000, k=3, gamma=1.5; seeds 0..9), at point d=1000, k=3, gamma=1.5 (#3; "
                "seeds 0..9) failed after 3 attempts: FloatingPointError: boom") in text, text
        assert "1 of 2 work units are missing" in text and "re-run" in text
        ref = StoreRef.parse(store)
        assert ledger.done_ids(ref) == {"000000-0000000000"}
        (record,) = ledger.runs(ref)
        failed = record["failed"][0]
        assert failed["seeds"] == [0, 10] and failed["points"] == [2, 4]
        assert "boom" in failed["error"]
        assert "Traceback" in record["failed"][0]["traceback"]

        monkeypatch.undo()
        err = io.StringIO()
        code = main(["run", str(spec_path), "--store", store,
                     "--scheduler", cluster.scheduler_address], err=err)
        assert code == 0, err.getvalue()
        assert "1 of 2 work units already done" in err.getvalue()
        assert ledger.runs(ref)[-1]["computed"] == ["000002-0000000000"]
    ds = open_results(store)
    direct = pipeline.simulate({"teacher": "h3", "d": 1000, "k": 3, "gamma": 1.5, "t_max": 1e6},
                               range(4, 8), snapshots=[0.5, 5.0, 50.0], threads=1)
    got = ds.sel(d=1000, k=3).isel(seed=slice(4, 8), neuron=slice(0, 5))
    assert got["u"].values.tobytes() == direct["u"].values.tobytes()


def test_progress_bar_text():
    assert render(0, 40) == "[------------------------------] 0/40 blocks (0%), 0:00 elapsed"
    line = render(10, 40, failed=2, elapsed=12.0, left=28.0)
    assert line.startswith("[########----------------------] 10/40 blocks (25%), 2 failed")
    assert "0:12 elapsed, ~0:28 left" in line
    assert "left" not in render(10, 40, elapsed=12.0)  # no estimate: none shown
    out = io.StringIO()  # not a terminal: the first block, then one line per tenth
    bar = Progress(20, out)
    for _ in range(20):
        bar.advance()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("[" + "#" * 30 + "] 20/20")
    assert np.all(np.diff([int(x.split("] ")[1].split("/")[0]) for x in lines]) > 0)


def test_run_ids_sort_in_start_order():
    # ledger.runs lists records by id: runs started within one second must keep their order.
    ids = [execute.new_run_id() for _ in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
