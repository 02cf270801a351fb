"""The one entry point that joins dynamics, integrator and observation: :func:`simulate`.

:func:`compute` is the same computation without the labeled dataset (plain arrays, a
:class:`Trajectories`): a sweep's worker copies them into its work unit, and building an
``xarray.Dataset`` per point was more than half of a cheap point's cost.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import IgnoredSettingWarning, SpecError
from . import dynamics, mse, sgd
from .activations import (
    check_assumptions,
    dual_activation,
    dual_coefficients,
    get_activation,
    information_exponent,
    warn_assumptions,
)
from .continuation import verify_floor
from .frames import explicit_frame
from .initial import (
    explicit_coupled_weights,
    explicit_weights,
    orthogonal_rank,
    sample_initial_batch,
    sample_orthogonal_factor,
)
from .integrate import Observation, StopRule, Tolerances, convergence_rule, solve
from .params import IGNORED_LR, Point, content_hash, resolve_point
from .seeding import (
    STREAM_FULL,
    STREAM_ORTHOGONAL,
    seed_rngs,
    validate_root_seed,
    validate_seeds,
)
from .snapshots import late_snapshots, validate_snapshots
from .status import STATUS_NAMES


@dataclass(frozen=True)
class Trajectories:
    """The numbers :func:`simulate` labels: the resolved point, its seeds and snapshot
    times, and per variable its dimensions (after ``seed``) and values."""

    point: Point
    seeds: np.ndarray
    times: np.ndarray | None
    data: dict[str, tuple[tuple[str, ...], np.ndarray]]
    """Variable name -> (dims, values); dims start with ``seed``."""
    teacher: Any
    """The teacher activation (``activations.get_activation``)."""
    student: Any
    """The student activation."""
    issues: list
    """The paper's assumptions the pair breaks (``activations.check_assumptions``)."""


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
        Parameters in the vocabulary of :data:`pipeline.engine.params.VOCABULARY` (``teacher``,
        ``d`` and ``k`` are required), or a resolved :class:`~pipeline.engine.params.Point`.
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

        With ``loss = "mse"`` the n neurons of a seed are one coupled trajectory: ``t_final``,
        ``steps``, ``status`` and ``loss`` (the final ``E[(f - f*)^2]``, constants included)
        belong to the seed and are repeated over ``neuron``; ``escape_time`` stays per neuron
        (a surplus neuron may never escape: NaN). Extra variables: ``q`` (seed, neuron,
        neuron2), the final student Gram ``W^T W``, and with snapshots ``loss_t`` (seed, time).
        ``u0`` equals the correlation point's ``u0`` for the same seed (common random numbers).

        With ``method = "sgd"`` (online SGD, ``engine/sgd.py``) the budget and the snapshot
        grid count samples: ``escape_samples`` replaces ``escape_time`` (NaN), ``t_final`` is
        ``lr x steps`` and status 1 is the sample budget ``max_samples``.
    """
    run = compute(point, seeds, root_seed=root_seed, snapshots=snapshots, threads=threads,
                  _stacklevel=3)
    p, teacher, student, issues = run.point, run.teacher, run.student, run.issues
    ds = run.dataset if isinstance(run, _Labeled) else _dataset(p, run.data, run.seeds,
                                                                  run.times)
    ds.attrs.update({
        "point": json.dumps(p.canonical(), sort_keys=True),
        "point_hash": p.hash,
        "initial_key": content_hash(p.initial_key()),
        "root_seed": validate_root_seed(root_seed),
        "p_star": information_exponent(teacher.coefficients) or 0,
        "c_p": [float(x) for x in dual_coefficients(student.coefficients,
                                                    teacher.coefficients)],
        "hermite_degree": p.degree,
        "teacher_relative_tail": teacher.relative_tail,
        "student_relative_tail": student.relative_tail,
        "assumption_warnings": [f"{i.assumption}: {i.message}" for i in issues],
        "convergence_rule": convergence_rule(p.loss, p.method),
    })
    return ds


@dataclass(frozen=True)
class _Labeled(Trajectories):
    """Trajectories that came labeled already (an SGD point: ``engine/sgd.py`` builds its
    dataset, with the attributes that say its units)."""

    dataset: xr.Dataset | None = None


def compute(point: Mapping[str, Any] | Point, seeds: Iterable[int] | int, *,
            root_seed: int = 0, snapshots: Any = None, threads: int | None = None,
            _stacklevel: int = 2) -> Trajectories:
    """:func:`simulate`'s numbers as plain arrays (same arguments, same checks, same
    warnings, bit-identical values), without the labeled dataset."""
    if not isinstance(point, Mapping | Point):
        raise SpecError("point", point, "a mapping of parameters such as {'teacher': 'h3', "
                        "'d': 1000, 'k': 2}, or a pipeline.Point")
    p = resolve_point(point)
    seed_idx = validate_seeds(seeds)
    root_seed = validate_root_seed(root_seed)
    # An SGD point's snapshot grid and budget are sample counts (engine/sgd.py).
    horizon = p.max_samples if p.method == "sgd" else p.t_max
    times = validate_snapshots(snapshots, horizon)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise SpecError("threads", threads, "None (all cores) or an integer >= 1")
    if isinstance(point, Mapping) and point.get("lr") is not None and p.method == "flow":
        warnings.warn(IGNORED_LR, IgnoredSettingWarning, stacklevel=_stacklevel)
    if (late := late_snapshots(times, horizon)) is not None:
        warnings.warn(late, IgnoredSettingWarning, stacklevel=_stacklevel)

    teacher = get_activation(p.teacher, p.degree, field_name="teacher")
    student = get_activation(p.student, p.degree, field_name="student")
    A = p.gram_matrix
    issues = check_assumptions(student.coefficients, teacher.coefficients, A)
    warn_assumptions(issues, stacklevel=_stacklevel)

    key = content_hash(p.initial_key())
    if p.method == "sgd":  # online SGD: a Markov chain, not an ODE
        ds = sgd.simulate_sgd(p, A, student.coefficients, teacher.coefficients, root_seed,
                              key, seed_idx, times, threads)
        data = {name: (var.dims, var.values) for name, var in ds.data_vars.items()}
        return _Labeled(p, seed_idx, times, data, teacher, student, issues, ds)
    data = _simulate_ode(p, A, student.coefficients, teacher.coefficients, root_seed, key,
                         seed_idx, times, threads)
    return Trajectories(p, seed_idx, times, data, teacher, student, issues)


def _simulate_ode(p: Point, A: np.ndarray, a: np.ndarray, b: np.ndarray, root_seed: int,
                  key: str, seed_idx: np.ndarray, times: np.ndarray | None,
                  threads: int | None, integrator: str = "auto",
                  ) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Gradient flow or GD of point ``p``: initial states, the integrator (``solve``'s
    ``integrator``; the warm-up compiles the MSE flow's stage alone with ``"implicit"``), the
    arrays."""
    model, args, y0, u0 = _initial_state(p, A, a, b, root_seed, key, seed_idx)
    res = solve(model, y0, args, method=p.method, lr=p.lr, **solve_options(p, times),
                threads=threads, integrator=integrator)
    out = _outputs(p, res, args, A, a, b, seed_idx.size, times)
    return _data(p, u0, out, times)


