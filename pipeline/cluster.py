"""Where a run's workers come from: TLS credentials and cluster configuration files.

``mimflow run`` gets a ``distributed.Client`` in one of three ways (:func:`open_client`):
an embedded ``LocalCluster`` (loopback only), an existing scheduler (``--scheduler
tcp://...`` or ``tls://...`` with :func:`tls_security`), or a cluster described by a YAML
file (``--cluster cluster/slurm.yaml``, :func:`load_cluster_config`). Such a file is data:
it is read with ``yaml.safe_load`` and its values become keyword arguments of
``dask_jobqueue.SLURMCluster``; nothing in it is evaluated by mimflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .errors import SpecError

#: Keys of a cluster configuration file.
CLUSTER_KEYS = ("kind", "jobs", "adapt", "slurm")
KINDS = ("slurm",)


def tls_security(ca_file: str | os.PathLike | None, cert: str | os.PathLike | None,
                 key: str | os.PathLike | None) -> Any:
    """A ``distributed.security.Security`` for a client of a TLS cluster.

    All three files are required: a Dask TLS scheduler accepts only clients that present a
    certificate signed by its CA (``ca_file`` is also what this client checks the scheduler
    against). Encryption is required, so the client never falls back to plain TCP.
    """
    from distributed.security import Security

    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise SpecError(missing[0], None, "a PEM file (--tls-ca-file, --tls-cert and "
                        "--tls-key go together)",
                        hint="a TLS scheduler refuses clients without a certificate; "
                             "see cluster/README.md, section TLS")
    for flag, value in given.items():
        if not Path(value).is_file():
            raise SpecError(flag, str(value), "an existing PEM file")
    return Security(tls_ca_file=str(ca_file), tls_client_cert=str(cert),
                    tls_client_key=str(key), require_encryption=True)


def configured_tls() -> bool:
    """True when the Dask configuration gives this client a TLS certificate
    (``distributed.comm.tls.client.cert`` or ``distributed.comm.tls.ca-file`` with one)."""
    import dask

    return bool(dask.config.get("distributed.comm.tls.client.cert", None)
                and dask.config.get("distributed.comm.tls.ca-file", None))


def check_address(scheduler: str, security: Any) -> None:
    """Refuse a scheduler address and TLS settings that cannot work together, before any
    connection is tried (a plain client at a TLS scheduler would only time out)."""
    if scheduler.startswith("tls://"):
        if security is None and not configured_tls():
            raise SpecError("--scheduler", scheduler, "a tls:// address together with "
                            "--tls-ca-file, --tls-cert and --tls-key (or "
                            "distributed.comm.tls in the Dask configuration)",
                            hint="a TLS scheduler refuses clients without a certificate")
    elif security is not None:
        raise SpecError("--scheduler", scheduler, "a tls://host:port address when TLS "
                        "certificates are given",
                        hint="--tls-* options secure a tls:// connection; a tcp:// "
                             "scheduler is unencrypted and unauthenticated")


# ---------------------------------------------------------------------------------------------
# Cluster configuration files.


@dataclass(frozen=True)
class ClusterConfig:
    """A cluster configuration file, validated (see ``cluster/slurm.yaml``)."""

    path: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the cluster class (``dask_jobqueue.SLURMCluster``)."""
    jobs: int | None = None
    adapt: dict[str, int] | None = None

    def worker_memory(self) -> int | None:
        """Memory limit of one worker process in bytes (the job's memory over its worker
        processes, as dask-jobqueue divides it), or ``None`` if not configured."""
        from dask.utils import parse_bytes

        memory = self.options.get("memory")
        if not memory:
            return None
        processes = self.options.get("processes") or 1
        return int(parse_bytes(memory) // int(processes))


def load_cluster_config(path: str | os.PathLike) -> ClusterConfig:
    """Read and validate a cluster configuration file (YAML, ``yaml.safe_load``)."""
    import yaml

    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise SpecError("--cluster", source, "a readable cluster configuration file",
                        hint=f"{type(err).__name__}: {err}") from None
    except yaml.YAMLError as err:
        raise SpecError("YAML syntax", str(err).splitlines()[0], "a valid YAML document",
                        source=source) from None
    if not isinstance(raw, dict):
        raise SpecError("document", type(raw).__name__, "a mapping with keys "
                        + ", ".join(CLUSTER_KEYS), source=source)
    unknown = sorted(set(raw) - set(CLUSTER_KEYS))
    if unknown:
        raise SpecError(unknown[0], raw[unknown[0]], "one of the keys "
                        + ", ".join(CLUSTER_KEYS), source=source)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise SpecError("kind", kind, " | ".join(KINDS), source=source)
    options = raw.get(kind) or {}
    if not isinstance(options, dict):
        raise SpecError(kind, options, "a mapping of SLURMCluster options (cores, memory, "
                        "processes, queue, walltime, ...)", source=source)
    jobs, adapt = raw.get("jobs"), raw.get("adapt")
    if jobs is not None and adapt is not None:
        raise SpecError("jobs", jobs, "either jobs (a fixed number) or adapt, not both",
                        source=source)
    if jobs is None and adapt is None:
        jobs = 1
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool)
                             or jobs < 1):
        raise SpecError("jobs", jobs, "an integer >= 1", source=source)
    if adapt is not None:
        ok = isinstance(adapt, dict) and set(adapt) <= {"minimum_jobs", "maximum_jobs"} \
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for v in adapt.values()) and adapt.get("maximum_jobs", 1) >= 1
        if not ok:
            raise SpecError("adapt", adapt, "a mapping {minimum_jobs: N, maximum_jobs: M} "
                            "of integers, M >= 1", source=source)
    return ClusterConfig(source, kind, dict(options), jobs, adapt)


