"""The driver of a run: work units become Dask tasks that simulate and write their own shards.

:func:`run_sweep` validates, takes the store's run lock (:mod:`pipeline.lock`: one live
driver per store), prepares the store (metadata once, :mod:`pipeline.preflight` decides
whether to create or resume), submits one task per work unit (:mod:`pipeline.units`) that
the ledger does not list - a bounded window of them at a time, topped up as each finishes, so
that neither the scheduler nor the driver holds the whole sweep - (with Dask ``retries`` for
units that raise), shows progress, reports failures with the failing point's parameters and
seeds, and consolidates the metadata at the end. The task itself is
:func:`pipeline.worker.run_unit`; results never travel through the driver, only a small
summary (status counts, warnings). Re-running a unit, by Dask after a worker died or by a
later driver, is harmless (see ``run_unit``), which is what makes a killed worker or a
killed driver lose nothing. Clusters come from :mod:`pipeline.cluster`.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, TextIO

from . import ledger, verify
from . import store as zstore
from .cluster import client_for, worker_memory_limit
from .ledger import StoreRef
from .lock import DEFAULT_TTL, RunLock, describe_holder
from .preflight import check_store, store_attrs
from .progress import Progress
from .provenance import utc_now
from .resources import check_block_count, check_unit_count, memory_advice, memory_refusal
from .verify import describe_unit
from .warmup import slots, sweep_kinds, warm_cluster
from .worker import BlockError, UnitTask, run_unit

if TYPE_CHECKING:
    from sweeps.spec import Spec


def tasks_for(spec: Spec, ref: StoreRef, layout: zstore.Layout, run_id: str,
              skip: set[str] | frozenset[str] = frozenset(),
              store_id: str | None = None,
              recompute: set[str] | frozenset[str] = frozenset()) -> Iterator[UnitTask]:
    """One :class:`UnitTask` per work unit of ``layout`` whose id is not in ``skip``; those
    in ``recompute`` are computed even though their marker says done. A generator: the
    driver builds each task only when it submits it."""
    for unit in layout.units():
        if unit.id in skip:
            continue
        yield UnitTask(ref, layout, unit, spec.points.slice(unit.p0, unit.p1), spec.root_seed,
                       run_id, store_id,
                       unit.id in recompute)


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
    action = check_store(spec, ref, overwrite=overwrite)
    # A resumed store keeps the work units it was created with (its shards).
    layout = zstore.Layout.for_spec(spec) if action == "create" else \
        zstore.Layout.for_store(spec, zstore.read_attrs(ref) or {})
    check_unit_count(spec, layout)
    run_id = new_run_id()
    seeds = (f"{spec.seeds} seeds = " if layout.planned is None  # else: planned per point
             else f"up to {spec.seeds} seeds, ")
    out.write(f"mimflow: sweep {spec.name!r} from {spec.source}: {len(spec.points)} points x "
              f"{seeds}{spec.n_trajectories} trajectories in {layout.n_units} "
              f"{_unit_word(layout)}s\n")
    for w in spec.warnings:
        out.write(f"mimflow: warning ({w.category}, {len(w.points)} of {len(spec.points)} "
                  f"points): {w.message}\n")
    with client_for(client, cluster, scheduler, security, workers, out) as cl:
        # A point whose one seed exceeds a worker's memory could only kill workers: refused
        # before the lock (whose folder would be the first trace in the store).
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


def _unit_word(layout: zstore.Layout) -> str:
    """What a store's units are called: blocks in layout 1, work units in layout 2."""
    return "work unit" if layout.sharded else "block"


