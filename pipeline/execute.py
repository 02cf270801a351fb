"""Running a sweep: blocks become Dask tasks that simulate and write their own store region.

The driver (this module's :func:`run_sweep`) validates, prepares the store (metadata once),
submits one task per block that is not in the ledger, shows progress, reports failures with
the failing point's parameters and seeds, and consolidates the metadata at the end. Results
never travel through the driver: a task returns a small summary (status counts, warnings).
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from . import ledger
from . import store as zstore
from .errors import SpecError
from .ledger import StoreRef
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

    @property
    def label(self) -> str:
        """``block 000003-0000000064 (point d=1000, k=2; seeds 64..95)``."""
        return (f"block {self.block_id} (point {self.where}; seeds "
                f"{self.start}..{self.stop - 1})")


def run_block(task: BlockTask) -> dict[str, Any]:
    """Simulate one block, write its region, then record it in the ledger.

    Runs on a worker (one thread: ``threads=1``). Warnings are captured and returned, not
    printed once per block. Any failure is raised as :class:`BlockError` naming the point's
    parameters and the seeds; the block then has no ledger entry and a re-run computes it.
    """
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            times = task.layout.times
            ds = simulate(task.params, range(task.start, task.stop), root_seed=task.root_seed,
                          snapshots=None if times is None else list(times), threads=1)
        zstore.write_block(task.store, task.layout, task.point_index, task.start, task.stop,
                           ds)
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
        ledger.mark_done(task.store, task.block_id, record)
    except Exception as err:
        raise BlockError(f"{task.label} failed: {type(err).__name__}: {err}",
                         traceback.format_exc()) from None
    return record


def tasks_for(spec: Spec, ref: StoreRef, layout: zstore.Layout, run_id: str,
              skip: set[str] | frozenset[str] = frozenset()) -> list[BlockTask]:
    """One :class:`BlockTask` per block of ``spec`` whose id is not in ``skip``."""
    out = []
    for block in spec.blocks:
        if block.id in skip:
            continue
        sp = spec.points[block.point_index]
        out.append(BlockTask(ref, layout, block.id, block.point_index, sp.point.hash,
                             sp.params, spec.describe_point(block.point_index), block.start,
                             block.stop, spec.root_seed, run_id))
    return out


def block_memory_bytes(spec: Spec, layout: zstore.Layout) -> int:
    """Rough peak memory of one block on a worker.

    The results exist about three times (simulate's dataset, the padded region, the encoded
    chunks) and the integrator's states about four times (initial, current, final, overlaps);
    a state is k + 1 numbers per neuron, or d with the full-d backend.
    """
    width = max((p.point.d if p.point.backend == "full" else p.point.k + 1)
                for p in spec.points)
    state = spec.block_seeds * layout.n_max * width * 8
    return 3 * layout.block_nbytes() + 4 * state


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
    fs, root = ref.fs()
    try:
        return fs.isdir(root) and not fs.ls(root, detail=False)
    except FileNotFoundError:
        return True


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
        "versions": json.dumps(versions(), sort_keys=True),
        "git_revision": git_revision(),
        "created": utc_now(),
    }


# ---------------------------------------------------------------------------------------------
# The cluster.


@contextmanager
def open_client(scheduler: str | None = None, workers: int | None = None,
                out: TextIO | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: on the cluster at ``scheduler``, or on an embedded
    ``LocalCluster`` of ``workers`` processes with one thread each (dashboard on 127.0.0.1).
    """
    from distributed import Client, LocalCluster

    out = out if out is not None else sys.stderr
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as err:
            raise SpecError("scheduler", scheduler, "the address of a running Dask scheduler "
                            "(tcp://host:8786 or tls://...)",
                            hint=f"{type(err).__name__}: {err}") from None
        out.write(f"mimflow: scheduler {scheduler}, dashboard {client.dashboard_link}\n")
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    out.write(f"mimflow: local cluster of {n} worker processes (1 thread each) at "
              f"{cluster.scheduler_address}, dashboard {cluster.dashboard_link}\n")
    try:
        yield client
    finally:
        client.close()
        cluster.close()


# ---------------------------------------------------------------------------------------------
# The driver.


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

    @property
    def ok(self) -> bool:
        """True when every block of the sweep is in the store."""
        return not self.missing and not self.interrupted


