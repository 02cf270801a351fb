"""What a sweep asks of its workers and its driver: memory per block and per work unit,
number of work units.

Checked before anything runs (``mimflow validate``) and again against the actual cluster when
a run starts (``mimflow run``): advice when a block is larger than a worker should hold, a
refusal when even one seed cannot fit, and a limit on the number of blocks a driver tracks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from dask.utils import format_bytes

from . import store as zstore
from .errors import SpecError

if TYPE_CHECKING:
    from sweeps.spec import Spec


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
    width = max((pr.point.d if pr.point.backend == "full" else pr.point.k + 1)
                for pr in spec.points.profiles)
    state = seeds * layout.n_max * width * 8
    if any(pr.point.loss == "mse" for pr in spec.points.profiles):  # the Gram Q: n x n
        state += seeds * layout.n_max * layout.n_max * 8
    return 3 * layout.block_nbytes() + 4 * state


def memory_budget(limit: int) -> int:
    """What one block may use on a worker with memory limit ``limit`` (bytes): the fraction
    at which Dask pauses the worker (``distributed.worker.memory.pause``, 0.8 by default)."""
    import dask

    fraction = dask.config.get("distributed.worker.memory.pause", 0.8)
    if not fraction:
        fraction = dask.config.get("distributed.worker.memory.terminate", 0.95) or 1.0
    return int(limit * float(fraction))


def memory_advice(spec: Spec, layout: zstore.Layout, limit: int | None, where: str = ""
                  ) -> str | None:
    """A warning (text) when one block of ``spec`` needs more memory than a worker with
    memory limit ``limit`` bytes can give it, with the largest ``block_seeds`` that fits;
    ``None`` when it fits or the limit is unknown (``None`` or 0: no limit)."""
    if not limit:
        return None
    need = block_memory_bytes(spec, layout)
    budget = memory_budget(limit)
    if need <= budget:
        return unit_advice(spec, layout, limit, where)
    per_seed = block_memory_bytes(spec, layout, 1)
    fits = budget // per_seed
    source = f" ({where})" if where else ""
    text = (f"a block needs ~{format_bytes(need)}, more than {format_bytes(budget)}, the part "
            f"of the worker memory limit {format_bytes(limit)}{source} at which Dask pauses a "
            "worker; ")
    if fits >= 1:
        text += (f"use block_seeds = {fits} or fewer in the spec (now {spec.block_seeds}), "
                 "or give each worker more memory")
    else:
        text += ("even one seed per block does not fit: give each worker more memory (or "
                 "record fewer snapshot times)")
    return text


def memory_refusal(spec: Spec, layout: zstore.Layout, limit: int | None, where: str = ""
                   ) -> SpecError | None:
    """The error (to raise) when even one seed of a block needs more memory than a worker
    with memory limit ``limit`` has at all: such a run could only die; ``None`` otherwise."""
    if not limit:
        return None
    one = block_memory_bytes(spec, layout, 1)
    if one <= limit:
        return None
    big = max(spec.points.profiles, key=lambda pr: pr.point.n * (
        pr.point.d if pr.point.backend == "full" else pr.point.k + 1))
    source = f" ({where})" if where else ""
    return SpecError("block_seeds", spec.block_seeds,
                     f"blocks that fit in a worker's memory limit {format_bytes(limit)}{source}",
                     hint=f"even one seed needs ~{format_bytes(one)} (n padded to "
                          f"{layout.n_max}, k to {layout.k_max}; the largest point is "
                          f"{spec.describe_point(big.index)}): lower n or the number of "
                          "snapshot times, or give each worker more memory")


#: Most blocks one sweep may have: each is an inner chunk of every variable (an entry of its
#: shard's index, a task of its own in stores of layout 1).
MAX_BLOCKS = 2_000_000


def check_block_count(spec: Spec) -> None:
    """Refuse a sweep of more blocks than :data:`MAX_BLOCKS` (counted, never enumerated)."""
    if spec.n_blocks > MAX_BLOCKS:
        fewer = -(-spec.seeds * len(spec.points) // MAX_BLOCKS)
        raise SpecError("block_seeds", spec.block_seeds,
                        f"a block size that makes at most {MAX_BLOCKS} blocks (this sweep "
                        f"has {spec.n_blocks})",
                        hint=f"use block_seeds = {max(fewer, spec.block_seeds + 1)} or more",
                        source=spec.source)


def unit_memory_bytes(spec: Spec, layout: zstore.Layout) -> int:
    """Rough peak memory of one work unit on a worker: one point over the unit's seeds (as
    :func:`block_memory_bytes`; points are simulated one after the other) and the results of
    the unit's other points, about three times (the unit's arrays, the encoded shards)."""
    per_point = layout.unit_nbytes() // layout.unit_points
    return block_memory_bytes(spec, layout, layout.unit_seeds) + \
        3 * (layout.unit_points - 1) * per_point


def unit_advice(spec: Spec, layout: zstore.Layout, limit: int | None, where: str = ""
                ) -> str | None:
    """A warning (text) when one work unit of ``layout`` needs more memory than a worker
    with memory limit ``limit`` can give it (while one block fits), with a smaller
    ``unit_points`` (or ``unit_seeds``) that fits; ``None`` when it fits."""
    if not limit or not layout.sharded:
        return None
    need, budget = unit_memory_bytes(spec, layout), memory_budget(limit)
    if need <= budget:
        return None
    source = f" ({where})" if where else ""
    text = (f"a work unit needs ~{format_bytes(need)}, more than {format_bytes(budget)}, the "
            f"part of the worker memory limit {format_bytes(limit)}{source} at which Dask "
            "pauses a worker; ")
    one_point = block_memory_bytes(spec, layout, layout.unit_seeds)
    if one_point <= budget:
        per_point = 3 * layout.unit_nbytes() // layout.unit_points
        fits = 1 + (budget - one_point) // max(per_point, 1)
        return text + f"set unit_points = {fits} or fewer in the spec (now {layout.unit_points})"
    block, seeds = spec.block_seeds, layout.block_seeds
    while seeds + block <= layout.unit_seeds and \
            block_memory_bytes(spec, layout, seeds + block) <= budget:
        seeds += block
    return text + f"set unit_points = 1 and unit_seeds = {seeds} in the spec"


#: Most work units one sweep may have: the driver lists them (never all on the scheduler).
MAX_UNITS = 2_000_000


def check_unit_count(spec: Spec, layout: zstore.Layout) -> None:
    """Refuse a sweep of more work units than a driver can list (:data:`MAX_UNITS`)."""
    if layout.n_units > MAX_UNITS:
        fewer = -(-spec.seeds * len(spec.points) // MAX_UNITS)
        raise SpecError("unit_seeds", layout.unit_seeds,
                        f"a work-unit size that makes at most {MAX_UNITS} units (this sweep "
                        f"has {layout.n_units})",
                        hint=f"use unit_seeds = {max(fewer, layout.unit_seeds + 1)} or more "
                             "(a multiple of block_seeds)", source=spec.source)
