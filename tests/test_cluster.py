"""Real clusters on 127.0.0.1: `dask scheduler` and `dask worker` processes, `mimflow run
--scheduler`, killed workers and drivers, a second driver, failing blocks, TLS, S3, SLURM.

Every process is started in its own session and killed with its whole process group when
its fixture ends, whatever happened. Blocks are held at a gate (``MIMFLOW_TEST_GATE``, see
``pipeline/_testhooks.py``) between their data and their ledger marker, so kills land at the
most delicate moment of a block without relying on timing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import pipeline
from pipeline import _testhooks, ledger, verify
from pipeline.cli import _parser, main
from pipeline.ledger import StoreRef
from pipeline.lock import RunLock, StoreLocked, read_lock
from pipeline.store import Layout, open_results
from sweeps.spec import parse_spec

from conftest import data_bytes

REPO = Path(__file__).parents[1]
CLUSTER = REPO / "cluster"

# 2 points x 12 blocks of 2 seeds in 12 work units of 2 blocks: many small units (of more
# than one block), so a kill lands mid-sweep.
SPEC = """
name = "cluster-test"
seeds = 24
block_seeds = 2
unit_seeds = 4
[params]
teacher = "h3"
n = 1
k = 2
[grid]
d = [100, 1000]
[observe]
t_max = 1e4
"""
N_UNITS = 12
WAIT = 240.0  # seconds: generous, the two cores are shared with other test runs


# ---------------------------------------------------------------------------------------------
# Processes.


@dataclass
class Procs:
    """Background processes of one fixture or test, each in its own process group."""

    folder: Path
    items: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=REPO,
                                    env={**os.environ, **(env or {})},
                                    start_new_session=True)
        proc.log = log  # type: ignore[attr-defined]
        self.items.append((proc, log))
        return proc

    def stop_all(self) -> None:
        for proc, _ in reversed(self.items):
            stop(proc)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End ``proc`` and its whole process group: SIGTERM, then SIGKILL for what is left
    (a nanny's worker may outlive its nanny)."""
    kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def processes(folder: Path) -> Iterator[Procs]:
    procs = Procs(folder)
    try:
        yield procs
    finally:
        procs.stop_all()


def log_of(proc: subprocess.Popen) -> str:
    return Path(proc.log).read_text(errors="replace")  # type: ignore[attr-defined]


def wait_for(check: Callable[[], Any], what: str, *, proc: subprocess.Popen | None = None,
             timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) while waiting for {what}:\n"
                        + log_of(proc)[-4000:])
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}"
                        + (f":\n{log_of(proc)[-4000:]}" if proc is not None else ""))
        time.sleep(0.05)


def dask_cmd(*args: str) -> list[str]:
    """The real ``dask`` command of this Python (``dask scheduler``, ``dask worker``)."""
    return [sys.executable, "-m", "dask", *args]


