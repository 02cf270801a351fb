"""The worker side of a run: one work unit simulated, written into its own shards, recorded.

:func:`run_unit` is what a Dask task runs; :class:`UnitTask` is everything it needs (small
and picklable). The driver (:mod:`pipeline.execute`) builds the tasks and never sees the
results, only the small record each task returns.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _testhooks, ledger, verify
from . import store as zstore
from .engine.params import hash_text
from .engine.simulate import compute
from .ledger import StoreRef
from .provenance import utc_now
from .units import Unit

if TYPE_CHECKING:
    from sweeps.points import PointRange


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
class UnitTask:
    """Everything a worker needs to compute one work unit and write it (small, picklable)."""

    store: StoreRef
    layout: zstore.Layout
    unit: Unit
    points: PointRange
    """The unit's points (parameters by column, a digest of their hashes)."""
    root_seed: int
    run_id: str
    store_id: str | None = None
    """The store incarnation the unit belongs to (``store_id`` of its ``initialized``
    marker): a unit never writes into a store that was replaced after it was submitted."""
    recompute: bool = False
    """Compute and write the unit even if its ledger marker says it is done (its data was
    found damaged, or its marker is)."""

    @property
    def id(self) -> str:
        """The unit's ledger key."""
        return self.unit.id

    @property
    def label(self) -> str:
        """``block 000003-0000000064 (point d=1000, k=2; seeds 64..95)`` for a unit of one
        point, ``unit ... (points #0..#99: d=100 .. d=1000; seeds 0..3)`` otherwise."""
        u = self.unit
        kind = "block" if not self.layout.sharded else "unit"
        where = (f"point {self.points.first}" if u.p1 - u.p0 == 1 else
                 f"points #{u.p0}..#{u.p1 - 1}: {self.points.first} .. "
                 f"{self.points.last}")
        return f"{kind} {self.id} ({where}; seeds {u.s0}..{u.s1 - 1})"


class StoreReplaced(RuntimeError):
    """The store was deleted or re-created (``--overwrite`` by a later run) after this
    block was submitted: the block must not write into it."""


def _check_store_id(task: UnitTask) -> None:
    if task.store_id is None:
        return
    init = ledger.get_json(task.store, ledger.INITIALIZED)
    if (init or {}).get("store_id") != task.store_id:
        raise StoreReplaced(f"the store {task.store.url} was replaced or deleted since this "
                            "unit was submitted (a later run with --overwrite?); nothing "
                            "was written")


def run_unit(task: UnitTask) -> dict[str, Any]:
    """Simulate one work unit, write its shards, then record it in the ledger.

    Runs on a worker (one thread: ``threads=1``). Warnings are captured and returned, not
    printed once per point. Any failure is raised as :class:`BlockError` naming the failing
    point's parameters and the seeds; the unit then has no ledger entry (nothing of it is
    written: its shards are written only once every point is computed) and a re-run
    computes it.

    Safe to run twice, even at once (Dask re-runs a task whose worker died; a driver killed
    mid-sweep leaves tasks running while the next run resubmits them): the unit's region is
    whole shards of its own, recomputed bit for bit, and each shard is replaced atomically
    (a temporary file renamed, or one object-store put), so a second writer only rewrites
    the same bytes and a writer killed mid-way leaves the old shard or the new one. The
    ledger marker is written after the data, so a unit without one is simply done again;
    one that finds its marker already there returns that record without recomputing.
    """
    t0 = time.perf_counter()
    unit, layout = task.unit, task.layout
    seeds = range(unit.s0, unit.s1)
    times = None if layout.times is None else list(layout.times)
    current = None
    try:
        _testhooks.before_block(task.id)
        _check_store_id(task)
        existing = None if task.recompute else \
            ledger.get_json(task.store, ledger.marker(task.id))
        if existing is not None and isinstance(existing.get("status_counts"), dict) \
                and ledger.covers(existing, unit):
            existing.pop("block", None)  # the same record as the execution that wrote it
            return existing
        data = zstore.fill_unit(layout, unit)
        counts: dict[str, int] = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hashes = []
            for row in range(unit.p1 - unit.p0):
                current = row
                run = compute(task.points.params(row), seeds, root_seed=task.root_seed,
                              snapshots=times, threads=1)
                hashes.append(run.point.hash)
                zstore.put_point(layout, data, row, run)
        current = None
        if hash_text(hashes) != task.points.digest:  # driver and worker must agree on them
            raise ValueError("the unit's points resolve to other content hashes on this "
                             "worker than in the driver: are both running the same mimflow "
                             "version?")
        status = data["status"]  # -1: padding (neurons beyond a point's n)
        for s, c in zip(*np.unique(status[status >= 0], return_counts=True), strict=True):
            counts[zstore.STATUS_FLAGS[int(s)]] = int(c)
        # Checked again just before writing: a replacement of the store (--overwrite by a
        # later run) while this unit computed must not receive its shards.
        _check_store_id(task)
        zstore.write_unit(task.store, layout, unit, data)
        # What was stored, read back: the ledger's record of this unit's integrity.
        chunks = verify.stored_chunks(task.store, (v.name for v in layout.variables),
                                      unit.p0, unit.s0, layout.grid)
        _testhooks.after_write(task.id)
        record = {
            "point": unit.p0, "points": [unit.p0, unit.p1],
            "point_hash": task.points.first_hash, "seeds": [unit.s0, unit.s1],
            "status_counts": counts, "chunks": chunks,
            "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
            "seconds": round(time.perf_counter() - t0, 6), "run": task.run_id,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "finished": utc_now(),
        }
        _check_store_id(task)  # (replaced while this unit wrote: no marker either)
        ledger.mark_done(task.store, task.id, record)
    except Exception as err:
        what = task.label if current is None else \
            (f"{task.label}, at point {task.points.describe(current)} (#{unit.p0 + current}; "
             f"seeds {unit.s0}..{unit.s1 - 1})")
        raise BlockError(f"{what} failed: {type(err).__name__}: {err}",
                         traceback.format_exc()) from None
    return record
