"""The one entry point that joins dynamics, integrator and observation: :func:`simulate`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from . import dynamics
from .activations import (
    check_assumptions,
    dual_activation,
    dual_coefficients,
    get_activation,
    information_exponent,
    warn_assumptions,
)
from .errors import SpecError
from .frames import explicit_frame
from .initial import explicit_weights, sample_initial_batch
from .integrate import STATUS_NAMES, Observation, StopRule, Tolerances, solve
from .params import Point, content_hash, resolve_point
from .seeding import STREAM_FULL, seed_rngs, validate_root_seed, validate_seeds

#: Number of snapshot times in the default (log-spaced) grid.
DEFAULT_SNAPSHOTS = 64


def default_snapshot_times(t_max: float, num: int = DEFAULT_SNAPSHOTS) -> np.ndarray:
    """Log-spaced snapshot times from ``1e-2`` to ``t_max``."""
    return np.logspace(-2.0, np.log10(t_max), num)


def validate_snapshots(snapshots: Any, t_max: float) -> np.ndarray | None:
    """``None`` / ``False``: none; ``True``: the default grid; else increasing times >= 0."""
    if snapshots is None or snapshots is False:
        return None
    if snapshots is True:
        return default_snapshot_times(t_max)
    try:
        times = np.asarray(snapshots, dtype=float).ravel()
    except (TypeError, ValueError):
        raise SpecError("snapshots", snapshots, "a list of times >= 0") from None
    if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times < 0) \
            or np.any(np.diff(times) <= 0):
        raise SpecError("snapshots", snapshots, "a non-empty, strictly increasing list of "
                        "finite times >= 0")
    return times


def simulate(
    point: Mapping[str, Any] | Point,
    seeds: Iterable[int] | int,
    *,
    root_seed: int = 0,
    snapshots: Any = None,
    threads: int | None = None,
) -> xr.Dataset:
    """Simulate one sweep point for the given seed indices.

    Parameters
    ----------
    point:
        Parameters in the vocabulary of :data:`pipeline.params.VOCABULARY` (``teacher``,
        ``d`` and ``k`` are required), or a resolved :class:`~pipeline.params.Point`.
    seeds:
        Seed indices (an int ``m`` means ``range(m)``). Seed ``i`` always gives the same
        numbers, whatever other seeds are simulated with it.
    root_seed:
        Root of every random stream.
    snapshots:
        Times at which to record ``u(t)`` (``True`` for a log-spaced default grid).
    threads:
        Threads for the compiled batch (default: all); results do not depend on it.

    Returns
    -------
    xarray.Dataset
        Dimensions ``seed, neuron, index`` (and ``time`` with snapshots). Variables: ``u0`` and
        ``u`` (initial and final overlaps ``V^T w``), ``escape_time`` (NaN if never),
        ``t_final``, ``steps``, ``status`` (0 converged, 1 t_max, 2 max_steps, 3 non-finite),
        ``loss`` (final correlation loss ``-sum_j g(u_j)``, i.e. ``C = 0``) and ``u_t``.
    """
    p = resolve_point(point)
    seed_idx = validate_seeds(seeds)
    root_seed = validate_root_seed(root_seed)
    times = validate_snapshots(snapshots, p.t_max)

    teacher = get_activation(p.teacher, p.degree, field_name="teacher")
    student = get_activation(p.student, p.degree, field_name="student")
    A = p.gram_matrix
    issues = check_assumptions(student.coefficients, teacher.coefficients, A)
    warn_assumptions(issues, stacklevel=2)
    c = dual_coefficients(student.coefficients, teacher.coefficients)

    key = content_hash(p.initial_key())
    S, n, k = seed_idx.size, p.n, p.k
    draw = sample_initial_batch(seed_rngs(root_seed, key, seed_idx), n, p.d, A, p.init)
    u0 = draw.u

    if p.backend == "reduced":
        model, args = dynamics.REDUCED, dynamics.reduced_args(A, c)
        y0 = np.concatenate([u0, draw.r[..., None]], axis=-1).reshape(S * n, k + 1)
    else:
        V = explicit_frame(A, p.d)
        model, args = dynamics.FULL, dynamics.full_args(V, c)
        y0 = np.concatenate([
            explicit_weights(draw.z[i], draw.chi2[i], p.d, rng)
            for i, rng in enumerate(seed_rngs(root_seed, key, seed_idx, STREAM_FULL))
        ])
        u0 = (y0 @ V).reshape(S, n, k)

    res = solve(
        model, y0, args, method=p.method, lr=p.lr,
        tolerances=Tolerances(p.rtol, p.atol),
        stop=StopRule(p.t_max, p.gtol, p.max_steps),
        observe=Observation(p.escape_threshold, times),
        threads=threads,
    )
    u = res.y[:, :k] if p.backend == "reduced" else res.y @ args[0]
    g = dual_activation(student.coefficients, teacher.coefficients)
    loss = -g(u).sum(axis=-1)

    shape = (S, n)
    data = {
        "u0": (("seed", "neuron", "index"), u0),
        "u": (("seed", "neuron", "index"), u.reshape(S, n, k)),
        "escape_time": (("seed", "neuron"), res.escape_time[:, 0].reshape(shape)),
        "t_final": (("seed", "neuron"), res.t_final.reshape(shape)),
        "steps": (("seed", "neuron"), res.steps.reshape(shape)),
        "status": (("seed", "neuron"), res.status.reshape(shape)),
        "loss": (("seed", "neuron"), loss.reshape(shape)),
    }
    coords = {"seed": seed_idx, "neuron": np.arange(n), "index": np.arange(k)}
    if times is not None:
        data["u_t"] = (("seed", "neuron", "time", "index"), res.u_t.reshape(S, n, times.size, k))
        coords["time"] = times
    ds = xr.Dataset(data, coords=coords)
    ds["status"].attrs["flag_meanings"] = " ".join(STATUS_NAMES[i] for i in sorted(STATUS_NAMES))
    ds["status"].attrs["flag_values"] = sorted(STATUS_NAMES)
    ds["loss"].attrs["long_name"] = "correlation loss -E[sigma(w.x) f*(x)] (C = 0)"
    ds["escape_time"].attrs["long_name"] = (
        f"first t with ||u||_2 >= {p.escape_threshold:g} (NaN: never)")
    ds.attrs.update({
        "point": json.dumps(p.canonical(), sort_keys=True),
        "point_hash": p.hash,
        "initial_key": key,
        "root_seed": root_seed,
        "p_star": information_exponent(teacher.coefficients) or 0,
        "c_p": [float(x) for x in c],
        "hermite_degree": p.degree,
        "teacher_relative_tail": teacher.relative_tail,
        "student_relative_tail": student.relative_tail,
        "assumption_warnings": [f"{i.assumption}: {i.message}" for i in issues],
    })
    return ds

