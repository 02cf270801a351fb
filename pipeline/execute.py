"""Running a sweep: blocks become Dask tasks that simulate and write their own store region.

The driver (this module's :func:`run_sweep`) validates, takes the store's run lock
(:mod:`pipeline.lock`: one live driver per store), prepares the store (metadata once),
submits one task per block that is not in the ledger (with Dask ``retries`` for blocks that
raise), shows progress, reports failures with the failing point's parameters and seeds, and
consolidates the metadata at the end. Results never travel through the driver: a task returns
a small summary (status counts, warnings). Re-running a block, by Dask after a worker died or
by a later driver, is harmless (see :func:`run_block`), which is what makes a killed worker or
a killed driver lose nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from . import _testhooks, ledger
from . import store as zstore
from .errors import SpecError
from .integrate import convergence_rule
from .ledger import StoreRef
from .lock import DEFAULT_TTL, RunLock, describe_holder
from .progress import Progress
from .provenance import git_revision, utc_now, versions
from .simulate import simulate

if TYPE_CHECKING:
    from sweeps.spec import Spec


class BlockError(RuntimeError):
    """A block failed. ``str()`` names the block, its point's parameters and its seeds;
    ``details`` (the second argument) holds the original traceback."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "block failed"

    @property
    def details(self) -> str:
        """The traceback of the original error, as text."""
        return str(self.args[1]) if len(self.args) > 1 else ""


@dataclass(frozen=True)
class BlockTask:
    """Everything a worker needs to compute one block and write it (small and picklable)."""

    store: StoreRef
    layout: zstore.Layout
    block_id: str
    point_index: int
    point_hash: str
    params: dict[str, Any]
    where: str
    """The point's swept parameters as text, for messages (``d=1000, k=2``)."""
    start: int
    stop: int
    root_seed: int
    run_id: str
    store_id: str | None = None
    """The store incarnation the block belongs to (``store_id`` of its ``initialized``
    marker): a block never writes into a store that was replaced after it was submitted."""

    @property
    def label(self) -> str:
        """``block 000003-0000000064 (point d=1000, k=2; seeds 64..95)``."""
        return (f"block {self.block_id} (point {self.where}; seeds "
                f"{self.start}..{self.stop - 1})")


class StoreReplaced(RuntimeError):
    """The store was deleted or re-created (``--overwrite`` by a later run) after this
    block was submitted: the block must not write into it."""


def _check_store_id(task: BlockTask) -> None:
    if task.store_id is None:
        return
    init = ledger.get_json(task.store, ledger.INITIALIZED)
    if (init or {}).get("store_id") != task.store_id:
        raise StoreReplaced(f"the store {task.store.url} was replaced or deleted since this "
                            "block was submitted (a later run with --overwrite?); nothing "
                            "was written")