def new_run_id() -> str:
    """A sortable, unique run id (UTC time and a random suffix)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def run_sweep(spec: Spec, store: str, *, client: Any = None, scheduler: str | None = None,
              workers: int | None = None, overwrite: bool = False,
              storage_options: dict | None = None, out: TextIO | None = None) -> RunReport:
    """Run (or resume) ``spec`` into ``store``; see the module docstring.

    ``client`` (an existing ``distributed.Client``) takes precedence over ``scheduler``
    (an address), which takes precedence over an embedded ``LocalCluster`` of ``workers``
    processes. Raises :class:`SpecError` for a store that may not be used; block failures do
    not raise: they are reported, and listed in ``RunReport.missing``.

    Worker processes are spawned, so a script that calls this with the embedded cluster needs
    the usual ``if __name__ == "__main__":`` guard. With a remote scheduler, a local store
    path must be on a file system the workers share (or use an object-store URL).
    """
    out = out if out is not None else sys.stderr
    ref = StoreRef.parse(store, storage_options)
    action = check_store(spec, ref, overwrite=overwrite)
    run_id = new_run_id()
    report = RunReport(run_id, ref.url, len(spec.blocks))
    out.write(f"mimflow: sweep {spec.name!r} from {spec.source}: {len(spec.points)} points x "
              f"{spec.seeds} seeds = {spec.n_trajectories} trajectories in "
              f"{len(spec.blocks)} blocks\n")
    for w in spec.warnings:
        out.write(f"mimflow: warning ({w.category}, {len(w.points)} of {len(spec.points)} "
                  f"points): {w.message}\n")

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

    with _maybe_client(client, scheduler, workers, out) as cl:
        if action == "create":
            layout = zstore.create(ref, spec, store_attrs(spec))
        else:
            layout = zstore.Layout.for_spec(spec)
        tasks = tasks_for(spec, ref, layout, run_id, skip=done)
        try:
            _execute(cl, tasks, report, out)
        except KeyboardInterrupt:
            report.interrupted = True
            out.write("\nmimflow: interrupted; finished blocks are kept\n")
    zstore.consolidate(ref)
    report.seconds = time.perf_counter() - t0
    finished = ledger.done_ids(ref)
    report.missing = [b.id for b in spec.blocks if b.id not in finished]
    _summarize(spec, report, out)
    ledger.write_run(ref, run_id, {
        "run": run_id, "spec_hash": spec.hash, "finished": utc_now(),
        "seconds": round(report.seconds, 3), "computed": report.computed,
        "failed": report.failed, "missing": len(report.missing),
        "status_counts": dict(report.status_counts), "warnings": dict(report.warnings),
        "interrupted": report.interrupted,
    })
    return report


@contextmanager
def _maybe_client(client: Any, scheduler: str | None, workers: int | None,
                  out: TextIO) -> Iterator[Any]:
    if client is not None:
        yield client
    else:
        with open_client(scheduler, workers, out) as cl:
            yield cl


def _execute(client: Any, tasks: list[BlockTask], report: RunReport, out: TextIO) -> None:
    from distributed import as_completed

    keys = [f"mimflow-{t.block_id}-{t.run_id}" for t in tasks]
    futures = client.map(run_block, tasks, key=keys, pure=False)
    task_of = {f.key: (f, t) for f, t in zip(futures, tasks, strict=True)}
    progress = Progress(len(tasks), out)
    # Results (small records) come back in batches, errors as values: one bad block must not
    # stop the loop.
    pending = as_completed(futures, with_results=True, raise_errors=False)
    del futures  # as_completed holds them; each is released once handled
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
                message = str(err) if isinstance(err, BlockError) else \
                    f"{task.label} failed: {type(err).__name__}: {err}"
                details = err.details if isinstance(err, BlockError) else ""
                report.failed.append({"block": task.block_id, "point": task.point_index,
                                      "params": task.where,
                                      "seeds": [task.start, task.stop],
                                      "error": message, "traceback": details})
                progress.advance(failed=True)
                progress.note(f"mimflow: FAILED {message}")
            fut.release()
    except BaseException:
        pending.clear()
        client.cancel([f for f, _ in task_of.values()])
        raise
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