def start_scheduler(procs: Procs, name: str, tls: list[str] = ()) -> str:
    """A `dask scheduler` on 127.0.0.1, on a free port chosen by the OS; its address."""
    file = procs.folder / f"{name}.json"
    argv = dask_cmd("scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(file))
    if tls:
        argv += ["--protocol", "tls", *tls]
    proc = procs.start(name, argv)

    def address() -> str | None:
        try:
            return json.loads(file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            return None

    return wait_for(address, f"{name} to listen", proc=proc)


def start_worker(procs: Procs, name: str, address: str, tls: list[str] = (),
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """A `dask worker` (with its nanny, which restarts it when it dies), 1 thread."""
    return procs.start(name, dask_cmd("worker", address, "--name", name, "--nthreads", "1",
                                      "--host", "127.0.0.1",
                                      "--dashboard-address", "127.0.0.1:0", *tls), env=env)


def mimflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def call(*argv: str) -> tuple[int, str]:
    """``mimflow argv`` in this process: (exit code, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, err.getvalue() + out.getvalue()


# ---------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="session")
def warm_numba() -> None:
    """Compile (or load) the kernels once here: the workers then load numba's on-disk cache
    (the same directory) instead of each compiling for ~15 s."""
    for sp in parse_spec(SPEC, source="warm").points:
        pipeline.simulate(sp.params, 2, threads=1)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "cluster-test.toml"
    path.write_text(SPEC)
    return path


@dataclass
class Cluster:
    address: str
    client: Any
    procs: Procs
    gate: Path

    @contextmanager
    def closed_gate(self, passes: int = 0) -> Iterator[Path]:
        """Hold every block (but the first ``passes``) between its data and its marker
        until the block exits; yields the folder where held blocks sign in."""
        held = Path(f"{self.gate}-held")
        for folder in (held, Path(f"{self.gate}-tickets")):
            shutil.rmtree(folder, ignore_errors=True)
        self.gate.write_text(str(passes))
        try:
            yield held
        finally:
            self.gate.unlink(missing_ok=True)

    def quiesce(self) -> None:
        """Wait for both workers to be up and idle (after kills and orphaned tasks)."""
        def idle() -> bool:
            info = self.client.scheduler_info(n_workers=-1)["workers"]
            return len(info) == 2 and not any(self.client.processing().values())

        wait_for(idle, "two idle workers")

    @contextmanager
    def worker_env(self, **env: str) -> Iterator[None]:
        self.client.run(_testhooks.set_env, env)
        try:
            yield
        finally:
            self.client.run(_testhooks.set_env, dict.fromkeys(env))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, warm_numba) -> Iterator[Cluster]:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1 (tcp)."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("tcp-cluster")
    gate = folder / "gate"
    with processes(folder) as procs:
        address = start_scheduler(procs, "scheduler")
        for i in range(2):
            start_worker(procs, f"worker{i}", address,
                         env={_testhooks.GATE: str(gate)})
        client = Client(address, timeout="60s")
        try:
            client.wait_for_workers(2, timeout=WAIT)
            yield Cluster(address, client, procs, gate)
        finally:
            client.close()


@pytest.fixture(scope="module")
def reference(cluster, spec_file, tmp_path_factory) -> dict[str, bytes]:
    """The undisturbed run: `mimflow run --scheduler tcp://...`."""
    store = tmp_path_factory.mktemp("reference") / "reference.zarr"
    code, err = call("run", str(spec_file), "--store", str(store),
                     "--scheduler", cluster.address)
    assert code == 0, err
    assert f"computed {N_UNITS} work units" in err and f"scheduler {cluster.address}" in err
    data = data_bytes(store)
    # run's memory check sees the workers' limits through the scheduler
    from pipeline.cluster import worker_memory_limit as _worker_memory

    assert _worker_memory(cluster.client) > 0
    # and it is what simulate() gives in this process for the same point and seeds
    spec = parse_spec(SPEC, source="x")
    direct = pipeline.simulate(spec.points[1].params, 24, threads=1)
    stored = open_results(str(store)).sel(d=1000)
    assert stored["u"].values.tobytes() == direct["u"].values.tobytes()
    return data


def run_proc(procs: Procs, name: str, *args: str, env: dict | None = None
             ) -> subprocess.Popen:
    return procs.start(name, mimflow("run", *args), env=env)


# ---------------------------------------------------------------------------------------------
# Worker and driver failures.


def test_sweep_survives_a_worker_killed_between_its_data_and_its_marker(cluster, reference,
                                                                        spec_file, tmp_path):
    cluster.quiesce()
    store = tmp_path / "killed-worker.zarr"
    with processes(tmp_path) as procs, cluster.closed_gate() as held:
        run = run_proc(procs, "run", str(spec_file), "--store", str(store),
                       "--scheduler", cluster.address)
        # a worker that has written a unit's shards and not yet its marker
        block = wait_for(lambda: sorted(p.name for p in held.glob("0*")), "a held unit",
                         proc=run)[0]
        pid = int((held / block).read_text())
        chunk = store / "status" / "c" / str(int(block[:6])) / str(int(block[7:]) // 4) / "0"
        assert chunk.exists() and not (store / ledger.marker(block)).exists()
        os.kill(pid, signal.SIGKILL)
        cluster.gate.unlink()  # let the other blocks (and the re-run of this one) go on
        assert run.wait(timeout=WAIT) == 0, log_of(run)
    out = log_of(run)
    assert f"{N_UNITS} of {N_UNITS} work units in" in out
    assert data_bytes(store) == reference
    # the killed block was computed again, by a live worker
    record = ledger.done_records(StoreRef.parse(store))[block]
    assert not record["worker"].endswith(f":{pid}")
    assert len(ledger.runs(StoreRef.parse(store))) == 1
    assert read_lock(StoreRef.parse(store)) is None


def test_killed_driver_resumes_identically_and_its_orphans_are_harmless(cluster, reference,
                                                                        spec_file, tmp_path):
    cluster.quiesce()
    store = tmp_path / "killed-driver.zarr"
    ref = StoreRef.parse(store)
    with processes(tmp_path) as procs:
        with cluster.closed_gate(passes=4) as held:
            first = run_proc(procs, "first", str(spec_file), "--store", str(store),
                             "--scheduler", cluster.address)
            # 4 blocks finish; then both workers hold one (data written, no marker)
            orphans = wait_for(lambda: sorted(p.name for p in held.glob("0*"))
                               if len(list(held.glob("0*"))) == 2 else None,
                               "both workers to hold a block", proc=first)
            wait_for(lambda: len(ledger.done_ids(ref)) == 4, "4 finished blocks", proc=first)
            os.killpg(first.pid, signal.SIGKILL)  # the driver dies mid-sweep
            first.wait()
            done_before = ledger.done_ids(ref)
            assert len(done_before) == 4 and not set(orphans) & done_before
            dead = read_lock(ref)
            assert dead["pid"] == first.pid  # the dead driver's lock is still there

            # resume while the orphaned tasks of the dead driver still hold the workers
            second = run_proc(procs, "second", str(spec_file), "--store", str(store),
                              "--scheduler", cluster.address)
            wait_for(lambda: "resuming" in log_of(second), "the second run to resume",
                     proc=second)
            assert read_lock(ref)["pid"] == second.pid
        # the gate opens: the orphans finish their blocks (they may race the second run's
        # own tasks for the same blocks: both write the same bytes)
        assert second.wait(timeout=WAIT) == 0, log_of(second)
    out = log_of(second)
    assert "took over the lock of a run that is no longer alive" in out
    assert f"pid {first.pid}" in out and "resuming" in out
    assert f"4 of {N_UNITS} work units already done" in out
    assert data_bytes(store) == reference
    records = ledger.done_records(ref)
    assert len(records) == N_UNITS
    assert {records[b]["run"] for b in done_before} == {dead["run"]}
    (run,) = ledger.runs(ref)
    assert set(run["computed"]) == set(records) - done_before
    assert read_lock(ref) is None
    assert verify.temporaries(ref) == []  # no *.partial left by the killed writers


def test_a_second_driver_on_the_same_store_is_refused(cluster, reference, spec_file, tmp_path):
    cluster.quiesce()
    store = tmp_path / "contended.zarr"
    ref = StoreRef.parse(store)
    with processes(tmp_path) as procs:
        with cluster.closed_gate() as held:
            first = run_proc(procs, "first", str(spec_file), "--store", str(store),
                             "--scheduler", cluster.address)
            # both workers at the gate: until then the second one may still be writing a
            # block's chunks, which are the first run's writes, not the refused runs'
            wait_for(lambda: len(list(held.glob("0*"))) == 2, "two held blocks", proc=first)

            def files() -> dict[str, int]:
                # all but the lock, which the first run's heartbeat renews (and its temp file)
                out = {}
                for p in store.rglob("*"):
                    if p.name == "lock.json" or p.name.startswith("."):
                        continue
                    try:
                        if p.is_file():
                            out[str(p)] = p.stat().st_mtime_ns
                    except FileNotFoundError:
                        continue
                return out

            before = files()
            for extra in ([], ["--overwrite"]):
                code, err = call("run", str(spec_file), "--store", str(store),
                                 "--scheduler", cluster.address, *extra)
                assert code == 3, err
                assert "refused: the store" in err and "being written by another mimflow " \
                    "run" in err, err
                assert f"pid {first.pid} on {socket.gethostname()}" in err
            assert files() == before  # the refused runs touched nothing
        assert first.wait(timeout=WAIT) == 0, log_of(first)
    assert data_bytes(store) == reference
    assert len(ledger.runs(ref)) == 1
    assert read_lock(ref) is None


def test_a_block_that_keeps_failing_is_reported_after_its_retries(cluster, reference,
                                                                  spec_file, tmp_path):
    cluster.quiesce()
    store = tmp_path / "failing.zarr"
    attempts = tmp_path / "attempts"
    always, flaky = "000001-0000000004", "000000-0000000008"
    with cluster.worker_env(**{_testhooks.FAIL: f"{always},{flaky}:1",
                               _testhooks.ATTEMPTS: str(attempts)}):
        code, err = call("run", str(spec_file), "--store", str(store),
                         "--scheduler", cluster.address, "--retries", "2")
    assert code == 1, err
    assert (f"FAILED unit {always} (point d=1000; seeds 4..7) failed after 3 attempts: "
            "RuntimeError: test hook") in err, err
    assert f"1 of {N_UNITS} work units are missing" in err and "re-run" in err
    # Dask ran it three times; the flaky one failed once and then landed
    assert len(list(attempts.glob(f"{always}.*"))) == 3
    assert len(list(attempts.glob(f"{flaky}.*"))) == 2
    ref = StoreRef.parse(store)
    all_ids = {u.id for u in Layout.for_spec(parse_spec(SPEC, source="x")).units()}
    assert ledger.done_ids(ref) == all_ids - {always}
    (record,) = ledger.runs(ref)
    assert record["failed"][0]["params"] == "d=1000" and record["failed"][0]["seeds"] == [4, 8]
    # every other block landed, bit for bit
    ds, good = open_results(str(store)), reference
    ref_ds = {name: np.frombuffer(good[name], dtype=ds[name].dtype).reshape(ds[name].shape)
              for name in good}
    for name in good:
        got = ds[name].values.copy()
        want = ref_ds[name].copy()
        got[1, 4:8] = want[1, 4:8] = 0  # the failed unit's region
        assert got.tobytes() == want.tobytes(), name
    # the same command again computes just that block
    code, err = call("run", str(spec_file), "--store", str(store),
                     "--scheduler", cluster.address)
    assert code == 0, err
    assert f"{N_UNITS - 1} of {N_UNITS} work units already done" in err
    assert data_bytes(store) == reference


def test_a_block_run_twice_is_harmless_and_never_writes_into_a_replaced_store(tmp_path):
    from pipeline.execute import tasks_for
    from pipeline.preflight import store_attrs
    from pipeline.store import create
    from pipeline.worker import BlockError, run_unit

    spec = parse_spec(SPEC, source="x")
    ref = StoreRef.parse(tmp_path / "store.zarr")
    create(ref, spec, store_attrs(spec))
    store_id = ledger.get_json(ref, ledger.INITIALIZED)["store_id"]
    task = list(tasks_for(spec, ref, Layout.for_spec(spec), "run", store_id=store_id))[5]
    record = run_unit(task)
    chunks = {p: p.read_bytes() for p in Path(ref.url).rglob("c/**/*") if p.is_file()}
    assert chunks and ledger.done_ids(ref) == {task.id}
    # a second execution (Dask re-running a task, or an orphan of a dead driver) finds
    # the block done and returns its record without computing or writing again
    assert run_unit(task) == record
    assert {p: p.read_bytes() for p in Path(ref.url).rglob("c/**/*") if p.is_file()} == chunks
    # a block of an older incarnation of the store (replaced by --overwrite) writes nothing
    stale = next(tasks_for(spec, ref, Layout.for_spec(spec), "old-run", store_id="gone"))
    with pytest.raises(BlockError, match="was replaced or deleted"):
        run_unit(stale)
    assert ledger.done_ids(ref) == {task.id}
    assert not (Path(ref.url) / "status" / "c" / "0" / "0").exists()


# ---------------------------------------------------------------------------------------------
# Security.


def test_the_embedded_cluster_listens_on_loopback_only(warm_numba):
    import psutil

    from pipeline.cluster import open_client

    me = psutil.Process()

    def listening() -> set[tuple[int, Any]]:
        procs = [me, *me.children(recursive=True)]
        # net_connections since psutil 6, connections before
        return {(p.pid, c.laddr) for p in procs
                for c in getattr(p, "net_connections", p.connections)(kind="inet")
                if c.status == psutil.CONN_LISTEN}

    before = listening()  # other fixtures' servers are not this test's business
    out = io.StringIO()
    with open_client(None, 1, out) as client:
        assert client.submit(pipeline.simulate, {"teacher": "h3", "k": 2, "d": 100, "n": 1},
                             1, threads=1).result().sizes["seed"] == 1
        new = listening() - before
    assert len(new) >= 4  # scheduler, its dashboard, the nanny, the worker
    assert all(addr.ip == "127.0.0.1" for _, addr in new), new
    assert "dashboard http://127.0.0.1:" in out.getvalue()


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A CA and scheduler/worker/client certificates, made by cluster/tls/make_certs.py;
    plus a client certificate of another CA."""
    folder = tmp_path_factory.mktemp("certs")
    for out, names in ((folder, []), (folder / "other", ["--name", "client"])):
        subprocess.run([sys.executable, str(CLUSTER / "tls" / "make_certs.py"), str(out),
                        *names], check=True, capture_output=True)
    assert (folder / "client-key.pem").stat().st_mode & 0o077 == 0  # keys are private
    return folder


@dataclass
class TLSCluster:
    address: str
    scheduler: subprocess.Popen


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, certs, warm_numba) -> Iterator[TLSCluster]:
    """A TLS `dask scheduler` and one `dask worker`, with the certificates of `certs`."""
    from distributed import Client

    from pipeline.cluster import tls_security

    folder = tmp_path_factory.mktemp("tls-cluster")

    def tls(role: str) -> list[str]:
        return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert",
                str(certs / f"{role}.pem"), "--tls-key", str(certs / f"{role}-key.pem")]

    with processes(folder) as procs:
        address = start_scheduler(procs, "tls-scheduler", tls("scheduler"))
        assert address.startswith("tls://127.0.0.1:")
        start_worker(procs, "tls-worker", address, tls("worker"))
        security = tls_security(certs / "ca.pem", certs / "client.pem",
                                certs / "client-key.pem")
        with Client(address, security=security, timeout="60s") as client:
            client.wait_for_workers(1, timeout=WAIT)
        yield TLSCluster(address, procs.items[0][0])


def client_tls(certs: Path, cert: str = "client") -> list[str]:
    return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{cert}.pem"),
            "--tls-key", str(certs / f"{cert}-key.pem")]