def run_block(task: BlockTask) -> dict[str, Any]:
    """Simulate one block, write its region, then record it in the ledger.

    Runs on a worker (one thread: ``threads=1``). Warnings are captured and returned, not
    printed once per block. Any failure is raised as :class:`BlockError` naming the point's
    parameters and the seeds; the block then has no ledger entry and a re-run computes it.

    Safe to run twice, even at once (Dask re-runs a task whose worker died; a driver killed
    mid-sweep leaves tasks running while the next run resubmits them): the block's region is
    whole chunks of its own, recomputed bit for bit, and each chunk is replaced atomically
    (a temporary file renamed, or one object-store put), so a second writer only rewrites
    the same bytes and a writer killed mid-way leaves the old chunk or the new one. The
    ledger marker is written after the data, so a block without one is simply done again;
    one that finds its marker already there returns that record without recomputing.
    """
    t0 = time.perf_counter()
    try:
        _testhooks.before_block(task.block_id)
        _check_store_id(task)
        existing = ledger.get_json(task.store, ledger.marker(task.block_id))
        if existing is not None and "status_counts" in existing:
            existing.pop("block", None)  # the same record as the execution that wrote it
            return existing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            times = task.layout.times
            ds = simulate(task.params, range(task.start, task.stop), root_seed=task.root_seed,
                          snapshots=None if times is None else list(times), threads=1)
        # Checked again just before writing: a replacement of the store (--overwrite by a
        # later run) while this block computed must not receive this block's chunks.
        _check_store_id(task)
        zstore.write_block(task.store, task.layout, task.point_index, task.start, task.stop,
                           ds)
        _testhooks.after_write(task.block_id)
        status = ds["status"].values
        counts = {zstore.STATUS_FLAGS[int(s)]: int(c)
                  for s, c in zip(*np.unique(status, return_counts=True), strict=True)}
        record = {
            "point": task.point_index, "point_hash": task.point_hash,
            "seeds": [task.start, task.stop], "status_counts": counts,
            "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
            "seconds": round(time.perf_counter() - t0, 6), "run": task.run_id,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "finished": utc_now(),
        }
        _check_store_id(task)  # (replaced while this block wrote: no marker either)
        ledger.mark_done(task.store, task.block_id, record)
    except Exception as err:
        raise BlockError(f"{task.label} failed: {type(err).__name__}: {err}",
                         traceback.format_exc()) from None
    return record


def tasks_for(spec: Spec, ref: StoreRef, layout: zstore.Layout, run_id: str,
              skip: set[str] | frozenset[str] = frozenset(),
              store_id: str | None = None) -> list[BlockTask]:
    """One :class:`BlockTask` per block of ``spec`` whose id is not in ``skip``."""
    out = []
    for block in spec.blocks:
        if block.id in skip:
            continue
        sp = spec.points[block.point_index]
        out.append(BlockTask(ref, layout, block.id, block.point_index, sp.point.hash,
                             sp.params, spec.describe_point(block.point_index), block.start,
                             block.stop, spec.root_seed, run_id, store_id))
    return out


def block_memory_bytes(spec: Spec, layout: zstore.Layout, block_seeds: int | None = None) -> int:
    """Rough peak memory of one block on a worker (of ``block_seeds`` seeds; default the
    spec's).

    The results exist about three times (simulate's dataset, the padded region, the encoded
    chunks) and the integrator's states about four times (initial, current, final, overlaps);
    a state is k + 1 numbers per neuron, or d with the full-d backend.
    """
    seeds = spec.block_seeds if block_seeds is None else block_seeds
    if seeds != layout.block_seeds:
        layout = replace(layout, block_seeds=seeds)
    width = max((p.point.d if p.point.backend == "full" else p.point.k + 1)
                for p in spec.points)
    state = seeds * layout.n_max * width * 8
    return 3 * layout.block_nbytes() + 4 * state


def memory_budget(limit: int) -> int:
    """What one block may use on a worker with memory limit ``limit`` (bytes): the fraction
    at which Dask pauses the worker (``distributed.worker.memory.pause``, 0.8 by default)."""
    import dask

    fraction = dask.config.get("distributed.worker.memory.pause", 0.8)
    if not fraction:
        fraction = dask.config.get("distributed.worker.memory.terminate", 0.95) or 1.0
    return int(limit * float(fraction))


def memory_advice(spec: Spec, limit: int | None, where: str = "") -> str | None:
    """A warning (text) when one block of ``spec`` needs more memory than a worker with
    memory limit ``limit`` bytes can give it, with the largest ``block_seeds`` that fits;
    ``None`` when it fits or the limit is unknown (``None`` or 0: no limit)."""
    if not limit:
        return None
    layout = zstore.Layout.for_spec(spec)
    need = block_memory_bytes(spec, layout)
    budget = memory_budget(limit)
    if need <= budget:
        return None
    per_seed = block_memory_bytes(spec, layout, 1)
    fits = budget // per_seed
    source = f" ({where})" if where else ""
    text = (f"a block needs ~{human_bytes(need)}, more than {human_bytes(budget)}, the part of the "
            f"worker memory limit {human_bytes(limit)}{source} at which Dask pauses a worker; ")
    if fits >= 1:
        text += (f"use block_seeds = {fits} or fewer in the spec (now {spec.block_seeds}), "
                 "or give each worker more memory")
    else:
        text += ("even one seed per block does not fit: give each worker more memory (or "
                 "record fewer snapshot times)")
    return text