def solve_options(p: Point, times: np.ndarray | None = None) -> dict[str, Any]:
    """``integrate.solve``'s ``tolerances``, ``stop`` and ``observe`` for point ``p`` (the
    tolerances scaled to its d, the continuation check's floor at its d), with snapshots at
    ``times``."""
    return {"tolerances": Tolerances.at_dimension(p.rtol, p.atol, p.d),
            "stop": StopRule(p.t_max, p.gtol, p.max_steps, verify_floor(p.d)),
            "observe": Observation(p.escape_threshold, times)}


def _initial_state(p: Point, A: np.ndarray, a: np.ndarray, b: np.ndarray, root_seed: int,
                   key: str, seed_idx: np.ndarray) -> tuple[int, tuple, np.ndarray, np.ndarray]:
    """The model, its kernel arguments, the initial states and the initial overlaps ``u0``."""
    S, n, k = seed_idx.size, p.n, p.k
    draw = sample_initial_batch(seed_rngs(root_seed, key, seed_idx), n, p.d, A, p.init)
    u0 = draw.u
    if p.loss == "mse":
        # The perp parts' Gram, from its own sub-stream: u0 stays the correlation point's.
        Z0 = sample_orthogonal_factor(seed_rngs(root_seed, key, seed_idx, STREAM_ORTHOGONAL),
                                      draw.r, p.d, k)
        if p.backend == "reduced":
            m = orthogonal_rank(n, p.d, k)
            return dynamics.MSE_REDUCED, mse.reduced_args(A, a, b, n, m), \
                mse.pack_reduced(u0, Z0), u0
        V = explicit_frame(A, p.d)
        y0 = np.stack([
            explicit_coupled_weights(draw.z[i], draw.chi2[i], Z0[i], p.d, rng).ravel()
            for i, rng in enumerate(seed_rngs(root_seed, key, seed_idx, STREAM_FULL))
        ])
        u0 = np.einsum("sid,dj->sij", y0.reshape(S, n, p.d), V)
        return dynamics.MSE_FULL, mse.full_args(V, a, b, n), y0, u0
    c = dual_coefficients(a, b)
    if p.backend == "reduced":
        y0 = np.concatenate([u0, draw.r[..., None]], axis=-1).reshape(S * n, k + 1)
        return dynamics.REDUCED, dynamics.reduced_args(A, c), y0, u0
    V = explicit_frame(A, p.d)
    y0 = np.concatenate([
        explicit_weights(draw.z[i], draw.chi2[i], p.d, rng)
        for i, rng in enumerate(seed_rngs(root_seed, key, seed_idx, STREAM_FULL))
    ])
    return dynamics.FULL, dynamics.full_args(V, c), y0, (y0 @ V).reshape(S, n, k)


