"""Compiling the kernels a sweep needs, ahead of its blocks, and counting compilations.

A sweep's points run one compiled entry kernel per *kernel kind* ``(loss, method, backend)``
(:data:`ENTRY_KERNELS`), and only the kinds a sweep uses are compiled: an entry kernel passes
its model to everything it calls as a compile-time constant, so no other model's code is in it
(``dispatch.py``); the MSE flow also runs the continuation stage's compiled helpers
(``continuation.py``). The numbers of a point (``d``, ``k``, ``n``, activations, tolerances,
frame) are all arrays and floats of fixed types, so they never select another compilation.

:func:`warm` runs a tiny point of each kind, which compiles the kind's kernels into numba's
on-disk cache (``_jit``: one cache per kernel-source digest) or loads them from
it; every other process on the machine that uses the same cache directory then loads them
in a fraction of a second instead of compiling them again (the driver arranges one
:func:`warm` per machine, :mod:`pipeline.warmup`).

:func:`compilations` counts the compilations this process did for mimflow's kernels (numba's
per-dispatcher cache-miss counters), which is how the tests see that a kernel was compiled
once per machine and loaded everywhere else.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterable
from typing import Any

from .params import Point

#: The parameters that select compiled kernels.
KIND_FIELDS = ("loss", "method", "backend")
#: Every kernel kind (what an image built for any sweep compiles: ``cluster/Dockerfile``).
ALL_KINDS = tuple((loss, method, backend) for loss in ("correlation", "mse")
                  for method in ("flow", "gd", "sgd") for backend in ("reduced", "full"))

#: The entry kernel (``module.function`` of ``pipeline.engine``) each kind runs.
ENTRY_KERNELS = {
    ("correlation", "flow", "reduced"): "integrate._flow_reduced",
    ("correlation", "flow", "full"): "integrate._flow_full",
    ("correlation", "gd", "reduced"): "integrate._gd_reduced",
    ("correlation", "gd", "full"): "integrate._gd_full",
    ("correlation", "sgd", "reduced"): "sgd_kernels.reduced_chains",
    ("correlation", "sgd", "full"): "sgd_kernels.full_chains",
    ("mse", "flow", "reduced"): "integrate._flow_mse_reduced",
    ("mse", "flow", "full"): "integrate._flow_mse_full",
    ("mse", "gd", "reduced"): "integrate._gd_mse_reduced",
    ("mse", "gd", "full"): "integrate._gd_mse_full",
    ("mse", "sgd", "reduced"): "sgd_coupled.coupled_chains",
    ("mse", "sgd", "full"): "sgd_coupled.coupled_full_chains",
}


#: Kinds whose compilation splits into two units that two workers can compile side by side:
#: the reduced MSE flow's explicit kernel (``integrate._flow_mse_reduced``) and its stiff /
#: continuation stage (``stiff.FINISH``), ~17 s and ~55 s of its ~72 s.
STAGED = frozenset({("mse", "flow", "reduced")})
#: The fourth element of a unit of a ``STAGED`` kind.
EXPLICIT, STAGE = "explicit", "stage"

#: Seconds of a cold first compilation per kind (or unit) on a 2-core machine
#: (``bench_cold.py``, this version): what the warm-up balances when it splits the kinds over a
#: host's workers. Kinds not listed (full-d backends, validation only) count as
#: ``DEFAULT_COMPILE_SECONDS``.
COMPILE_SECONDS = {
    ("correlation", "flow", "reduced"): 9.3,
    ("correlation", "gd", "reduced"): 5.9,
    ("correlation", "sgd", "reduced"): 6.4,
    ("mse", "flow", "reduced"): 72.0,
    ("mse", "flow", "reduced", EXPLICIT): 17.5,
    ("mse", "flow", "reduced", STAGE): 55.0,
    ("mse", "sgd", "reduced"): 11.5,
}
DEFAULT_COMPILE_SECONDS = 10.0


def units(kinds: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The compile units of ``kinds``: a ``STAGED`` kind as its two units, any other kind as
    itself."""
    out: set[tuple[str, ...]] = set()
    for kind in map(tuple, kinds):
        out.update([kind + (EXPLICIT,), kind + (STAGE,)] if kind in STAGED else [kind])
    return sorted(out)