def human_bytes(nbytes: float) -> str:
    """``512 B``, ``3.5 KiB``, ``4 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.3g} TiB"  # pragma: no cover


def embedded_workers(workers: int | None = None) -> int:
    """Worker processes of the embedded ``LocalCluster``: ``workers``, or one per CPU."""
    return workers or os.cpu_count() or 1


def default_worker_memory(workers: int | None = None) -> int:
    """The memory limit of a worker of the embedded ``LocalCluster`` of ``workers``
    processes: the machine's (or container's) memory divided among them, as Dask does."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT // embedded_workers(workers))


# ---------------------------------------------------------------------------------------------
# The store's relation to a spec.


def check_store(spec: Spec, ref: StoreRef, *, overwrite: bool = False) -> str:
    """Decide what to do with the location ``ref`` for ``spec``, touching nothing.

    Returns ``"create"`` (nothing there, an interrupted creation, or ``overwrite``) or
    ``"resume"`` (a store of this very spec). Raises :class:`SpecError` for a store of
    another spec (unless ``overwrite``) and, always, for anything that is not a mimflow
    store: ``--overwrite`` never deletes data mimflow did not write.
    """
    attrs = zstore.read_attrs(ref)
    if attrs is None:
        if ref.exists() and not _is_empty_dir(ref):
            raise SpecError("store", ref.url, "a new location or an existing mimflow store",
                            hint="something else is there; choose another --store")
        return "create"
    if "mimflow_layout" not in attrs:
        raise SpecError("store", ref.url, "a new location or an existing mimflow store",
                        hint="a zarr store not written by mimflow is there; choose another "
                             "--store (--overwrite does not delete foreign data)")
    if overwrite:
        return "create"
    if attrs.get("spec_hash") != spec.hash:
        raise SpecError(
            "store", ref.url,
            f"a store of this spec ({spec.name!r}, spec hash {spec.hash})",
            hint=f"it holds sweep {attrs.get('name')!r} (spec hash {attrs.get('spec_hash')}, "
                 f"created {attrs.get('created')}); pass --overwrite to replace it or "
                 "--store to write elsewhere")
    init = ledger.get_json(ref, ledger.INITIALIZED)
    if init is None or init.get("spec_hash") != spec.hash:
        return "create"  # creation was interrupted before the metadata was complete
    return "resume"


def _is_empty_dir(ref: StoreRef) -> bool:
    """True for an empty folder, or one holding only mimflow's own bookkeeping folder (the
    run lock, or what a run killed before it created the store left there)."""
    fs, root = ref.fs()
    try:
        if not fs.isdir(root):
            return False
        names = {n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)}
    except FileNotFoundError:
        return True
    return names <= {ledger.BOOK}


def _convergence_rules(spec: Spec) -> dict[str, str]:
    """``{"loss/method": rule}`` for every (loss, method) the sweep's points use."""
    return {f"{sp.point.loss}/{sp.point.method}": convergence_rule(sp.point.loss, sp.point.method)
            for sp in spec.points}


