"""Adaptive sweeps: the rounds of a ``[refine]`` spec, on Dask, into one store.

Why here: the decisions read statistics that the analysis estimators define (the fraction at
the average point of :mod:`analysis.bifurcation`, the matches of :mod:`analysis.coupon`, the
escape times of :mod:`analysis.escape`), and ``analysis`` may call the pipeline while the
pipeline may not import ``analysis``. The rule syntax and the decisions made from numbers
live one layer down, in :mod:`sweeps.refine`; ``mimflow run`` reaches this module through
the analysis command plugin (:func:`analysis.cli.register` takes the ``run`` command over
for specs with ``[refine]``).

A round is an ordinary run (:func:`pipeline.execute.run_sweep`) of the spec's grid plus the
points added so far, restricted to the planned seed blocks; then the statistics of every
point are read back from the store and :func:`next_plan` decides the next round. The plan
(``_mimflow/refine.json``) is written before the store is extended to it, and every decision
is a function of stored results only, so a driver killed at any moment and run again reaches
the same points and the same store.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import binom, norm

from pipeline import ledger
from pipeline import store as zstore
from pipeline.cluster import client_for
from pipeline.errors import SpecError
from pipeline.execute import DEFAULT_RETRIES, RunReport, new_run_id, run_sweep
from pipeline.ledger import StoreRef
from pipeline.lock import RunLock
from sweeps.refine import (
    STATISTICS,
    Added,
    Estimate,
    Plan,
    RefinedSpec,
    bisect_step,
    densify_step,
    summary_text,
)
from sweeps.spec import Spec

from ._points import finished, group_columns, iter_points, point_params
from .bifurcation import at_average

#: Level of the confidence intervals the decisions use.
CONFIDENCE = 0.95
#: A converged neuron is at the average point when its overlaps agree within this
#: (:class:`analysis.bifurcation.BifurcationPoint`'s default).
AVERAGE_TOL = 1e-3
#: An index vector is learned when some converged neuron's overlap with it reaches this
#: (:class:`analysis.coupon.CouponCollector`'s default).
MATCH_THRESHOLD = 0.9


def wilson(hits: int, total: int) -> Estimate:
    """A fraction with its Wilson score interval (as scipy's ``binomtest(...).proportion_ci(
    method="wilson")``, in closed form: rounds call it for every point); no trajectory: an
    undecided NaN."""
    if total == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    z = float(norm.ppf(0.5 + CONFIDENCE / 2))
    p, z2n = hits / total, z * z / total
    center = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / total + z2n / (4 * total)) / (1 + z2n)
    return Estimate(p, max(center - half, 0.0), min(center + half, 1.0), total)


def fraction_at_average(params: dict[str, Any], u: np.ndarray, status: np.ndarray,
                        escape_time: np.ndarray) -> Estimate:
    """Fraction of neurons at the average point (as :class:`BifurcationPoint` counts them);
    arrays ``(seed, neuron[, index])`` of one point."""
    hits = at_average(u, status, AVERAGE_TOL, finished(params, status))
    return _with_seeds(wilson(int(hits.sum()), hits.size), status.shape[0])


def fraction_learned(params: dict[str, Any], u: np.ndarray, status: np.ndarray,
                     escape_time: np.ndarray) -> Estimate:
    """Fraction of trajectories in which every index vector is matched by a finished neuron
    (the complement of :class:`analysis.coupon.CouponCollector`'s failure)."""
    done = finished(params, status)
    learned = ((u >= MATCH_THRESHOLD) & done[..., None]).any(axis=1).all(axis=1)
    return wilson(int(learned.sum()), learned.size)


def median_escape_time(params: dict[str, Any], u: np.ndarray, status: np.ndarray,
                       escape_time: np.ndarray) -> Estimate:
    """Median escape time over neurons, a neuron that never escaped counting as +inf, with
    the distribution-free interval between two order statistics (binomial(n, 1/2))."""
    t = np.sort(np.where(np.isnan(escape_time), np.inf, escape_time).ravel())
    n = t.size
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    alpha = 1 - CONFIDENCE
    j = int(binom.ppf(alpha / 2, n, 0.5))  # t[j - 1] <= median <= t[n - j] w.p. >= 1 - alpha
    lo = t[j - 1] if j >= 1 else -math.inf
    hi = t[n - j] if j >= 1 else math.inf
    return _with_seeds(Estimate(float(np.median(t)), float(lo), float(hi), n),
                       escape_time.shape[0])


def _with_seeds(e: Estimate, seeds: int) -> Estimate:
    return Estimate(e.value, e.lo, e.hi, seeds)


#: The statistics rules may name (their names and meanings: ``sweeps.refine.STATISTICS``):
#: functions of a point's parameters and its ``u``, ``status`` and ``escape_time`` arrays.
ESTIMATORS: dict[str, Callable[..., Estimate]] = {
    "fraction_at_average": fraction_at_average,
    "fraction_learned": fraction_learned,
    "median_escape_time": median_escape_time,
}
assert set(ESTIMATORS) == set(STATISTICS)
VARIABLES = ("u", "status", "escape_time")


def estimates(rs: RefinedSpec, ds: xr.Dataset,
              known: dict[tuple[int, int], Estimate] | None = None) -> list[Estimate]:
    """The rule's statistic at every point of ``rs``, from its planned seeds in ``ds``.

    ``known`` (point index, planned seeds) -> estimate, filled in place: a point whose planned
    seeds did not change since an earlier round has the same stored results, so its estimate
    is taken from there and only the other points are read (a round then reads what the
    previous round added, not the whole store: ~2 s a round at 1,000 points otherwise).
    """
    estimator = ESTIMATORS[rs.refine.rule.statistic]
    known = {} if known is None else known
    records = point_params(ds).to_dict("records")
    todo = [i for i in range(len(records)) if (i, rs.plan.seeds[i]) not in known]
    if todo:
        # Read once, then slice numpy arrays point by point (``ds`` opened with chunks=None:
        # through dask, a task per chunk, the reads would cost more than a round's compute).
        seeds = max(rs.plan.seeds[i] for i in todo)
        data = ds[list(VARIABLES)].isel(point=todo, seed=slice(0, seeds)).load()
        arrays = {name: np.asarray(data[name].values) for name in VARIABLES}
        for row, i in enumerate(todo):
            s, n, k = rs.plan.seeds[i], int(records[i]["n"]), int(records[i]["k"])
            known[i, s] = estimator(records[i], arrays["u"][row, :s, :n, :k],
                                    arrays["status"][row, :s, :n],
                                    arrays["escape_time"][row, :s, :n])
    return [known[i, rs.plan.seeds[i]] for i in range(len(records))]


def next_plan(rs: RefinedSpec, stats: list[Estimate]) -> Plan:
    """The plan after the round ``rs.plan`` (whose blocks are all stored) with the
    statistics ``stats``: new values and more seeds per group, or ``done``."""
    refine, plan = rs.refine, rs.plan
    rule = refine.rule
    n_base = len(rs.base.points)
    added = list(plan.added)
    seeds = list(plan.seeds)
    outcome = []
    stop = plan.round >= refine.max_rounds
    for key, members in rs.groups().items():
        xs = [rs.points.label(i)[rule.param] for i in members]
        est = [stats[i] for i in members]
        if rule.kind == "bisect":
            d = bisect_step(rule, xs, est, members, refine.max_seeds)
        else:
            d = densify_step(rule, xs, est, sum(i >= n_base for i in members))
        if stop and (d.values or d.more_seeds):
            d.values, d.more_seeds = [], []
            d.outcome["status"] = "max_rounds"
        base = min(members)  # a point of the grid (grid points come first)
        for value in d.values:
            added.append(Added(value, base, plan.round + 1))
            seeds.append(refine.seeds)
        for i in d.more_seeds:
            seeds[i] = min(2 * seeds[i], refine.max_seeds)
        outcome.append({**json.loads(key), "param": rule.param, **d.outcome,
                        "points": len(members), "trajectories": sum(seeds[i] for i in members),
                        "estimates": {str(x): [e.value, e.lo, e.hi, e.seeds]
                                      for x, e in zip(xs, est, strict=True)}})
    changed = len(added) > len(plan.added) or seeds != list(plan.seeds)
    return Plan(plan.round + 1 if changed else plan.round, tuple(added), tuple(seeds),
                done=not changed, outcome=tuple(outcome))


def load_plan(ref: StoreRef, spec: Spec) -> Plan | None:
    """The plan stored at ``ref`` (``None`` when there is none); refuses the plan of another
    spec, naming the store."""
    record = ledger.read_json(ref, ledger.REFINE)
    if record is None:
        return None
    if record.get("spec_hash") != spec.hash:
        raise SpecError("store", ref.url, f"a store of this spec ({spec.name!r}, spec hash "
                        f"{spec.hash})", hint=f"its refinement plan belongs to spec hash "
                        f"{record.get('spec_hash')!r}; pass --overwrite to replace it or "
                        "--store to write elsewhere")
    return Plan.from_json(record)


def save_plan(ref: StoreRef, spec: Spec, plan: Plan) -> None:
    """Record ``plan`` (atomically on local disks) as the store's refinement plan."""
    ledger.put_json(ref, ledger.REFINE, {"spec_hash": spec.hash, **plan.to_json()})


@dataclass
class RefineReport:
    """What a refinement run did: the final plan and the last round's run report."""

    plan: Plan
    last: RunReport
    rounds: int = 0
    """Rounds run by this call."""

    @property
    def ok(self) -> bool:
        """True when the refinement finished and every planned block is stored."""
        return self.plan.done and self.last.ok

    @property
    def interrupted(self) -> bool:
        """True when the last round was interrupted."""
        return self.last.interrupted


def _extend(ref: StoreRef, rs: RefinedSpec) -> None:
    """Grow the store to ``rs`` under the store's run lock (as a run writes)."""
    with RunLock(ref, new_run_id()):
        zstore.extend_points(ref, rs, rs.provenance())


def run_refined(spec: Spec, store: str, *, client: Any = None, scheduler: str | None = None,
                workers: int | None = None, cluster: Any = None, security: Any = None,
                retries: int = DEFAULT_RETRIES, overwrite: bool = False,
                storage_options: dict | None = None, out: TextIO | None = None
                ) -> RefineReport:
    """Run (or resume) the refined sweep ``spec`` into ``store``, round after round, until
    every group is decided (see the module docstring). Cluster options as
    :func:`pipeline.execute.run_sweep`; ``overwrite`` replaces the store in the first round.
    """
    if spec.refine is None:
        raise SpecError("refine", spec.source, "a spec with a [refine] section")
    out = out if out is not None else sys.stderr
    ref = StoreRef.parse(store, storage_options)
    rounds = 0
    known: dict[tuple[int, int], Estimate] = {}  # estimates of points already read
    with client_for(client, cluster, scheduler, security, workers, out) as cl:
        plan = (None if overwrite else load_plan(ref, spec)) or Plan.first(spec)
        fresh = overwrite
        while True:
            rs = RefinedSpec(spec, plan)
            if not fresh and plan.added and zstore.read_attrs(ref) is not None:
                _extend(ref, rs)  # to a plan saved by a driver killed before it extended
            out.write(f"mimflow: refinement round {plan.round}: {len(rs.points)} points, "
                      f"{rs.n_trajectories} trajectories planned\n")
            report = run_sweep(rs, store, client=cl, retries=retries, overwrite=fresh,
                               storage_options=storage_options, out=out)
            fresh = False
            rounds += 1
            if not report.ok:
                return RefineReport(plan, report, rounds)
            _extend(ref, rs)  # records the provenance in a store the round just created
            if plan.done:
                break
            ds = zstore.open_results(store, storage_options=storage_options, chunks=None)
            plan = next_plan(rs, estimates(rs, ds, known))
            save_plan(ref, spec, plan)
            if plan.done:
                break
    out.write(summary_text(plan))
    return RefineReport(plan, report, rounds)



def refinement_table(ds: xr.Dataset) -> pd.DataFrame | None:
    """Per group of an adaptive sweep's store, the outcome the rule gives on the stored
    results (status, bracket or values added, points, trajectories), derived again from the
    data and the spec text in the store's attributes; ``None`` for any other store.

    This is what ``analyze`` reports beside ``beta_f``: a group whose bracket is wider than
    ``tol`` says why (``undecided`` at max seeds, ``non_monotone``, ``no_crossing``).
    """
    from sweeps.spec import parse_spec

    text = ds.attrs.get("spec_text")
    if not text or "refine_round" not in ds.coords:
        return None
    spec = parse_spec(text, source="the store's spec")
    if spec.refine is None:
        return None
    rule = spec.refine.rule
    estimator = ESTIMATORS[rule.statistic]
    table = point_params(ds)
    stats = [estimator(params, *(np.asarray(sub[name].values) for name in VARIABLES))
             for params, sub in iter_points(ds, table)]
    others = [name for name in spec.swept if name != rule.param]
    added = np.asarray(ds["refine_round"].values) > 0
    rows = []
    keys = [c for c in group_columns(table, rule.param) if c in table.columns]
    for key, grp in table.groupby(keys, dropna=False, sort=True):
        grp = grp.sort_values(rule.param)
        members = list(grp.index)
        xs = grp[rule.param].tolist()
        est = [stats[i] for i in members]
        if rule.kind == "bisect":
            d = bisect_step(rule, xs, est, members, spec.refine.max_seeds)
        else:
            d = densify_step(rule, xs, est, int(added[members].sum()))
        labels = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        rows.append({**{k: labels[k] for k in others if k in labels}, "param": rule.param,
                     "status": d.outcome["status"], "lo": d.outcome.get("lo"),
                     "hi": d.outcome.get("hi"), "points": len(members),
                     "added": int(added[members].sum()),
                     "trajectories": sum(e.seeds for e in est)})
    return pd.DataFrame(rows)