def test_run_on_a_tls_scheduler_with_certificates(tls_cluster, certs, reference, spec_file,
                                                  tmp_path):
    store = tmp_path / "tls.zarr"
    code, err = call("run", str(spec_file), "--store", str(store),
                     "--scheduler", tls_cluster.address, *client_tls(certs))
    assert code == 0, err
    assert f"scheduler {tls_cluster.address}" in err
    assert data_bytes(store) == reference

    # the same through distributed's security configuration: cluster/tls/dask-tls.yaml
    config = yaml.safe_load((CLUSTER / "tls" / "dask-tls.yaml").read_text())
    tls = config["distributed"]["comm"]["tls"]
    tls["ca-file"] = str(certs / "ca.pem")
    for role in ("scheduler", "worker", "client"):
        tls[role] = {"cert": str(certs / f"{role}.pem"), "key": str(certs / f"{role}-key.pem")}
    conf_dir = tmp_path / "dask-config"
    conf_dir.mkdir()
    (conf_dir / "dask-tls.yaml").write_text(yaml.safe_dump(config))
    with processes(tmp_path) as procs:
        run = run_proc(procs, "configured", str(spec_file), "--store", str(tmp_path / "c.zarr"),
                       "--scheduler", tls_cluster.address, env={"DASK_CONFIG": str(conf_dir)})
        assert run.wait(timeout=WAIT) == 0, log_of(run)
    assert data_bytes(tmp_path / "c.zarr") == reference