def store_attrs(spec: Spec) -> dict[str, Any]:
    """The store's root attributes: the spec (text and identity) and provenance."""
    return {
        "mimflow_layout": zstore.LAYOUT_VERSION,
        "name": spec.name,
        "description": spec.description,
        "spec_file": spec.source,
        "spec_text": spec.text,
        "spec_hash": spec.hash,
        "seeds": spec.seeds,
        "root_seed": spec.root_seed,
        "block_seeds": spec.block_seeds,
        "points": len(spec.points),
        "blocks": len(spec.blocks),
        # coordinate names (a parameter that is also a data variable is renamed: loss_type)
        "swept": json.dumps([zstore.coord_name(n) for n in spec.swept]),
        "index": json.dumps([zstore.coord_name(n) for n in spec.index]),
        "fixed_params": json.dumps(spec.fixed, sort_keys=True, default=str),
        "warnings": json.dumps([f"{w.category}: {w.message} ({len(w.points)} of "
                                f"{len(spec.points)} points)" for w in spec.warnings]),
        # Which rule decided status 0 (per loss and method), so a store reads on its own.
        "convergence_rules": json.dumps(_convergence_rules(spec), sort_keys=True),
        "versions": json.dumps(versions(), sort_keys=True),
        "git_revision": git_revision(),
        "created": utc_now(),
    }


# ---------------------------------------------------------------------------------------------
# The cluster.


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

    from .cluster import check_address, load_cluster_config, open_cluster

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
    cluster_ = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address="127.0.0.1:0",
                            silence_logs=logging.ERROR)
    client = Client(cluster_)
    out.write(f"mimflow: local cluster of {n} worker processes (1 thread each) at "
              f"{cluster_.scheduler_address}, dashboard {cluster_.dashboard_link}\n")
    try:
        yield client
    finally:
        client.close()
        cluster_.close()


# ---------------------------------------------------------------------------------------------
# The driver.

#: Automatic re-runs of a block that raised, before it is reported as failed (Dask's task
#: ``retries``; a worker that dies is handled separately: its tasks are re-run elsewhere,
#: up to ``distributed.scheduler.allowed-failures`` deaths).
DEFAULT_RETRIES = 2


@dataclass
class RunReport:
    """What one run did: blocks computed, failed and still missing."""

    run_id: str
    store: str
    total: int
    already_done: int = 0
    computed: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    status_counts: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    interrupted: bool = False
    lock_lost: bool = False

    @property
    def ok(self) -> bool:
        """True when every block of the sweep is in the store."""
        return not self.missing and not self.interrupted and not self.lock_lost


def new_run_id() -> str:
    """A sortable, unique run id: UTC time to the nanosecond, then a random suffix.

    The sub-second part matters: two runs in the same second (a quick resume) must still
    sort in the order they started, since ``ledger.runs`` lists records oldest first by id.
    """
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000))
    return f"{stamp}.{ns % 1_000_000_000:09d}Z-{uuid.uuid4().hex[:6]}"


def run_sweep(spec: Spec, store: str, *, client: Any = None, scheduler: str | None = None,
              workers: int | None = None, cluster: str | os.PathLike | None = None,
              security: Any = None, retries: int = DEFAULT_RETRIES, overwrite: bool = False,
              storage_options: dict | None = None, out: TextIO | None = None,
              lock_ttl: float = DEFAULT_TTL) -> RunReport:
    """Run (or resume) ``spec`` into ``store``; see the module docstring.

    ``client`` (an existing ``distributed.Client``) takes precedence over ``cluster`` (a
    cluster configuration file) and ``scheduler`` (an address, with ``security`` for
    ``tls://``), which take precedence over an embedded ``LocalCluster`` of ``workers``
    processes. A block that raises is run again up to ``retries`` times, then reported.
    Raises :class:`SpecError` for a store that may not be used and
    :class:`~pipeline.lock.StoreLocked` when another live run holds the store's lock;
    block failures do not raise: they are reported, and listed in ``RunReport.missing``.

    Worker processes are spawned, so a script that calls this with the embedded cluster needs
    the usual ``if __name__ == "__main__":`` guard. With a remote scheduler, a local store
    path must be on a file system the workers share (or use an object-store URL).
    """
    out = out if out is not None else sys.stderr
    ref = StoreRef.parse(store, storage_options)
    # Before anything is started or written: a foreign store or another spec's is refused.
    check_store(spec, ref, overwrite=overwrite)
    run_id = new_run_id()
    out.write(f"mimflow: sweep {spec.name!r} from {spec.source}: {len(spec.points)} points x "
              f"{spec.seeds} seeds = {spec.n_trajectories} trajectories in "
              f"{len(spec.blocks)} blocks\n")
    for w in spec.warnings:
        out.write(f"mimflow: warning ({w.category}, {len(w.points)} of {len(spec.points)} "
                  f"points): {w.message}\n")
    with _maybe_client(client, cluster, scheduler, security, workers, out) as cl:
        # The lock is taken once the cluster is up (a cluster that cannot start leaves no
        # trace in the store) and before anything is written.
        with RunLock(ref, run_id, ttl=lock_ttl) as lock:
            if lock.took_over is not None:
                out.write("mimflow: took over the lock of a run that is no longer alive: "
                          f"{describe_holder(lock.took_over)}\n")
            return _run_locked(spec, ref, cl, run_id, lock, overwrite, retries, out)