def _run_locked(spec: Spec, layout: zstore.Layout, ref: StoreRef, client: Any, run_id: str,
                lock: RunLock, overwrite: bool, retries: int, out: TextIO) -> RunReport:
    # Decided again under the lock: another run may have created or replaced the store
    # between the first look and now.
    action = check_store(spec, ref, overwrite=overwrite)
    if action == "create" and not layout.sharded:
        layout = zstore.Layout.for_spec(spec)  # (a layout-1 store replaced meanwhile)
    started = time.time()
    word = _unit_word(layout)
    report = RunReport(run_id, ref.url, layout.n_units)
    done, recompute = _done_units(spec, layout, ref, out) if action == "resume" \
        else (set(), set())
    report.already_done = len(done)
    pending = layout.n_units - report.already_done
    if action == "resume":
        out.write(f"mimflow: resuming {ref.url}: {report.already_done} of {layout.n_units} "
                  f"{word}s already done\n")
    else:
        out.write(f"mimflow: creating {ref.url}\n")
    t0 = time.perf_counter()
    if pending == 0:
        _clean_temporaries(ref, started, out)
        zstore.consolidate(ref)
        out.write(f"mimflow: nothing to do, every {word} is in the store\n")
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
        # The kernels the sweep needs, compiled once per machine before any unit runs.
        compile_seconds = warm_cluster(client, sweep_kinds(spec), layout.times is not None,
                                       out)
        _execute(client, tasks, pending, report, out, retries=retries, lock=lock,
                 compile_seconds=compile_seconds)
    except KeyboardInterrupt:
        report.interrupted = True
        out.write(f"\nmimflow: interrupted; finished {word}s are kept\n")
    if report.lock_lost:
        # Another run has the store now: leave metadata and run records to it.
        out.write("mimflow: this run lost the store's lock (its heartbeat stopped for longer "
                  "than the lease, and another run took the store over); stopped; finished "
                  f"{word}s are kept\n")
        report.missing = _missing(layout, ref)
        return report
    _clean_temporaries(ref, started, out)
    zstore.consolidate(ref)
    report.seconds = time.perf_counter() - t0
    report.missing = _missing(layout, ref)
    _summarize(spec, layout, report, out)
    ledger.write_run(ref, run_id, {
        "run": run_id, "spec_hash": spec.hash, "finished": utc_now(),
        "seconds": round(report.seconds, 3), "computed": report.computed,
        "failed": report.failed, "missing": len(report.missing),
        "status_counts": dict(report.status_counts), "warnings": dict(report.warnings),
        "interrupted": report.interrupted, "retries": retries,
    })
    return report


def _layout_attrs(layout: zstore.Layout) -> dict[str, Any]:
    """What :func:`pipeline.verify.describe_unit` needs of a store, from its layout."""
    return {"points": layout.points, "seeds": layout.seeds, **layout.attrs()}


def _done_units(spec: Spec, layout: zstore.Layout, ref: StoreRef, out: TextIO
                ) -> tuple[set[str], set[str]]:
    """(done, recompute): units of ``layout`` whose marker is valid and whose shards (layout
    1: chunks) are all there with the sizes they stored, and units to compute again although
    a marker exists (a damaged marker, or data found missing or truncated); each of the
    latter is named."""
    units = {u.id: u for u in layout.units()}
    markers = ledger.read_markers(ref)
    records = {i: r for i, r in markers.records.items()
               if i in units and ledger.covers(r, units[i])}
    damaged = verify.quick_check(ref, [v.name for v in layout.variables], records,
                                 layout.grid)
    problems = [(i, f"its data is damaged: {why}") for i, why in sorted(damaged.items())]
    problems += [(i, f"its ledger marker {why}") for i, why in sorted(markers.damaged.items())
                 if i in units]
    attrs = _layout_attrs(layout)
    for n, (unit_id, why) in enumerate(problems):
        if n == 10:
            out.write(f"mimflow: ... and {len(problems) - 10} more {_unit_word(layout)}s to "
                      "compute again\n")
            break
        what = describe_unit(attrs, unit_id, layout.grid, spec.describe_point)
        out.write(f"mimflow: warning: {what} is computed again: {why}\n")
    recompute = {i for i, _ in problems}
    return set(records) - recompute, recompute


def _clean_temporaries(ref: StoreRef, started: float, out: TextIO) -> None:
    """Remove temporary files (``*.partial``) that writers killed before this run started
    left in the store; younger ones may belong to a writer still finishing."""
    removed = verify.remove_temporaries(ref, older_than=started)
    if removed:
        out.write(f"mimflow: removed {len(removed)} temporary files left by interrupted "
                  "writers\n")


