"""Online SGD as an exact low-dimensional Markov chain: the ``method = "sgd"`` simulator.

The chain and its derivation are in ``sgd_kernels.py`` (docs/design.md §1.4). This module
prepares a point's chains (initial conditions shared with the flow, one random stream per
neuron), runs them and labels the result like :func:`pipeline.engine.simulate.simulate`.

Units: an SGD point counts *samples*. ``escape_samples`` is the number of samples seen when
``||u||_2`` first reaches the threshold (``B`` times the step), snapshots are taken on a grid
of sample counts (the state after ``floor(s / B)`` steps), and ``escape_time`` stays NaN so a
store never mixes flow times with sample counts in one variable. ``t_final = lr * steps`` is
the flow-equivalent time (SGD approaches the flow as ``lr -> 0`` at ``t = lr * steps``).

With the correlation loss the neurons do not interact, and each neuron runs its own chain on
its own samples (stream ``(seed, STREAM_SGD, neuron)``): every neuron's law is that of online
SGD, but neurons of one seed are independent rather than fed the same samples. With the MSE
loss the n neurons of a seed are one coupled chain on shared samples (``sgd_coupled.py``,
stream ``(seed, STREAM_SGD, 0)``), started where the MSE flow starts; it runs to its sample
budget (status 1: no convergence test, the noisy chain never comes to rest).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import xarray as xr

from .activations import dual_activation, dual_coefficients
from .frames import explicit_frame
from .initial import (
    explicit_coupled_weights,
    explicit_weights,
    orthogonal_rank,
    sample_initial_batch,
    sample_orthogonal_factor,
)
from .mse import loss_from_overlaps
from .params import Point
from .seeding import STREAM_FULL, STREAM_ORTHOGONAL, STREAM_SGD, seed_rngs
from .sgd_coupled import coupled_chains, coupled_full_chains
from .sgd_kernels import full_chains, reduced_chains

STATUS_NAMES = {0: "converged", 1: "max_samples", 2: "max_steps", 3: "non_finite"}


def chain_states(root_seed: int, key: str, seeds: np.ndarray, n: int) -> np.ndarray:
    """xoshiro256** states (``S * n`` x 4, uint64) of the sample streams of every neuron.

    One :class:`numpy.random.SeedSequence` per (root seed, initial-condition key, seed,
    neuron), on a sub-stream of its own, so the initial conditions stay those of the flow
    points with the same key.
    """
    out = np.empty((seeds.size * n, 4), dtype=np.uint64)
    for i, seed in enumerate(seeds):
        for j in range(n):
            ss = np.random.SeedSequence(entropy=[root_seed, int(key, 16)],
                                        spawn_key=(int(seed), STREAM_SGD, j))
            state = ss.generate_state(4, np.uint64)
            if not state.any():  # xoshiro's one forbidden state
                state[0] = 1
            out[i * n + j] = state
    return out


def derivative_coefficients(a: np.ndarray) -> np.ndarray:
    """Hermite coefficients of ``sigma'`` from those of ``sigma`` (``h_p' = sqrt(p) h_{p-1}``)."""
    if a.size <= 1:
        return np.zeros(1)
    return np.ascontiguousarray(a[1:] * np.sqrt(np.arange(1, a.size)))


def _trim(coef: np.ndarray) -> np.ndarray:
    """``coef`` without trailing zeros (at least one entry), contiguous float64."""
    coef = np.asarray(coef, dtype=float)
    nonzero = np.flatnonzero(coef)
    return np.ascontiguousarray(coef[:nonzero[-1] + 1] if nonzero.size else coef[:1])


def he_coefficients(a: np.ndarray) -> np.ndarray:
    """``a_p / sqrt(p!)``: a normalized Hermite series ``sum a_p h_p`` in the basis ``He_p``."""
    a = np.asarray(a, dtype=float)
    log_fact = np.cumsum(np.log(np.maximum(np.arange(a.size), 1)))
    return np.ascontiguousarray(a * np.exp(-0.5 * log_fact))


def snapshot_steps(samples: np.ndarray | None, batch: int) -> np.ndarray:
    """The step after which each snapshot sample count is recorded (``floor(s / B)``)."""
    if samples is None:
        return np.zeros(0, dtype=np.int64)
    return np.floor(np.asarray(samples, dtype=float) / batch).astype(np.int64)


def simulate_sgd(p: Point, A: np.ndarray, a: np.ndarray, b: np.ndarray, root_seed: int,
                 key: str, seed_idx: np.ndarray, times: np.ndarray | None,
                 threads: int | None = None) -> xr.Dataset:
    """Run the SGD chains of point ``p`` for the given seeds.

    ``a``/``b`` are the student's/teacher's Hermite coefficients, ``times`` the snapshot
    grid in samples. Returns the dataset described in the module docstring.
    """
    if p.loss == "mse":
        return _simulate_coupled(p, A, a, b, root_seed, key, seed_idx, times, threads)
    S, n, k = seed_idx.size, p.n, p.k
    draw = sample_initial_batch(seed_rngs(root_seed, key, seed_idx), n, p.d, A, p.init)
    states = chain_states(root_seed, key, seed_idx, n)
    # Trailing zeros trimmed: a series is evaluated B(k + 1) times per step (h3 at the
    # default degree 16 would otherwise cost 16 recurrence steps instead of 3).
    c = _trim(dual_coefficients(a, b))
    dsig = _trim(he_coefficients(derivative_coefficients(np.asarray(a, dtype=float))))
    bsig = _trim(he_coefficients(b))
    Ainv = np.ascontiguousarray(np.linalg.inv(A))
    snaps = snapshot_steps(times, p.batch)
    max_steps = math.ceil(p.max_samples / p.batch)
    T = S * n
    esc = np.full(T, -1, dtype=np.int64)
    steps = np.zeros(T, dtype=np.int64)
    status = np.zeros(T, dtype=np.int8)
    u_t = np.full((T, snaps.size, k), np.nan)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)
    try:
        if p.backend == "reduced":
            U = np.ascontiguousarray(draw.u.reshape(T, k))
            R = np.ascontiguousarray(draw.r.reshape(T), dtype=float)
            u0 = U.reshape(S, n, k).copy()
            reduced_chains(U, R, states, np.linalg.cholesky(A), A, Ainv, c, dsig, bsig,
                           float(p.lr), p.batch, float(p.d - k - 1), p.d > k,
                           p.escape_threshold, p.gtol, max_steps, snaps, esc, steps, status,
                           u_t)
            u = U
        else:
            V = explicit_frame(A, p.d)
            W = np.concatenate([
                explicit_weights(draw.z[i], draw.chi2[i], p.d, rng)
                for i, rng in enumerate(seed_rngs(root_seed, key, seed_idx, STREAM_FULL))
            ])
            u0 = (W @ V).reshape(S, n, k)
            full_chains(W, states, V, A, Ainv, c, dsig, bsig, float(p.lr), p.batch,
                        p.escape_threshold, p.gtol, max_steps, snaps, esc, steps, status, u_t)
            u = W @ V
    finally:
        numba.set_num_threads(previous)
    u = u.reshape(S, n, k)
    loss = -dual_activation(a, b)(u).sum(axis=-1)
    escape_samples = np.where(esc >= 0, esc.astype(float) * p.batch, np.nan).reshape(S, n)
    data = {
        "u0": (("seed", "neuron", "index"), u0),
        "u": (("seed", "neuron", "index"), u),
        "escape_time": (("seed", "neuron"), np.full((S, n), np.nan)),
        "escape_samples": (("seed", "neuron"), escape_samples),
        "t_final": (("seed", "neuron"), (steps * p.lr).reshape(S, n)),
        "steps": (("seed", "neuron"), steps.reshape(S, n)),
        "status": (("seed", "neuron"), status.reshape(S, n)),
        "loss": (("seed", "neuron"), loss),
    }
    coords = {"seed": seed_idx, "neuron": np.arange(n), "index": np.arange(k)}
    if times is not None:
        data["u_t"] = (("seed", "neuron", "time", "index"), u_t.reshape(S, n, snaps.size, k))
        coords["time"] = times
    return _label(p, data, coords, times)


def _label(p: Point, data: dict, coords: dict, times: np.ndarray | None) -> xr.Dataset:
    """The dataset of an SGD point, with the attributes that say its units."""
    ds = xr.Dataset(data, coords=coords)
    ds["status"].attrs["flag_meanings"] = " ".join(STATUS_NAMES[i] for i in sorted(STATUS_NAMES))
    ds["status"].attrs["flag_values"] = sorted(STATUS_NAMES)
    ds["escape_samples"].attrs["long_name"] = (
        f"samples seen when ||u||_2 first reaches {p.escape_threshold:g} (NaN: never)")
    ds["escape_time"].attrs["long_name"] = "NaN for SGD points (see escape_samples)"
    ds["t_final"].attrs["long_name"] = "lr x steps (the flow-equivalent time)"
    ds["loss"].attrs["long_name"] = ("population correlation loss -E[sigma(w.x) f*(x)] at the "
                                     "final state (C = 0)")
    if times is not None:
        ds["time"].attrs["units"] = "samples"
    return ds


def _simulate_coupled(p: Point, A: np.ndarray, a: np.ndarray, b: np.ndarray, root_seed: int,
                      key: str, seed_idx: np.ndarray, times: np.ndarray | None,
                      threads: int | None) -> xr.Dataset:
    """MSE loss: one coupled chain of the n neurons per seed (``sgd_coupled.py``)."""
    S, n, k = seed_idx.size, p.n, p.k
    draw = sample_initial_batch(seed_rngs(root_seed, key, seed_idx), n, p.d, A, p.init)
    # The perp parts' Gram from the MSE flow's own sub-stream: the chain starts where it does.
    Z0 = sample_orthogonal_factor(seed_rngs(root_seed, key, seed_idx, STREAM_ORTHOGONAL),
                                  draw.r, p.d, k)  # (S, m, n)
    m0 = orthogonal_rank(n, p.d, k)
    states = chain_states(root_seed, key, seed_idx, 1)
    ssig = _trim(he_coefficients(a))
    dsig = _trim(he_coefficients(derivative_coefficients(np.asarray(a, dtype=float))))
    bsig = _trim(he_coefficients(b))
    snaps = snapshot_steps(times, p.batch)
    max_steps = math.ceil(p.max_samples / p.batch)
    esc = np.full((S, n), -1, dtype=np.int64)
    steps = np.zeros(S, dtype=np.int64)
    status = np.zeros(S, dtype=np.int8)
    u_t = np.full((S, n, snaps.size, k), np.nan)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)
    try:
        if p.backend == "reduced":
            U = np.ascontiguousarray(draw.u, dtype=float)
            Z = np.zeros((S, n, n))
            Z[:, :, :m0] = np.swapaxes(Z0, 1, 2)
            u0 = U.copy()
            m_out = np.zeros(S, dtype=np.int64)
            coupled_chains(U, Z, m0, states, np.linalg.cholesky(A), np.linalg.inv(A), ssig,
                           dsig, bsig, float(p.lr), p.batch, float(p.d - k), True,
                           p.escape_threshold, max_steps, snaps, esc, steps, status, u_t,
                           m_out)
            u = U
            q = U @ np.linalg.solve(A, np.swapaxes(U, 1, 2)) + Z @ np.swapaxes(Z, 1, 2)
        else:
            V = explicit_frame(A, p.d)
            W = np.stack([
                explicit_coupled_weights(draw.z[i], draw.chi2[i], Z0[i], p.d, rng)
                for i, rng in enumerate(seed_rngs(root_seed, key, seed_idx, STREAM_FULL))
            ])
            u0 = W @ V
            coupled_full_chains(W, states, V, ssig, dsig, bsig, float(p.lr), p.batch, True,
                                p.escape_threshold, max_steps, snaps, esc, steps, status, u_t)
            u = W @ V
            q = W @ np.swapaxes(W, 1, 2)
    finally:
        numba.set_num_threads(previous)
    per_seed = lambda x: np.repeat(np.asarray(x)[:, None], n, axis=1)  # noqa: E731
    loss = loss_from_overlaps(q, u, A, a, b)
    data = {
        "u0": (("seed", "neuron", "index"), u0),
        "u": (("seed", "neuron", "index"), u),
        "escape_time": (("seed", "neuron"), np.full((S, n), np.nan)),
        "escape_samples": (("seed", "neuron"),
                           np.where(esc >= 0, esc.astype(float) * p.batch, np.nan)),
        "t_final": (("seed", "neuron"), per_seed(steps * p.lr)),
        "steps": (("seed", "neuron"), per_seed(steps)),
        "status": (("seed", "neuron"), per_seed(status)),
        "loss": (("seed", "neuron"), per_seed(loss)),
        "q": (("seed", "neuron", "neuron2"), q),
    }
    coords = {"seed": seed_idx, "neuron": np.arange(n), "index": np.arange(k),
              "neuron2": np.arange(n)}
    if times is not None:
        data["u_t"] = (("seed", "neuron", "time", "index"), u_t)
        coords["time"] = times
    ds = _label(p, data, coords, times)
    ds["loss"].attrs["long_name"] = ("population MSE loss E[(f - f*)^2] of the seed's network "
                                     "at the final state (repeated over neuron)")
    ds["q"].attrs["long_name"] = "final student Gram W^T W"
    return ds
