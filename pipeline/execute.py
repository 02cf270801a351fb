"""The driver of a run: blocks become Dask tasks that simulate and write their own regions.

:func:`run_sweep` validates, takes the store's run lock (:mod:`pipeline.lock`: one live
driver per store), prepares the store (metadata once, :mod:`pipeline.preflight` decides
whether to create or resume), submits one task per block that the ledger does not list (with
Dask ``retries`` for blocks that raise), shows progress, reports failures with the failing
point's parameters and seeds, and consolidates the metadata at the end. The task itself is
:func:`pipeline.worker.run_block`; results never travel through the driver, only a small
summary (status counts, warnings). Re-running a block, by Dask after a worker died or by a
later driver, is harmless (see ``run_block``), which is what makes a killed worker or a
killed driver lose nothing. Clusters come from :mod:`pipeline.cluster`.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from . import ledger, verify
from . import store as zstore
from .cluster import client_for, worker_memory_limit
from .ledger import StoreRef
from .lock import DEFAULT_TTL, RunLock, describe_holder
from .preflight import check_store, store_attrs
from .progress import Progress
from .provenance import utc_now
from .resources import check_block_count, memory_advice, memory_refusal
from .warmup import slots, sweep_kinds, warm_cluster
from .worker import BlockError, BlockTask, run_block

if TYPE_CHECKING:
    from sweeps.spec import Spec


def tasks_for(spec: Spec, ref: StoreRef, layout: zstore.Layout, run_id: str,
              skip: set[str] | frozenset[str] = frozenset(),
              store_id: str | None = None,
              recompute: set[str] | frozenset[str] = frozenset()) -> list[BlockTask]:
    """One :class:`BlockTask` per block of ``spec`` whose id is not in ``skip``; those in
    ``recompute`` are computed even though their marker says done."""
    out = []
    for block in spec.blocks:
        if block.id in skip:
            continue
        sp = spec.points[block.point_index]
        out.append(BlockTask(ref, layout, block.id, block.point_index, sp.point.hash,
                             sp.params, spec.describe_point(block.point_index), block.start,
                             block.stop, spec.root_seed, run_id, store_id,
                             block.id in recompute))
    return out


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
    check_block_count(spec)
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
    with client_for(client, cluster, scheduler, security, workers, out) as cl:
        # A point whose one seed exceeds a worker's memory could only kill workers: refused
        # before the lock (whose folder would be the first trace in the store).
        layout = zstore.Layout.for_spec(spec)  # computed once, handed to all that need it
        refusal = memory_refusal(spec, layout, worker_memory_limit(cl),
                                 "of this cluster's workers")
        if refusal is not None:
            raise refusal
        # The lock is taken once the cluster is up (a cluster that cannot start leaves no
        # trace in the store) and before anything is written.
        with RunLock(ref, run_id, ttl=lock_ttl) as lock:
            if lock.took_over is not None:
                out.write("mimflow: took over the lock of a run that is no longer alive: "
                          f"{describe_holder(lock.took_over)}\n")
            return _run_locked(spec, layout, ref, cl, run_id, lock, overwrite, retries, out)


def _run_locked(spec: Spec, layout: zstore.Layout, ref: StoreRef, client: Any, run_id: str,
                lock: RunLock, overwrite: bool, retries: int, out: TextIO) -> RunReport:
    # Decided again under the lock: another run may have created or replaced the store
    # between the first look and now.
    action = check_store(spec, ref, overwrite=overwrite)
    started = time.time()
    report = RunReport(run_id, ref.url, len(spec.blocks))
    done, recompute = _done_blocks(spec, layout, ref, out) if action == "resume" else (set(), set())
    report.already_done = sum(b.id in done for b in spec.blocks)
    pending = len(spec.blocks) - report.already_done
    if action == "resume":
        out.write(f"mimflow: resuming {ref.url}: {report.already_done} of {len(spec.blocks)} "
                  f"blocks already done\n")
    else:
        out.write(f"mimflow: creating {ref.url}\n")
    t0 = time.perf_counter()
    if pending == 0:
        _clean_temporaries(ref, started, out)
        zstore.consolidate(ref)
        out.write("mimflow: nothing to do, every block is in the store\n")
        return report
    advice = memory_advice(spec, layout, worker_memory_limit(client),
                           "of this cluster's workers")
    if advice:
        out.write(f"mimflow: warning (memory): {advice}\n")
    if action == "create":
        zstore.create(ref, spec, store_attrs(spec), layout=layout)
    store_id = (ledger.get_json(ref, ledger.INITIALIZED) or {}).get("store_id")
    tasks = tasks_for(spec, ref, layout, run_id, skip=done, store_id=store_id,
                      recompute=recompute)
    try:
        # The kernels the sweep needs, compiled once per machine before any block runs.
        compile_seconds = warm_cluster(client, sweep_kinds(spec), layout.times is not None,
                                       out)
        _execute(client, tasks, report, out, retries=retries, lock=lock,
                 compile_seconds=compile_seconds)
    except KeyboardInterrupt:
        report.interrupted = True
        out.write("\nmimflow: interrupted; finished blocks are kept\n")
    if report.lock_lost:
        # Another run has the store now: leave metadata and run records to it.
        out.write("mimflow: this run lost the store's lock (its heartbeat stopped for longer "
                  "than the lease, and another run took the store over); stopped; finished "
                  "blocks are kept\n")
        report.missing = _missing(spec, layout, ref)
        return report
    _clean_temporaries(ref, started, out)
    zstore.consolidate(ref)
    report.seconds = time.perf_counter() - t0
    report.missing = _missing(spec, layout, ref)
    _summarize(spec, report, out)
    ledger.write_run(ref, run_id, {
        "run": run_id, "spec_hash": spec.hash, "finished": utc_now(),
        "seconds": round(report.seconds, 3), "computed": report.computed,
        "failed": report.failed, "missing": len(report.missing),
        "status_counts": dict(report.status_counts), "warnings": dict(report.warnings),
        "interrupted": report.interrupted, "retries": retries,
    })
    return report


def _done_blocks(spec: Spec, layout: zstore.Layout, ref: StoreRef, out: TextIO
                 ) -> tuple[set[str], set[str]]:
    """(done, recompute): blocks of ``spec`` whose marker is valid and whose chunks are all
    there with the sizes they stored, and blocks to compute again although a marker exists
    (a damaged marker, or data found missing or truncated); each of the latter is named."""
    markers = ledger.read_markers(ref)
    records = {b.id: markers.records[b.id] for b in spec.blocks if b.id in markers.records}
    damaged = verify.quick_check(ref, [v.name for v in layout.variables], records,
                                 spec.block_seeds)
    blocks = {b.id: b for b in spec.blocks}
    problems = [(i, f"its data is damaged: {why}") for i, why in sorted(damaged.items())]
    problems += [(i, f"its ledger marker {why}") for i, why in sorted(markers.damaged.items())
                 if i in blocks]
    for n, (block_id, why) in enumerate(problems):
        if n == 10:
            out.write(f"mimflow: ... and {len(problems) - 10} more blocks to compute again\n")
            break
        b = blocks[block_id]
        out.write(f"mimflow: warning: block {block_id} (point "
                  f"{spec.describe_point(b.point_index)}; seeds {b.start}..{b.stop - 1}) is "
                  f"computed again: {why}\n")
    recompute = {i for i, _ in problems}
    return set(records) - recompute, recompute


def _clean_temporaries(ref: StoreRef, started: float, out: TextIO) -> None:
    """Remove temporary files (``*.partial``) that writers killed before this run started
    left in the store; younger ones may belong to a writer still finishing."""
    removed = verify.remove_temporaries(ref, older_than=started)
    if removed:
        out.write(f"mimflow: removed {len(removed)} temporary files left by interrupted "
                  "writers\n")


def _missing(spec: Spec, layout: zstore.Layout, ref: StoreRef) -> list[str]:
    """Ids of the blocks of ``spec`` without a valid completion marker (nor found damaged
    by a quick look at their chunks)."""
    markers = ledger.read_markers(ref)
    finished = set(markers.records) - set(verify.quick_check(
        ref, [v.name for v in layout.variables], markers.records, spec.block_seeds))
    return [b.id for b in spec.blocks if b.id not in finished]




def _execute(client: Any, tasks: list[BlockTask], report: RunReport, out: TextIO, *,
             retries: int = DEFAULT_RETRIES, lock: RunLock | None = None,
             compile_seconds: float | None = None) -> None:
    from distributed import as_completed

    keys = [f"mimflow-{t.block_id}-{t.run_id}" for t in tasks]
    # retries: a block that raised is run again (on any worker) before it counts as failed;
    # re-running is harmless (see run_block).
    futures = client.map(run_block, tasks, key=keys, pure=False, retries=retries)
    task_of = {f.key: (f, t) for f, t in zip(futures, tasks, strict=True)}
    # slots: each worker thread's first block may still pay one-off costs (imports, loading
    # the kernels), which the remaining-time estimate leaves out (pipeline.progress).
    progress = Progress(len(tasks), out, slots=slots(client))
    progress.compile_seconds = compile_seconds
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