def _run_locked(spec: Spec, ref: StoreRef, client: Any, run_id: str, lock: RunLock,
                overwrite: bool, retries: int, out: TextIO) -> RunReport:
    # Decided again under the lock: another run may have created or replaced the store
    # between the first look and now.
    action = check_store(spec, ref, overwrite=overwrite)
    report = RunReport(run_id, ref.url, len(spec.blocks))
    done = ledger.done_ids(ref) if action == "resume" else set()
    report.already_done = sum(b.id in done for b in spec.blocks)
    pending = len(spec.blocks) - report.already_done
    if action == "resume":
        out.write(f"mimflow: resuming {ref.url}: {report.already_done} of {len(spec.blocks)} "
                  f"blocks already done\n")
    else:
        out.write(f"mimflow: creating {ref.url}\n")
    t0 = time.perf_counter()
    if pending == 0:
        zstore.consolidate(ref)
        out.write("mimflow: nothing to do, every block is in the store\n")
        return report
    advice = memory_advice(spec, _worker_memory(client), "of this cluster's workers")
    if advice:
        out.write(f"mimflow: warning (memory): {advice}\n")
    if action == "create":
        layout = zstore.create(ref, spec, store_attrs(spec))
    else:
        layout = zstore.Layout.for_spec(spec)
    store_id = (ledger.get_json(ref, ledger.INITIALIZED) or {}).get("store_id")
    tasks = tasks_for(spec, ref, layout, run_id, skip=done, store_id=store_id)
    try:
        _execute(client, tasks, report, out, retries=retries, lock=lock)
    except KeyboardInterrupt:
        report.interrupted = True
        out.write("\nmimflow: interrupted; finished blocks are kept\n")
    if report.lock_lost:
        # Another run has the store now: leave metadata and run records to it.
        out.write("mimflow: this run lost the store's lock (its heartbeat stopped for longer "
                  "than the lease, and another run took the store over); stopped; finished "
                  "blocks are kept\n")
        report.missing = _missing(spec, ref)
        return report
    zstore.consolidate(ref)
    report.seconds = time.perf_counter() - t0
    report.missing = _missing(spec, ref)
    _summarize(spec, report, out)
    ledger.write_run(ref, run_id, {
        "run": run_id, "spec_hash": spec.hash, "finished": utc_now(),
        "seconds": round(report.seconds, 3), "computed": report.computed,
        "failed": report.failed, "missing": len(report.missing),
        "status_counts": dict(report.status_counts), "warnings": dict(report.warnings),
        "interrupted": report.interrupted, "retries": retries,
    })
    return report


def _missing(spec: Spec, ref: StoreRef) -> list[str]:
    """Ids of the blocks of ``spec`` that have no completion marker (one ledger listing)."""
    finished = ledger.done_ids(ref)
    return [b.id for b in spec.blocks if b.id not in finished]