def _missing(layout: zstore.Layout, ref: StoreRef) -> list[str]:
    """Ids of the units of ``layout`` without a valid completion marker (nor found damaged
    by a quick look at their shards)."""
    units = {u.id: u for u in layout.units()}
    markers = ledger.read_markers(ref)
    records = {i: r for i, r in markers.records.items()
               if i in units and ledger.covers(r, units[i])}
    finished = set(records) - set(verify.quick_check(
        ref, [v.name for v in layout.variables], records, layout.grid))
    return [i for i in units if i not in finished]


#: Work units on the scheduler at once, per worker thread: enough that no thread waits for
#: its next unit, few enough that scheduler and driver memory do not grow with the sweep.
WINDOW_PER_SLOT = 3


def _execute(client: Any, tasks: Iterable[UnitTask], total: int, report: RunReport,
             out: TextIO, *, retries: int = DEFAULT_RETRIES, lock: RunLock | None = None,
             compile_seconds: float | None = None) -> None:
    """Run ``tasks`` (``total`` of them) keeping a bounded window of them on the scheduler:
    a new unit is submitted as each one finishes."""
    from distributed import as_completed

    tasks = iter(tasks)
    first = next(tasks, None)
    tasks_sharded = first is not None and first.layout.sharded
    if first is not None:
        tasks = chain([first], tasks)
    n_slots = slots(client)
    task_of: dict[str, tuple[Any, UnitTask]] = {}
    # Results (small records) come back as they finish, errors as values: one bad unit must
    # not stop the loop. loop=client.loop: without it as_completed tracks the futures on the
    # *default* client's event loop, which in a process holding two clients is another
    # thread's loop driving this client's connections; that raced inside tornado and hung
    # a run for good (seen in CI).
    pending = as_completed(loop=client.loop, with_results=True, raise_errors=False)

    def submit(batch: Iterable[UnitTask]) -> None:
        for task in batch:
            # retries: a unit that raised is run again (on any worker) before it counts as
            # failed; re-running is harmless (see run_unit).
            fut = client.submit(run_unit, task, key=f"mimflow-{task.id}-{task.run_id}",
                                pure=False, retries=retries)
            task_of[fut.key] = (fut, task)
            pending.add(fut)

    # slots: each worker thread's first unit may still pay one-off costs (imports, loading
    # the kernels), which the remaining-time estimate leaves out (pipeline.progress).
    progress = Progress(total, out, slots=n_slots)
    progress.compile_seconds = compile_seconds
    if tasks_sharded:
        progress.what = "work units"
    handled_all = False
    try:
        submit(islice(tasks, WINDOW_PER_SLOT * max(n_slots, 1)))
        for fut, result in pending:
            _, task = task_of.pop(fut.key)
            submit(islice(tasks, 1))  # keep the window full
            if fut.status == "finished":
                record = result
                report.computed.append(task.id)
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
                u = task.unit
                report.failed.append({"block": task.id, "unit": task.id,
                                      "point": u.p0, "points": [u.p0, u.p1],
                                      "params": task.points.first,
                                      "seeds": [u.s0, u.s1],
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


def _summarize(spec: Spec, layout: zstore.Layout, report: RunReport, out: TextIO) -> None:
    total, word = layout.n_units, _unit_word(layout)
    out.write(f"mimflow: computed {len(report.computed)} {word}s in {report.seconds:.1f} s; "
              f"{total - len(report.missing)} of {total} {word}s in {report.store}\n")
    if report.status_counts:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(report.status_counts.items()))
        out.write(f"mimflow: neuron status this run: {counts}\n")
    known = {w.message for w in spec.warnings}
    for message, units in sorted(report.warnings.items()):
        if not any(k in message for k in known):  # each warning once, not once per unit
            out.write(f"mimflow: warning in {units} {word}s: {message}\n")
    if report.missing:
        out.write(f"mimflow: {len(report.missing)} of {total} {word}s are missing "
                  f"({len(report.failed)} failed in this run):\n")
        attrs = _layout_attrs(layout)
        for unit_id in report.missing[:10]:
            out.write(f"  {describe_unit(attrs, unit_id, layout.grid, spec.describe_point)}\n")
        if len(report.missing) > 10:
            out.write(f"  ... and {len(report.missing) - 10} more\n")
        out.write(f"mimflow: re-run the same command to compute only the missing {word}s\n")