def _outputs(p: Point, res, args: tuple, A: np.ndarray, a: np.ndarray, b: np.ndarray, S: int,
             times: np.ndarray | None) -> dict[str, Any]:
    """Per-(seed, neuron) arrays from the batch result (and ``q``, ``loss_t`` for MSE)."""
    n, k = p.n, p.k
    shape = (S, n)
    if p.loss == "mse":
        if p.backend == "reduced":
            q, u = mse.gram_from_reduced(res.y, A, n)
        else:
            W = res.y.reshape(S, n, p.d)
            q, u = W @ np.swapaxes(W, 1, 2), W @ args[0]
        loss = mse.loss_from_overlaps(q, u, A, a, b)
        # Per-seed quantities of the coupled trajectory, repeated over its neurons.
        per_seed = lambda x: np.repeat(np.asarray(x)[:, None], n, axis=1)  # noqa: E731
        t_final, steps, status, loss = (per_seed(x) for x in
                                        (res.t_final, res.steps, res.status, loss))
        u_t = (None if times is None
               else np.swapaxes(res.u_t.reshape(S, times.size, n, k), 1, 2))
        return {"u": u, "loss": loss, "t_final": t_final, "steps": steps, "status": status,
                "escape_time": res.escape_time, "u_t": u_t, "q": q, "loss_t": res.loss_t}
    u = (res.y[:, :k] if p.backend == "reduced" else res.y @ args[0]).reshape(S, n, k)
    loss = -dual_activation(a, b)(u).sum(axis=-1).reshape(shape)
    t_final, steps, status = (x.reshape(shape) for x in (res.t_final, res.steps, res.status))
    u_t = None if times is None else res.u_t.reshape(S, n, times.size, k)
    return {"u": u, "loss": loss, "t_final": t_final, "steps": steps, "status": status,
            "escape_time": res.escape_time[:, 0].reshape(shape), "u_t": u_t}


def _data(p: Point, u0: np.ndarray, out: dict[str, Any], times: np.ndarray | None
          ) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Per variable of one point: its dimensions and values."""
    data = {
        "u0": (("seed", "neuron", "index"), u0),
        "u": (("seed", "neuron", "index"), out["u"]),
        "escape_time": (("seed", "neuron"), out["escape_time"]),
        "t_final": (("seed", "neuron"), out["t_final"]),
        "steps": (("seed", "neuron"), out["steps"]),
        "status": (("seed", "neuron"), out["status"]),
        "loss": (("seed", "neuron"), out["loss"]),
    }
    if p.loss == "mse":
        data["q"] = (("seed", "neuron", "neuron2"), out["q"])
    if times is not None:
        data["u_t"] = (("seed", "neuron", "time", "index"), out["u_t"])
        if p.loss == "mse":
            data["loss_t"] = (("seed", "time"), out["loss_t"])
    return data


def _dataset(p: Point, data: dict[str, tuple[tuple[str, ...], np.ndarray]],
             seed_idx: np.ndarray, times: np.ndarray | None) -> xr.Dataset:
    """The labeled dataset of one point, with the variables' attributes."""
    mse_loss = p.loss == "mse"
    coords = {"seed": seed_idx, "neuron": np.arange(p.n), "index": np.arange(p.k)}
    if mse_loss:
        coords["neuron2"] = np.arange(p.n)
    if times is not None:
        coords["time"] = times
    ds = xr.Dataset(data, coords=coords)
    ds["status"].attrs["flag_meanings"] = " ".join(STATUS_NAMES[i] for i in sorted(STATUS_NAMES))
    ds["status"].attrs["flag_values"] = sorted(STATUS_NAMES)
    if mse_loss:
        ds["loss"].attrs["long_name"] = (
            "MSE loss E[(f - f*)^2] of the seed's coupled network, constants included "
            "(>= 0 up to round-off; repeated over neuron)")
        ds["q"].attrs["long_name"] = "final student Gram W^T W"
        for name in ("t_final", "steps", "status"):
            ds[name].attrs["note"] = "per seed (one coupled trajectory), repeated over neuron"
        if times is not None:
            ds["loss_t"].attrs["long_name"] = "MSE loss E[(f - f*)^2] at the snapshot times"
    else:
        ds["loss"].attrs["long_name"] = "correlation loss -E[sigma(w.x) f*(x)] (C = 0)"
    ds["escape_time"].attrs["long_name"] = (
        f"first t with ||u||_2 >= {p.escape_threshold:g} (NaN: never)")
    return ds
