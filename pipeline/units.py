"""Work units: the rectangles of ``points x seeds`` that one task simulates and writes.

A sweep of many cheap points would spend nearly all its time on per-task costs (a Dask task,
a store write per variable, a ledger record) if each block were a task. A work unit groups
``unit_points`` consecutive points and ``unit_seeds`` consecutive seeds (whole blocks): one
task, one shard of every variable (:mod:`pipeline.store`), one ledger record. Units tile the
``(point, seed)`` plane exactly like the store's shards, so no two units share a shard.

Grouping never changes a number: a unit calls :func:`pipeline.simulate` once per point over
its seed range, and seed ``i`` of a point gives the same numbers whatever other seeds are
simulated with it.

The size is chosen from the spec (:func:`plan`) with a rough cost model (seconds of work per
unit near :data:`TARGET_SECONDS`) and a memory bound, or set in the spec (``unit_points``,
``unit_seeds``). A store records its unit shape; a resumed run uses the store's, never a new
plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sweeps.spec import Spec

#: Seconds of work one unit should hold: long enough that per-task costs (~0.1 s on a busy
#: 2-core machine) vanish, short enough that progress moves and a lost unit costs little.
TARGET_SECONDS = 10.0
#: What one point costs besides its trajectories (sampling set-up, the result's dataset).
POINT_SECONDS = 2e-3
#: What one integrator step of one neuron costs per state component (a rough average over
#: the compiled kernels on one core).
STEP_SECONDS = 5e-8
#: Most bytes of results one unit may hold (a worker holds them about three times).
UNIT_BYTES = 64 * 2**20
#: Most points one unit may hold (its task carries every point's parameters).
MAX_UNIT_POINTS = 8192
#: A sweep is cut into at least this many units when it has the points for it, so that
#: workers share it and progress moves.
MIN_UNITS = 8


@dataclass(frozen=True)
class Unit:
    """One work unit: points ``[p0, p1)`` x seeds ``[s0, s1)``."""

    p0: int
    p1: int
    s0: int
    s1: int

    @property
    def id(self) -> str:
        """Its ledger key: the id of its first block (``000003-0000000064``)."""
        from sweeps.spec import block_id

        return block_id(self.p0, self.s0)

    @property
    def n_trajectories(self) -> int:
        """Trajectories (point, seed pairs) it holds."""
        return (self.p1 - self.p0) * (self.s1 - self.s0)


def point_seconds(spec: Spec, seeds: int) -> float:
    """Rough seconds of one point of ``spec`` over ``seeds`` seeds (the slowest point)."""
    worst = 0.0
    for profile in spec.points.profiles:  # each with its largest d, t_max and budgets
        p = profile.point
        width = p.d if p.backend == "full" else p.k + 1
        if p.loss == "mse":
            width += p.n
        if p.method == "sgd":
            steps = min(p.max_samples, 10**6)
            width = p.d
        else:  # adaptive steps grow slowly with the horizon
            steps = min(p.max_steps, 100 + 40 * math.log10(1 + p.t_max))
        worst = max(worst, p.n * width * steps * STEP_SECONDS)
    return POINT_SECONDS + seeds * worst


def plan(spec: Spec, trajectory_bytes: int) -> tuple[int, int]:
    """``(unit_points, unit_seeds)`` for ``spec``: the spec's settings where given, else sized
    so that a unit holds about :data:`TARGET_SECONDS` of work and at most
    :data:`UNIT_BYTES` of results (``trajectory_bytes``: one trajectory's results); one
    block for an adaptive sweep."""
    seeds, block = spec.seeds, spec.block_seeds
    if getattr(spec, "refine", None) is not None:
        # An adaptive sweep adds seed blocks to single points round by round: a unit of one
        # block is the only shape whose shards a later round never has to rewrite.
        return 1, block
    unit_seeds = spec.unit_seeds
    if unit_seeds is None:
        # As many whole blocks as the time and memory targets allow; all seeds if they fit.
        per_seed = max(point_seconds(spec, 1) - POINT_SECONDS, 1e-12)
        fit = min(TARGET_SECONDS / per_seed, UNIT_BYTES / max(trajectory_bytes, 1))
        unit_seeds = seeds if fit >= seeds else max(block, int(fit) // block * block)
    unit_points = spec.unit_points
    if unit_points is None:
        if unit_seeds < seeds:
            unit_points = 1  # one point's seeds already fill a unit
        else:
            fit = min(TARGET_SECONDS / point_seconds(spec, unit_seeds),
                      UNIT_BYTES / max(trajectory_bytes * unit_seeds, 1), MAX_UNIT_POINTS)
            unit_points = max(1, min(int(fit), -(-len(spec.points) // MIN_UNITS)))
    return min(unit_points, len(spec.points)), unit_seeds


def tile(points: int, seeds: int, unit_points: int, unit_seeds: int,
         first_point: int = 0) -> Iterator[Unit]:
    """The units of a ``points x seeds`` plane, point range by point range (units start at
    multiples of the unit shape: they are the store's shards). ``first_point``: begin with
    the unit that holds it (for a store grown along ``point``)."""
    for p0 in range(first_point // unit_points * unit_points, points, unit_points):
        for s0 in range(0, seeds, unit_seeds):
            yield Unit(p0, min(p0 + unit_points, points), s0, min(s0 + unit_seeds, seeds))


def count(points: int, seeds: int, unit_points: int, unit_seeds: int) -> int:
    """Number of units of a ``points x seeds`` plane (computed, not enumerated)."""
    return -(-points // unit_points) * -(-seeds // unit_seeds)
