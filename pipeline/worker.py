"""The worker side of a run: one block simulated, written into its own region, recorded.

:func:`run_block` is what a Dask task runs; :class:`BlockTask` is everything it needs (small
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
from typing import Any

import numpy as np

from . import _testhooks, ledger, verify
from . import store as zstore
from .engine.simulate import simulate
from .ledger import StoreRef
from .provenance import utc_now


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
    recompute: bool = False
    """Compute and write the block even if its ledger marker says it is done (its data was
    found damaged, or its marker is)."""

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
        existing = None if task.recompute else \
            ledger.get_json(task.store, ledger.marker(task.block_id))
        if existing is not None and isinstance(existing.get("status_counts"), dict):
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
        # What was stored, read back: the ledger's record of this block's integrity.
        chunks = verify.stored_chunks(task.store, (v.name for v in task.layout.variables),
                                      task.point_index, task.start, task.layout.block_seeds)
        _testhooks.after_write(task.block_id)
        status = ds["status"].values
        counts = {zstore.STATUS_FLAGS[int(s)]: int(c)
                  for s, c in zip(*np.unique(status, return_counts=True), strict=True)}
        record = {
            "point": task.point_index, "point_hash": task.point_hash,
            "seeds": [task.start, task.stop], "status_counts": counts, "chunks": chunks,
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