def split_kinds(kinds: Iterable[tuple[str, str, str]], parts: int) -> list[list[tuple]]:
    """The compile units of ``kinds`` (:func:`units`) in at most ``parts`` groups of about
    equal compile time (the longest first, each to the group with the least so far), for the
    workers of one host to compile side by side (:func:`warm` takes a group). Empty groups are
    left out."""
    groups: list[list[tuple]] = [[] for _ in range(max(1, parts))]
    load = [0.0] * len(groups)
    for kind in sorted(units(kinds),
                       key=lambda k: (-COMPILE_SECONDS.get(k, DEFAULT_COMPILE_SECONDS), k)):
        g = load.index(min(load))
        groups[g].append(kind)
        load[g] += COMPILE_SECONDS.get(kind, DEFAULT_COMPILE_SECONDS)
    return [sorted(g) for g in groups if g]


def kernel_kind(point: Point) -> tuple[str, str, str]:
    """``(loss, method, backend)`` of a resolved point: which kernels it runs."""
    return (point.loss, point.method, point.backend)


def tiny_point(kind: tuple[str, str, str]) -> dict[str, Any]:
    """A point of ``kind`` that runs in milliseconds once compiled."""
    loss, method, backend = kind
    p: dict[str, Any] = {"teacher": "h3", "d": 16, "k": 2, "n": 2, "loss": loss,
                         "method": method, "backend": backend}
    if method == "sgd":
        p.update(lr=0.01, max_samples=64)
    elif loss == "mse" and method == "flow":
        # Run to convergence: the convergence candidate hands the trajectory to the
        # continuation stage (its entry kernel stiff.FINISH[model]), which must be warmed too.
        p.update(t_max=1e6)
    else:
        p.update(t_max=10.0, max_steps=50)
        if method == "gd":
            p["lr"] = 0.1
    return p


def warm(kinds: Iterable[tuple[str, ...]], snapshots: bool = False) -> dict[str, Any]:
    """Compile (or load from the cache) the kernels of every kind or unit (:func:`units`) in
    ``kinds``.

    ``snapshots``: whether the sweep records snapshots (its kernels are then called with a
    time grid). Returns ``{"seconds", "compiled"}``: the time taken and the number of
    compilations this process did for it (0: everything came from the cache).
    """
    before = compilations()
    t0 = time.perf_counter()
    for unit in sorted(set(map(tuple, kinds))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _warm_unit(unit, [1.0] if snapshots else None)
    return {"seconds": time.perf_counter() - t0, "compiled": compilations() - before}


def _warm_unit(unit: tuple[str, ...], snapshots: list[float] | None) -> None:
    """Run what compiles ``unit``: a kind's tiny point; a staged kind's explicit kernel alone
    (a point too short to reach the stage), or its stage alone (``integrator="implicit"``
    starts there, at t = 0; the stage's types are those of every call)."""
    from .simulate import simulate

    kind, part = unit[:3], unit[3] if len(unit) > 3 else None
    if part is None:
        simulate(tiny_point(kind), 1, snapshots=snapshots, threads=1)
    elif part == EXPLICIT:
        simulate({**tiny_point(kind), "t_max": 10.0, "max_steps": 50}, 1, snapshots=snapshots,
                 threads=1)
    elif part == STAGE:
        _run_stage(tiny_point(kind), snapshots)
    else:
        raise ValueError(f"unknown compile unit {unit!r}: the fourth element is "
                         f"{EXPLICIT!r} or {STAGE!r}")


def _run_stage(point: dict[str, Any], snapshots: list[float] | None) -> None:
    """The MSE flow of ``point`` (one seed) through the compiled stage alone, set up by
    ``simulate``'s own code."""
    import numpy as np

    from .activations import get_activation
    from .params import content_hash, resolve_point
    from .simulate import _simulate_ode

    p = resolve_point(point)
    times = None if snapshots is None else np.asarray(snapshots, dtype=np.float64)
    _simulate_ode(p, p.gram_matrix, get_activation(p.student, p.degree).coefficients,
                  get_activation(p.teacher, p.degree).coefficients, 0,
                  content_hash(p.initial_key()), np.arange(1), times, 1, integrator="implicit")


def compilations() -> int:
    """Compilations this process has done for mimflow's kernels: numba's cache misses,
    summed over every compiled function of ``pipeline.engine`` that is loaded."""
    from numba.core.dispatcher import Dispatcher

    total = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("pipeline.engine.") or module is None:
            continue
        for obj in vars(module).values():
            if isinstance(obj, Dispatcher) and obj.__module__ == name:
                total += sum(obj.stats.cache_misses.values())
    return total