def test_a_tls_scheduler_refuses_clients_without_a_trusted_certificate(tls_cluster, certs,
                                                                        spec_file, tmp_path):
    store = tmp_path / "refused.zarr"
    # mimflow itself will not try tls:// without a certificate, and says what is missing
    code, err = call("run", str(spec_file), "--store", str(store),
                     "--scheduler", tls_cluster.address)
    assert code == 2 and "--tls-ca-file, --tls-cert and --tls-key" in err, err
    # a certificate from another CA: the scheduler refuses the handshake
    code, err = call("run", str(spec_file), "--store", str(store),
                     "--scheduler", tls_cluster.address, "--tls-ca-file",
                     str(certs / "ca.pem"), "--tls-cert", str(certs / "other" / "client.pem"),
                     "--tls-key", str(certs / "other" / "client-key.pem"))
    assert code == 2 and "invalid scheduler" in err and "certificate" in err, err
    assert not store.exists()  # nothing was created

    # a TLS client that presents no certificate at all, at the protocol level
    host, port = tls_cluster.address[len("tls://"):].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.check_hostname = False  # Dask's certificates name roles, not hosts
    refused = False
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as conn:
                conn.sendall(b"\0" * 8)  # TLS 1.3: the server's verdict comes with a read
                refused = conn.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            refused = True
    assert refused
    wait_for(lambda: "peer did not return a certificate" in log_of(tls_cluster.scheduler),
             "the scheduler to log the refusal", timeout=30)
    assert "TLS handshake failed" in log_of(tls_cluster.scheduler)