def _require_slurm(config: ClusterConfig) -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SpecError("--cluster", config.path, "a cluster mimflow can start",
                        hint="kind: slurm needs dask-jobqueue: pip install 'mimflow[slurm]'"
                        ) from None
    if shutil.which("sbatch") is None:
        raise SpecError("--cluster", config.path, "a SLURM configuration used where SLURM "
                        "is installed",
                        hint="the `sbatch` command was not found on PATH: kind: slurm "
                             "submits its workers as SLURM jobs, so run mimflow on a "
                             "login node of the SLURM cluster (or start the workers "
                             "otherwise and pass --scheduler)")
    return SLURMCluster


@contextmanager
def open_cluster(config: ClusterConfig, out: TextIO) -> Iterator[Any]:
    """Start the cluster that ``config`` describes and yield a client of it; the worker
    jobs are cancelled when the block exits."""
    from distributed import Client

    cls = _require_slurm(config)
    options = dict(config.options)
    sched = dict(options.pop("scheduler_options", None) or {})
    # The dashboard shows task names and worker logs: by default only on this machine's
    # loopback (reach it with ssh -L); the scheduler itself must be reachable by the jobs.
    sched.setdefault("dashboard_address", "127.0.0.1:0")
    shared = options.get("shared_temp_directory")
    if shared:
        # where dask-jobqueue writes the temporary TLS key for the jobs: private to the user
        os.makedirs(os.path.expanduser(os.path.expandvars(shared)), mode=0o700, exist_ok=True)
    try:
        cluster = cls(scheduler_options=sched, **options)
    except (TypeError, ValueError) as err:
        raise SpecError(config.kind, options, "options of dask_jobqueue.SLURMCluster",
                        source=config.path, hint=f"{type(err).__name__}: {err}") from None
    try:
        if config.adapt is not None:
            cluster.adapt(**config.adapt)
            size = (f"adaptive, {config.adapt.get('minimum_jobs', 0)} to "
                    f"{config.adapt.get('maximum_jobs', 1)} jobs")
        else:
            cluster.scale(jobs=config.jobs)
            size = f"{config.jobs} jobs"
        client = Client(cluster)
        out.write(f"mimflow: SLURM cluster from {config.path} ({size}), scheduler "
                  f"{cluster.scheduler_address}, dashboard {cluster.dashboard_link}\n")
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()  # scancel of every job this run submitted


