"""The store's run lock: one live driver per store, and no dead one holds it for long."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import store as zstore
from pipeline.ledger import StoreRef
from pipeline.lock import LOCK, RunLock, StoreLocked, read_lock

REPO = Path(__file__).parents[1]


def plant(ref: StoreRef, **record) -> None:
    """Write a lock record as another run would have left it."""
    path = Path(ref.url) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"run": "other-run", "token": "t-other", "host": "elsewhere", "boot_id": "b",
            "pid": 1, "started": "2025-01-01T00:00:00Z", "heartbeat": time.time(),
            "ttl": 60.0}
    path.write_text(json.dumps({**base, **record}))


def test_a_second_run_is_refused_and_told_who_holds_the_store(tmp_path):
    ref = StoreRef.parse(tmp_path / "s.zarr")
    with RunLock(ref, "run-a") as first:
        with pytest.raises(StoreLocked) as info:
            RunLock(ref, "run-b").acquire()
        text = str(info.value)
        assert "being written by another mimflow run" in text
        assert "run run-a" in text and f"pid {os.getpid()}" in text
        assert info.value.holder["token"] == first.token
        assert read_lock(ref)["run"] == "run-a"
    assert read_lock(ref) is None  # released
    with RunLock(ref, "run-b") as second:
        assert second.took_over is None


def test_a_killed_holder_on_this_machine_loses_the_lock_at_once(tmp_path):
    ref = StoreRef.parse(tmp_path / "s.zarr")
    code = ("import sys, time; from pipeline.ledger import StoreRef; "
            "from pipeline.lock import RunLock; "
            f"RunLock(StoreRef.parse({str(ref.url)!r}), 'doomed').acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            cwd=REPO, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        with pytest.raises(StoreLocked):  # alive: refused
            RunLock(ref, "next").acquire()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_lock(ref)["pid"] == proc.pid  # the dead run's lock is still there ...
    with RunLock(ref, "next") as lock:  # ... and taken over without waiting for its lease
        assert lock.took_over["run"] == "doomed" and lock.took_over["pid"] == proc.pid
        assert read_lock(ref)["run"] == "next"


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path):
    import socket

    from pipeline.lock import _boot_id, _process_start

    ref = StoreRef.parse(tmp_path / "s.zarr")
    me = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid()}
    # our own pid, with our start time: a live holder
    plant(ref, **me, pid_started=_process_start(os.getpid()))
    with pytest.raises(StoreLocked):
        RunLock(ref, "x").acquire()
    # the same pid with another start time: the holder died and its pid was reused
    plant(ref, **me, pid_started=_process_start(os.getpid()) - 1000.0)
    with RunLock(ref, "x") as lock:
        assert lock.took_over["run"] == "other-run"


def test_a_holder_on_another_machine_keeps_the_lock_until_its_lease_expires(tmp_path):
    ref = StoreRef.parse(tmp_path / "s.zarr")
    plant(ref, heartbeat=time.time() - 30, ttl=60.0)
    with pytest.raises(StoreLocked) as info:
        RunLock(ref, "x").acquire()
    assert "60 s after its last heartbeat" in str(info.value)
    assert "on elsewhere" in str(info.value)
    plant(ref, heartbeat=time.time() - 61, ttl=60.0)
    with RunLock(ref, "x") as lock:
        assert lock.took_over["host"] == "elsewhere"


def test_an_unreadable_lock_counts_as_held_until_it_is_older_than_the_lease(tmp_path):
    ref = StoreRef.parse(tmp_path / "s.zarr")
    path = Path(ref.url) / LOCK
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    with pytest.raises(StoreLocked, match="cannot be read yet"):
        RunLock(ref, "x", ttl=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    with RunLock(ref, "x", ttl=60) as lock:
        assert lock.took_over == {}


def test_the_heartbeat_renews_the_lease_and_notices_a_takeover(tmp_path):
    ref = StoreRef.parse(tmp_path / "s.zarr")
    lock = RunLock(ref, "beating", ttl=0.6, heartbeat=0.05).acquire()
    try:
        first = read_lock(ref)["heartbeat"]
        deadline = time.monotonic() + 30
        while read_lock(ref)["heartbeat"] == first:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not lock.lost
        # someone judged this run dead and took the store: the heartbeat notices, stops
        # writing, and release() leaves the new holder's lock alone
        plant(ref, run="thief", token="t-thief", host="elsewhere")
        while not lock.lost:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        lock.release()
    assert read_lock(ref)["run"] == "thief"


def test_of_many_racing_drivers_exactly_one_takes_a_dead_lock(tmp_path):
    ref = StoreRef.parse(tmp_path / "s.zarr")
    plant(ref, heartbeat=time.time() - 3600)
    start = threading.Barrier(8)
    won: list[RunLock] = []
    refused: list[StoreLocked] = []

    def contend(i: int) -> None:
        lock = RunLock(ref, f"racer-{i}")
        start.wait()
        try:
            won.append(lock.acquire())
        except StoreLocked as err:
            refused.append(err)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(won) == 1 and len(refused) == 7
        assert read_lock(ref)["token"] == won[0].token
        assert all(e.holder.get("token") in (None, won[0].token) for e in refused)
    finally:
        for lock in won:
            lock.release()


def test_recreating_the_store_keeps_the_lock(tmp_path):
    from pipeline.preflight import store_attrs
    from sweeps.spec import parse_spec

    spec = parse_spec('name = "x"\nseeds = 2\n[params]\nteacher = "h3"\nk = 2\nd = 100\n',
                      source="x.toml")
    ref = StoreRef.parse(tmp_path / "s.zarr")
    with RunLock(ref, "creator") as lock:
        zstore.create(ref, spec, store_attrs(spec))
        (Path(ref.url) / "stray").write_text("old")
        zstore.create(ref, spec, store_attrs(spec))  # what --overwrite does
        assert read_lock(ref)["token"] == lock.token
        assert not (Path(ref.url) / "stray").exists()
        assert zstore.read_attrs(ref)["name"] == "x"
    assert read_lock(ref) is None