def _worker_memory(client: Any) -> int | None:
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
def _maybe_client(client: Any, cluster: str | os.PathLike | None, scheduler: str | None,
                  security: Any, workers: int | None, out: TextIO) -> Iterator[Any]:
    if client is not None:
        yield client
    else:
        with open_client(scheduler, workers, out, security=security, cluster=cluster) as cl:
            yield cl


def _execute(client: Any, tasks: list[BlockTask], report: RunReport, out: TextIO, *,
             retries: int = DEFAULT_RETRIES, lock: RunLock | None = None) -> None:
    from distributed import as_completed

    keys = [f"mimflow-{t.block_id}-{t.run_id}" for t in tasks]
    # retries: a block that raised is run again (on any worker) before it counts as failed;
    # re-running is harmless (see run_block).
    futures = client.map(run_block, tasks, key=keys, pure=False, retries=retries)
    task_of = {f.key: (f, t) for f, t in zip(futures, tasks, strict=True)}
    progress = Progress(len(tasks), out)
    # Results (small records) come back in batches, errors as values: one bad block must not
    # stop the loop.
    pending = as_completed(futures, with_results=True, raise_errors=False)
    del futures  # as_completed holds them; each is released once handled
    handled_all = False
    try:
        for fut, result in pending:
            _, task = task_of.pop(fut.key)
            if fut.status == "finished":
                record = result
                report.computed.append(task.block_id)
                report.status_counts.update(record["status_counts"])
                for w in record["warnings"]:
                    report.warnings[w] += 1
                progress.advance()
            else:
                err = fut.exception()  # (rare) one more round trip for the exception itself
                attempts = f" after {retries + 1} attempts" if retries else ""
                if isinstance(err, BlockError):
                    message = str(err).replace(" failed: ", f" failed{attempts}: ", 1)
                    details = err.details
                else:  # e.g. KilledWorker: its workers kept dying while running it
                    message = f"{task.label} failed: {type(err).__name__}: {err}"
                    details = ""
                report.failed.append({"block": task.block_id, "point": task.point_index,
                                      "params": task.where,
                                      "seeds": [task.start, task.stop],
                                      "error": message, "traceback": details})
                progress.advance(failed=True)
                progress.note(f"mimflow: FAILED {message}")
            fut.release()
            if lock is not None and lock.lost:
                report.lock_lost = True
                break
        else:
            handled_all = True
    finally:
        try:
            if not handled_all:  # an error, Ctrl-C or the lock lost: drop what is left
                pending.clear()
                client.cancel([f for f, _ in task_of.values()])
        finally:
            progress.close()


def _summarize(spec: Spec, report: RunReport, out: TextIO) -> None:
    total = len(spec.blocks)
    out.write(f"mimflow: computed {len(report.computed)} blocks in {report.seconds:.1f} s; "
              f"{total - len(report.missing)} of {total} blocks in {report.store}\n")
    if report.status_counts:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(report.status_counts.items()))
        out.write(f"mimflow: neuron status this run: {counts}\n")
    known = {w.message for w in spec.warnings}
    for message, blocks in sorted(report.warnings.items()):
        if not any(k in message for k in known):  # each warning once, not once per block
            out.write(f"mimflow: warning in {blocks} blocks: {message}\n")
    if report.missing:
        out.write(f"mimflow: {len(report.missing)} of {total} blocks are missing "
                  f"({len(report.failed)} failed in this run):\n")
        blocks = {b.id: b for b in spec.blocks}
        for block_id in report.missing[:10]:
            b = blocks[block_id]
            out.write(f"  block {block_id}: point {spec.describe_point(b.point_index)}, "
                      f"seeds {b.start}..{b.stop - 1}\n")
        if len(report.missing) > 10:
            out.write(f"  ... and {len(report.missing) - 10} more\n")
        out.write("mimflow: re-run the same command to compute only the missing blocks\n")
