"""Sweeps on Dask: determinism across workers and block sizes, resume after a kill, failures."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
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
from pipeline.store import open_results
from sweeps.spec import load_spec, parse_spec

from conftest import data_bytes, tiny_spec

SPEC = tiny_spec("exec-test", observe="t_max = 1e6\nsnapshots = [0.5, 5.0, 50.0]")

# 4 points x 12 blocks of 500 seeds: long enough to be killed part-way.
KILL_SPEC = """
name = "kill-test"
seeds = 6000
block_seeds = 500
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


def test_same_bits_for_any_worker_count_and_block_size(tmp_path, client1, client2):
    spec4 = parse_spec(SPEC, source="exec.toml")
    spec3 = parse_spec(SPEC.replace("block_seeds = 4", "block_seeds = 3"), source="exec3.toml")
    runs = {
        "one worker": run_sweep(spec4, tmp_path / "w1.zarr", client=client1, out=io.StringIO()),
        "two workers": run_sweep(spec4, tmp_path / "w2.zarr", client=client2,
                                 out=io.StringIO()),
        "blocks of 3": run_sweep(spec3, tmp_path / "b3.zarr", client=client2,
                                 out=io.StringIO()),
    }
    assert all(r.ok for r in runs.values())
    assert [len(r.computed) for r in runs.values()] == [12, 12, 16]
    w1, w2, b3 = (data_bytes(tmp_path / f) for f in ("w1.zarr", "w2.zarr", "b3.zarr"))
    assert set(w1) == {"u0", "u", "escape_time", "t_final", "steps", "status", "loss", "u_t"}
    assert w1 == w2 == b3
    assert open_results(str(tmp_path / "b3.zarr"))["u"].encoding["chunks"][1] == 3
    # and they are what simulate() gives for the same point and seeds
    ds = open_results(str(tmp_path / "w2.zarr"))
    direct = pipeline.simulate(spec4.points[3].params, 10, snapshots=spec4.snapshots, threads=1)
    stored = ds.sel(d=1000, k=3)
    assert stored["escape_time"].values.tobytes() == direct["escape_time"].values.tobytes()
    assert stored["u_t"].values.tobytes() == direct["u_t"].values.tobytes()


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
    all_ids = {b.id for b in spec.blocks}
    assert 3 <= len(before) < len(all_ids)

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
    spec_path.write_text(SPEC)
    store = str(tmp_path / "fail.zarr")
    real = worker.simulate

    def flaky(params, seeds, **kwargs):
        if params["d"] == 1000 and params["k"] == 3 and seeds.start == 4:
            raise FloatingPointError("boom")
        return real(params, seeds, **kwargs)

    # workers in this process (threads), so that the patched simulate is the one they call
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        monkeypatch.setattr(worker, "simulate", flaky)
        err = io.StringIO()
        code = main(["run", str(spec_path), "--store", store,
                     "--scheduler", cluster.scheduler_address], err=err)
        text = err.getvalue()
        assert code == 1, text
        assert "FAILED block 000003-0000000004 (point d=1000, k=3, gamma=1.5; seeds 4..7)" \
            in text and "FloatingPointError: boom" in text
        assert "1 of 12 blocks are missing" in text and "re-run" in text
        ref = StoreRef.parse(store)
        assert ledger.done_ids(ref) == {b.id for b in load_spec(spec_path).blocks} - \
            {"000003-0000000004"}
        (record,) = ledger.runs(ref)
        assert record["failed"][0]["seeds"] == [4, 8] and "boom" in record["failed"][0]["error"]
        assert "Traceback" in record["failed"][0]["traceback"]

        monkeypatch.undo()
        err = io.StringIO()
        code = main(["run", str(spec_path), "--store", store,
                     "--scheduler", cluster.scheduler_address], err=err)
        assert code == 0, err.getvalue()
        assert "11 of 12 blocks already done" in err.getvalue()
        assert ledger.runs(ref)[-1]["computed"] == ["000003-0000000004"]
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