def embedded_workers(workers: int | None = None) -> int:
    """Worker processes of the embedded ``LocalCluster``: ``workers``, or one per CPU."""
    return workers or os.cpu_count() or 1


def default_worker_memory(workers: int | None = None) -> int:
    """The memory limit of a worker of the embedded ``LocalCluster`` of ``workers``
    processes: the machine's (or container's) memory divided among them, as Dask does."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT // embedded_workers(workers))


@contextmanager
def open_client(scheduler: str | None = None, workers: int | None = None,
                out: TextIO | None = None, *, security: Any = None,
                cluster: str | os.PathLike | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: on the cluster at ``scheduler`` (``tcp://`` or ``tls://``
    with ``security``, a ``distributed.security.Security``), on a cluster started from the
    configuration file ``cluster`` (``cluster/slurm.yaml``), or on an embedded
    ``LocalCluster`` of ``workers`` processes with one thread each, listening on 127.0.0.1
    only (scheduler, workers, nannies and dashboard).
    """
    from distributed import Client, LocalCluster

    out = out if out is not None else sys.stderr
    if cluster is not None:
        with open_cluster(load_cluster_config(cluster), out) as client:
            yield client
        return
    if scheduler:
        check_address(scheduler, security)
        try:
            client = Client(scheduler, security=security, timeout="20s")
        except Exception as err:  # refused, unreachable, TLS handshake failed, ...
            tls = scheduler.startswith("tls://")
            hint = f"{type(err).__name__}: {err}".strip()
            if tls:
                hint += ("; with TLS, the scheduler refuses a client whose certificate is "
                         "not signed by its CA, and this client refuses a scheduler whose "
                         "certificate is not signed by --tls-ca-file")
            raise SpecError("scheduler", scheduler, "the address of a running Dask "
                            "scheduler (tcp://host:8786 or tls://...)", hint=hint) from None
        out.write(f"mimflow: scheduler {scheduler}, dashboard {client.dashboard_link}\n")
        try:
            yield client
        finally:
            client.close()
        return
    n = embedded_workers(workers)
    # Loopback only: nothing outside this machine can submit code to these workers.
    with _children_ignore_sigint():
        cluster_ = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                silence_logs=logging.ERROR)
    client = Client(cluster_)
    out.write(f"mimflow: local cluster of {n} worker processes (1 thread each) at "
              f"{cluster_.scheduler_address}, dashboard {cluster_.dashboard_link}\n")
    try:
        yield client
    finally:
        _quiet_teardown(client)
        client.close()
        cluster_.close()


def _silence_distributed() -> None:
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _quiet_teardown(client: Any) -> None:
    """Silence the embedded workers' logs before the cluster closes.

    A worker whose scheduler closes first logs its failed heartbeat as an ERROR with a
    traceback; after an interrupted run (Ctrl-C) that is the last thing a user would see,
    although nothing is wrong. Errors that matter reach the driver through the futures.
    """
    with contextlib.suppress(Exception):
        client.run(_silence_distributed, wait=True)


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Start processes that ignore SIGINT (inherited through spawn: Python keeps an ignored
    SIGINT ignored). Ctrl-C in a terminal signals the whole process group; the driver alone
    handles it (cancels, closes the cluster, exits 130), instead of every worker printing
    a KeyboardInterrupt traceback."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be changed from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def worker_memory_limit(client: Any) -> int | None:
    """The smallest memory limit among the cluster's workers now (``None``: no workers
    yet, e.g. an adaptive cluster, or no limits)."""
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except TypeError:  # older distributed: no n_workers argument
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # the check is advice; never fail a run over it
        return None
    limits = [w.get("memory_limit") or 0 for w in workers.values()]
    limits = [m for m in limits if m > 0]
    return min(limits) if limits else None


@contextmanager
def client_for(client: Any, cluster: str | os.PathLike | None, scheduler: str | None,
                  security: Any, workers: int | None, out: TextIO) -> Iterator[Any]:
    """``client`` itself when given, else a client from :func:`open_client` (closed after)."""
    if client is not None:
        yield client
    else:
        with open_client(scheduler, workers, out, security=security, cluster=cluster) as cl:
            yield cl