# ---------------------------------------------------------------------------------------------
# Object stores.


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1, with a bucket ``mimflow-test``."""
    pytest.importorskip("s3fs", reason="the s3 extra is not installed "
                                       "(pip install 'mimflow[s3]')")
    pytest.importorskip("moto.server", reason="moto[server] is not installed "
                                              "(pip install 'mimflow[test]')")
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path_factory.mktemp("moto")
    with processes(folder) as procs:
        server = procs.start("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(port)])
        endpoint = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(up, "moto's S3 server", proc=server)
        s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing"
                          ).mkdir("mimflow-test")
        yield endpoint


def test_store_on_s3_through_fsspec(cluster, reference, spec_file, s3_server):
    url = "s3://mimflow-test/sweeps/cluster-test.zarr"
    options = {"endpoint_url": s3_server, "key": "testing", "secret": "testing"}
    flags = [f"--storage-option={k}={v}" for k, v in options.items()]
    code, err = call("run", str(spec_file), "--store", url, "--scheduler", cluster.address,
                     *flags)
    assert code == 0, err
    assert f"{N_UNITS} of {N_UNITS} work units in {url}" in err
    assert data_bytes(url, options) == reference
    ref = StoreRef.parse(url, options)
    assert len(ledger.done_ids(ref)) == N_UNITS and read_lock(ref) is None
    # the lock works on the object store too (a conditional put)
    with RunLock(ref, "holder"):
        with pytest.raises(StoreLocked, match="run holder"):
            RunLock(ref, "intruder").acquire()
        code, err = call("run", str(spec_file), "--store", url, "--scheduler",
                         cluster.address, *flags)
        assert code == 3, err
    code, err = call("run", str(spec_file), "--store", url, "--scheduler", cluster.address,
                     *flags)
    assert code == 0 and "nothing to do" in err, err
    # and the reading commands reach the same store with the same options
    code, text = call("status", url, *flags)
    assert code == 0 and f"units:     {N_UNITS} of {N_UNITS} done" in text, text
    code, text = call("query", url, *flags, "--var", "status", "--stat", "count", "--format",
                      "json")
    assert code == 0, text
    counts = {row["d"]: row["count(status)"] for row in json.loads(text)}
    assert counts == {100: 24, 1000: 24}, text  # n = 1: one neuron per seed
    code, text = call("analyze", url, *flags)
    assert code == 0 and "== status ==" in text and "== escape_summary ==" in text, text
    code, text = call("status", url)  # without the endpoint: a clear error, no traceback
    assert code in (1, 2) and "mimflow status: error" in text, text


# ---------------------------------------------------------------------------------------------
# SLURM (dask-jobqueue) and Kubernetes configurations.


def test_slurm_without_sbatch_fails_with_a_clear_message(spec_file, tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue", reason="the slurm extra is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    store = tmp_path / "slurm.zarr"
    code, err = call("run", str(spec_file), "--store", str(store),
                     "--cluster", str(CLUSTER / "slurm.yaml"))
    assert code == 2, err
    assert "the `sbatch` command was not found on PATH" in err and "login node" in err
    assert not store.exists()


FAKE_SBATCH = """#!/usr/bin/env bash
# a stand-in for sbatch: runs the job script here, in its own session
script="${@: -1}"
cp "$script" "$FAKE_SLURM_DIR/job-$$.sh"  # like sbatch: the submitted file may go away
setsid bash "$FAKE_SLURM_DIR/job-$$.sh" > "$FAKE_SLURM_DIR/job-$$.log" 2>&1 < /dev/null &
echo "$!" >> "$FAKE_SLURM_DIR/jobs"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
for job in "$@"; do kill -TERM -- "-$job" 2>/dev/null; done
echo "$@" >> "$FAKE_SLURM_DIR/cancelled"
"""


def test_slurm_configuration_runs_a_sweep_through_sbatch(reference, spec_file, tmp_path):
    pytest.importorskip("dask_jobqueue", reason="the slurm extra is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # cluster/slurm.yaml as shipped, sized for this machine and kept on loopback
    config = yaml.safe_load((CLUSTER / "slurm.yaml").read_text())
    config["jobs"] = 1
    config["slurm"].update(
        cores=1, processes=1, memory="2GiB", job_script_prologue=[], interface="lo",
        local_directory=str(tmp_path / "local"), log_directory=str(tmp_path / "logs"),
        shared_temp_directory=str(tmp_path / "tls"),
        scheduler_options={"dashboard_address": "127.0.0.1:0"})
    conf = tmp_path / "slurm.yaml"
    conf.write_text(yaml.safe_dump(config))
    store = tmp_path / "slurm.zarr"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_DIR": str(tmp_path)}
    jobs = tmp_path / "jobs"
    try:
        with processes(tmp_path) as procs:
            run = run_proc(procs, "slurm-run", str(spec_file), "--store", str(store),
                           "--cluster", str(conf), env=env)
            assert run.wait(timeout=WAIT) == 0, log_of(run)
        out = log_of(run)
        assert "SLURM cluster from" in out and "scheduler tls://127.0.0.1:" in out
        assert data_bytes(store) == reference
        (script,) = tmp_path.glob("job-*.sh")
        text = script.read_text()
        assert "#SBATCH -J mimflow-worker" in text and "#SBATCH --mem=" in text
        assert "--nthreads 1" in text and "--tls-key" in text  # security: true
        assert (tmp_path / "cancelled").read_text().split() == jobs.read_text().split()
    finally:  # whatever happened, no job outlives the test
        for job in (jobs.read_text().split() if jobs.exists() else []):
            kill_group(int(job))


def test_cluster_arguments_are_checked_before_anything_starts(spec_file, certs, tmp_path):
    from pipeline.cli import storage_options
    from pipeline.errors import SpecError

    store = tmp_path / "never.zarr"

    def refused(*argv: str) -> str:
        try:
            code, err = call("run", str(spec_file), "--store", str(store), *argv)
        except SystemExit as exc:  # argparse usage errors
            code, err = exc.code, ""
        assert code == 2, err
        return err

    tls = client_tls(certs)
    assert "tls://" in refused(*tls)  # certificates without a TLS scheduler
    assert "tls://host:port" in refused("--scheduler", "tcp://127.0.0.1:1", *tls)
    assert "--tls-key" in refused("--scheduler", "tls://127.0.0.1:1", *tls[:4])
    assert "an existing PEM file" in refused("--scheduler", "tls://127.0.0.1:1",
                                             *tls[:5], str(tmp_path / "missing.pem"))
    refused("--scheduler", "tcp://127.0.0.1:1", "--cluster", str(CLUSTER / "slurm.yaml"))
    assert "--workers" in refused("--cluster", str(CLUSTER / "slurm.yaml"), "--workers", "2")
    refused("--retries", "-1")
    assert "KEY=VALUE" in refused("--storage-option", "endpoint_url")
    assert not store.exists()
    assert storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=false",
                            "client_kwargs.region_name=eu-west-1", "config_kwargs={\"a\": 1}"]
                           ) == {"endpoint_url": "http://127.0.0.1:9000", "anon": False,
                                 "client_kwargs": {"region_name": "eu-west-1"},
                                 "config_kwargs": {"a": 1}}
    with pytest.raises(SpecError):
        storage_options(["a=1", "a.b=2"])


def test_cluster_files_are_data_never_executed(tmp_path):
    from pipeline.cluster import load_cluster_config
    from pipeline.errors import SpecError

    config = load_cluster_config(CLUSTER / "slurm.yaml")
    assert config.kind == "slurm" and config.jobs == 4 and config.options["processes"] == 8
    assert config.worker_memory() == 4 * 2**30
    canary = tmp_path / "executed"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"kind: !!python/object/apply:os.system ['touch {canary}']\n")
    with pytest.raises(SpecError, match="YAML"):
        load_cluster_config(evil)
    assert not canary.exists()
    for text, name in (("kind: pbs\n", "kind"), ("kind: slurm\njobs: 0\n", "jobs"),
                        ("kind: slurm\nslurn: {}\n", "slurn"),
                        ("kind: slurm\njobs: 2\nadapt: {maximum_jobs: 4}\n", "jobs")):
        evil.write_text(text)
        with pytest.raises(SpecError, match=f"invalid {name}"):
            load_cluster_config(evil)


def test_kubernetes_manifests_and_image(tmp_path):
    import tomllib

    docs = {}
    for path in sorted((CLUSTER / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert {"DaskCluster", "Job", "NetworkPolicy"} <= set(docs)
    dc = docs["DaskCluster"]
    assert dc["apiVersion"] == "kubernetes.dask.org/v1"
    (worker,) = dc["spec"]["worker"]["spec"]["containers"]
    (sched,) = dc["spec"]["scheduler"]["spec"]["containers"]
    (driver,) = docs["Job"]["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == sched["image"] == driver["image"]
    assert dc["spec"]["scheduler"]["service"]["type"] == "ClusterIP"
    # the commands are real: every flag exists, and the driver's arguments parse
    for container, sub in ((worker, "worker"), (sched, "scheduler")):
        assert container["args"][:2] == ["dask", sub]
        helptext = subprocess.run(dask_cmd(sub, "--help"), capture_output=True,
                                  text=True, check=True).stdout
        for flag in (a for a in container["args"] if a.startswith("--")):
            assert flag in helptext, (sub, flag)
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "1"
    args = driver["args"]
    assert args[:2] == ["mimflow", "run"]
    parsed = _parser()[0].parse_args(args[1:])
    assert parsed.scheduler == f"tcp://{dc['metadata']['name']}-scheduler:8786"
    assert parsed.store.startswith("s3://")
    assert (REPO / args[2].replace("/opt/mimflow/src/", "")).exists()  # a shipped spec

    # the image is built from this project's pyproject.toml, with an extra it defines
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "COPY pyproject.toml README.md ./" in dockerfile
    for package in {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}:
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'pip install ".[s3]"' in dockerfile and "s3" in project["project"][
        "optional-dependencies"]
    assert "USER mimflow" in dockerfile


# ---------------------------------------------------------------------------------------------
# Memory.


MEMORY_SPEC = """
name = "memory-test"
seeds = 4096
block_seeds = 4096
[params]
teacher = "h3"
k = 8
n = 16
d = 1000
[observe]
t_max = 1e4
snapshots = {logspace = [-2, 4, 200]}
"""


def test_validate_warns_when_a_block_exceeds_a_worker_and_suggests_a_block_size(tmp_path):
    from dask.utils import format_bytes as human_bytes

    from pipeline.resources import block_memory_bytes, memory_budget
    from pipeline.store import Layout

    path = tmp_path / "memory.toml"
    path.write_text(MEMORY_SPEC)
    spec = parse_spec(MEMORY_SPEC, source=str(path))
    need = block_memory_bytes(spec, Layout.for_spec(spec))
    limit = need  # a worker exactly as large as the block: over Dask's pause threshold
    code, out = call("validate", str(path), "--memory-limit", str(limit))
    assert code == 0, out
    assert f"worker memory: {human_bytes(limit)} (--memory-limit)" in out
    assert "warning (memory): a block needs" in out and "pauses a worker" in out
    fits = int(out.split("use block_seeds = ")[1].split()[0])
    assert 1 <= fits < 4096
    layout = Layout.for_spec(spec)
    assert block_memory_bytes(spec, layout, fits) <= memory_budget(limit)
    assert block_memory_bytes(spec, layout, fits + 1) > memory_budget(limit)
    # with the suggested block size the warning is gone
    path.write_text(MEMORY_SPEC.replace("block_seeds = 4096", f"block_seeds = {fits}"))
    code, out = call("validate", str(path), "--memory-limit", str(limit))
    assert code == 0 and "warning (memory)" not in out, out
    # a plenty large worker: no warning; a tiny one: even one seed does not fit
    assert "warning (memory)" not in call("validate", str(path), "--memory-limit",
                                          "64GiB")[1]
    one_seed = block_memory_bytes(spec, layout, 1)
    assert "even one seed per block does not fit" in call("validate", str(path),
                                                          "--memory-limit", str(one_seed))[1]
    # the memory of a worker of a cluster file: the job's memory over its processes
    code, out = call("validate", str(path), "--cluster", str(CLUSTER / "slurm.yaml"))
    assert code == 0 and "worker memory: 4.00 GiB (from" in out, out
    # the embedded cluster's by default
    assert "embedded cluster" in call("validate", str(path), "--workers", "2")[1]
