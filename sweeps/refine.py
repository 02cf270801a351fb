"""Adaptive sweeps: the ``[refine]`` section of a spec and the decisions of each round.

A spec with a ``[refine]`` section is run in rounds (docs/design.md §3.4): its grid is the
first round; after each round the decisions below, which read only the statistics of the
points already in the store, name the points to add (or the points to give more seeds) and
the next round runs them into the same store. Syntax (one rule, on one ``[grid]`` parameter)::

    seeds = 4                  # seeds per point in the first round
    block_seeds = 4
    [refine]
    max_seeds = 32             # a point whose statistic is undecided gets more seeds, up to this
    max_rounds = 40            # optional (default 50)
    beta = {bisect = "fraction_at_average >= 0.5", tol = 1e-3}
    # or: d = {densify = "median_escape_time", points = 8, scale = "log"}

``bisect`` locates, for every combination of the other swept parameters, where the condition
starts to hold along the parameter, to within ``tol``. ``densify`` adds ``points`` new values
per combination where the statistic changes most between neighbours (the default loss of
python-adaptive's ``Learner1D``: the length of the segment in rescaled coordinates).

This module parses and validates the section and makes the decisions from numbers; the
statistics themselves (with their confidence intervals) are computed by
:mod:`analysis.refine`, which also drives the rounds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pipeline.engine.params import INTEGER_PARAMS, json_plain, resolve_point
from pipeline.errors import SpecError

if TYPE_CHECKING:
    from .points import Points
    from .spec import Block, Spec

#: The statistics a rule may name (computed by ``analysis.refine.STATISTICS``), and whether
#: each is a fraction (its threshold then lies in (0, 1)).
STATISTICS = {
    "fraction_at_average": "fraction of neurons that converge to the average point "
                           "(Wilson interval)",
    "fraction_learned": "fraction of trajectories that learn every index vector "
                        "(Wilson interval)",
    "median_escape_time": "median escape time (distribution-free order-statistic interval)",
}
FRACTIONS = ("fraction_at_average", "fraction_learned")
RULES = ("bisect", "densify")
SCALES = ("linear", "log")
DEFAULT_MAX_ROUNDS = 50
MAX_ROUNDS = 1000
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Rule:
    """One refinement rule on one swept parameter (see the module docstring)."""

    param: str
    kind: str
    """``"bisect"`` or ``"densify"``."""
    statistic: str
    op: str = ">="
    threshold: float = 0.5
    tol: float = 0.0
    points: int = 0
    scale: str = "linear"

    def describe(self) -> str:
        """The rule as one line of text: ``beta: bisect fraction_at_average >= 0.5, tol 0.001``
        (this is what the store records for each point the rule created)."""
        if self.kind == "bisect":
            return (f"{self.param}: bisect {self.statistic} {self.op} {self.threshold:g}, "
                    f"tol {self.tol:g}")
        return f"{self.param}: densify {self.statistic}, {self.points} points, {self.scale}"

    def holds(self, value: float) -> bool:
        """Whether the condition of a bisect rule holds for ``value``."""
        return {">=": value >= self.threshold, ">": value > self.threshold,
                "<=": value <= self.threshold, "<": value < self.threshold}[self.op]


@dataclass(frozen=True)
class Refine:
    """A validated ``[refine]`` section."""

    rule: Rule
    seeds: int
    """Seeds per point in the first round (the spec's ``seeds``)."""
    max_seeds: int
    """Most seeds a point gets (the store's seed axis)."""
    max_rounds: int = DEFAULT_MAX_ROUNDS

    def identity(self) -> dict[str, Any]:
        """What of the section decides the stored numbers (part of the spec hash)."""
        return {"rule": dataclasses.asdict(self.rule), "seeds": self.seeds,
                "max_seeds": self.max_seeds, "max_rounds": self.max_rounds}


def parse_refine(raw: Any, *, grid: dict[str, Any], swept: tuple[str, ...], seeds: int,
                 block_seeds: int) -> Refine:
    """Validate the ``[refine]`` table ``raw`` of a spec whose ``[grid]`` is ``grid``.

    Raises :class:`SpecError` naming the field (``refine.beta.tol``), the value and what is
    allowed.
    """
    if not isinstance(raw, dict):
        raise SpecError("refine", raw, "a table [refine]")
    settings = {k: raw[k] for k in ("max_seeds", "max_rounds") if k in raw}
    rules = {k: v for k, v in raw.items() if k not in settings}
    if len(rules) != 1:
        raise SpecError("refine", sorted(rules), "exactly one rule, `PARAM = {bisect = ...}` "
                        "or `PARAM = {densify = ...}`, beside max_seeds and max_rounds")
    (param, table), = rules.items()
    field = f"refine.{param}"
    if param not in grid:
        where = "a [[zip]] group" if param in swept else "not swept"
        raise SpecError(field, table, "a rule on a parameter of [grid] (refinement adds "
                        "values along one grid axis)", hint=f"{param!r} is {where}")
    rule = _rule(field, param, table)
    max_seeds = _int("refine.max_seeds", settings.get("max_seeds", seeds), seeds, 2**31)
    for name, value in (("seeds", seeds), ("refine.max_seeds", max_seeds)):
        if value % block_seeds:
            raise SpecError(name, value, f"a multiple of block_seeds ({block_seeds}) in a "
                            "refined sweep (seeds are added a block at a time)")
    max_rounds = _int("refine.max_rounds", settings.get("max_rounds", DEFAULT_MAX_ROUNDS), 1,
                      MAX_ROUNDS)
    return Refine(rule, seeds, max_seeds, max_rounds)


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(field, value, f"an integer in [{lo}, {hi}]")
    return value


def _rule(field: str, param: str, table: Any) -> Rule:
    if not isinstance(table, dict) or sum(k in table for k in RULES) != 1:
        raise SpecError(field, table, "an inline table with one of bisect or densify: "
                        '{bisect = "fraction_at_average >= 0.5", tol = 1e-3} or '
                        '{densify = "median_escape_time", points = 8}')
    kind = next(k for k in RULES if k in table)
    allowed = {"bisect": ("bisect", "tol"), "densify": ("densify", "points", "scale")}[kind]
    for key in table:
        if key not in allowed:
            raise SpecError(f"{field}.{key}", table[key],
                            f"a key among {', '.join(allowed)} (a {kind} rule)")
    if kind == "densify":
        statistic = table["densify"]
        if statistic not in STATISTICS:
            raise SpecError(f"{field}.densify", statistic,
                            "a statistic among " + ", ".join(STATISTICS))
        points = _int(f"{field}.points", table.get("points"), 1, 10_000)
        scale = table.get("scale", "linear")
        if scale not in SCALES:
            raise SpecError(f"{field}.scale", scale, "one of " + ", ".join(map(repr, SCALES)))
        return Rule(param, kind, statistic, points=points, scale=scale)
    condition = table["bisect"]
    match = _CONDITION.match(condition) if isinstance(condition, str) else None
    if match is None:
        raise SpecError(f"{field}.bisect", condition, "a condition 'STATISTIC OP NUMBER' with "
                        "OP one of >=, >, <=, < (e.g. \"fraction_at_average >= 0.5\")")
    statistic, op, number = match.groups()
    if statistic not in STATISTICS:
        raise SpecError(f"{field}.bisect", condition,
                        "a condition on a statistic among " + ", ".join(STATISTICS))
    try:
        threshold = float(number)
    except ValueError:
        raise SpecError(f"{field}.bisect", condition, "a condition whose threshold is a "
                        "number") from None
    if statistic in FRACTIONS and not 0 < threshold < 1:
        raise SpecError(f"{field}.bisect", condition, f"a threshold in (0, 1) ({statistic} "
                        "is a fraction)")
    tol = table.get("tol")
    smallest = 1 if param in INTEGER_PARAMS else 0
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not math.isfinite(tol) \
            or tol <= 0 or tol < smallest:
        raise SpecError(f"{field}.tol", tol, "a positive number" + (
            " of at least 1 (an integer parameter)" if smallest else ""))
    return Rule(param, kind, statistic, op, threshold, tol=float(tol))


# --- the state of a refinement ---------------------------------------------------------------


@dataclass(frozen=True)
class Added:
    """A point a round added: its value of the rule's parameter, the point of the first round
    whose other parameters it shares, and the round that added it."""

    value: Any
    base: int
    round: int


@dataclass(frozen=True)
class Plan:
    """Everything the rounds decided so far; stored as ``_mimflow/refine.json``.

    ``seeds[i]`` is the number of seeds point ``i`` runs (the first ``seeds[i]`` of the
    store's seed axis); the other seed blocks stay missing."""

    round: int
    added: tuple[Added, ...]
    seeds: tuple[int, ...]
    done: bool = False
    outcome: tuple[dict[str, Any], ...] = ()
    """Per group, after the last round: bracket or refined interval, status, rounds."""

    @classmethod
    def first(cls, spec: Spec) -> Plan:
        """The plan of round 0: the grid, ``refine.seeds`` seeds per point."""
        assert spec.refine is not None
        return cls(0, (), (spec.refine.seeds,) * len(spec.points))

    def block_ids(self, block_seeds: int) -> list[str]:
        """The ids of the planned blocks (the other seed blocks of the store stay missing)."""
        from .spec import block_id

        return [block_id(p, start) for p, planned in enumerate(self.seeds)
                for start in range(0, planned, block_seeds)]

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON object (see :meth:`from_json`)."""
        return {"round": self.round, "added": [json_plain(dataclasses.asdict(a))
                                               for a in self.added],
                "seeds": list(self.seeds), "done": self.done, "outcome": list(self.outcome)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Plan:
        """The plan recorded by :meth:`to_json`."""
        return cls(int(record["round"]), tuple(Added(**a) for a in record["added"]),
                   tuple(int(s) for s in record["seeds"]), bool(record.get("done", False)),
                   tuple(record.get("outcome", ())))


@dataclass(frozen=True, eq=False)
class RefinedSpec:
    """A refined sweep after some rounds: the spec's grid plus the points the plan added,
    with only the planned seed blocks to run. It has the attributes of a
    :class:`~sweeps.spec.Spec` that a run uses (it forwards the others), so that
    ``pipeline.execute.run_sweep`` runs it like any spec."""

    base: Spec
    plan: Plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    @cached_property
    def points(self) -> Points:
        """The grid's points, then the added ones in the order they were added."""
        added = []
        for a in self.plan.added:
            params = {**self.base.points.params(a.base), self.base.refine.rule.param: a.value}
            added.append((params, resolve_point(params)))
        return self.base.points.extended(added)

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        """The planned blocks: the first ``plan.seeds[i]`` seeds of each point ``i``."""
        from .spec import Block

        out = []
        for p, planned in enumerate(self.plan.seeds):
            for start in range(0, planned, self.base.block_seeds):
                out.append(Block(len(out), p, start,
                                 min(start + self.base.block_seeds, self.base.seeds)))
        return tuple(out)

    @property
    def n_blocks(self) -> int:
        """Number of planned blocks."""
        return len(self.blocks)

    @property
    def n_trajectories(self) -> int:
        """Number of planned (point, seed) trajectories."""
        return sum(self.plan.seeds)

    @property
    def n_neuron_trajectories(self) -> int:
        """Number of planned single-neuron paths."""
        return sum(s * int(n) for s, n in zip(self.plan.seeds, self.points.n, strict=True))

    @cached_property
    def hash(self) -> str:
        """The spec's hash extended by the added points (not by the planned seeds: adding
        seed blocks leaves the store's layout as it is)."""
        from pipeline.engine.params import content_hash

        n = len(self.base.points)
        return content_hash({"spec": self.base.hash, "added": [
            [json_plain(self.points.label(i)), self.points.hash(i)]
            for i in range(n, len(self.points))]})

    def describe_point(self, index: int) -> str:
        """``d=1000, k=2`` for a point."""
        return self.points.describe(index)

    def provenance(self) -> dict[str, list]:
        """Per point, the round that added it and the rule (``""`` for the grid's points)."""
        n = len(self.base.points)
        rule = self.base.refine.rule.describe()
        return {"refine_round": [0] * n + [a.round for a in self.plan.added],
                "refine_rule": [""] * n + [rule] * len(self.plan.added)}

    def groups(self) -> dict[str, list[int]]:
        """Points by the combination of the other swept parameters (a JSON key), each list
        sorted along the rule's parameter."""
        param = self.base.refine.rule.param
        out: dict[str, list[int]] = {}
        labels = [self.points.label(i) for i in range(len(self.points))]
        for i, lab in enumerate(labels):
            key = json.dumps({k: json_plain(v) for k, v in lab.items() if k != param},
                             sort_keys=True)
            out.setdefault(key, []).append(i)
        for members in out.values():
            members.sort(key=lambda i: labels[i][param])
        return out


# --- decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A statistic at one point, its confidence interval and the seeds it rests on."""

    value: float
    lo: float
    hi: float
    seeds: int


@dataclass
class Decision:
    """What one group needs next: new values, more seeds for some points, or nothing."""

    values: list[Any] = dataclasses.field(default_factory=list)
    more_seeds: list[int] = dataclasses.field(default_factory=list)
    outcome: dict[str, Any] = dataclasses.field(default_factory=dict)


def _side(rule: Rule, e: Estimate) -> str:
    """``"holds"``, ``"fails"`` or ``"undecided"``: whether the condition holds over the
    whole confidence interval, fails over all of it, or the interval straddles the
    threshold (or there is no estimate, e.g. no trajectory escaped)."""
    if not (math.isfinite(e.lo) and math.isfinite(e.hi)):
        return "undecided"
    lo, hi = rule.holds(e.lo), rule.holds(e.hi)
    if lo and hi:
        return "holds"
    if not lo and not hi:
        return "fails"
    return "undecided"


def midpoint(rule: Rule, a: Any, b: Any) -> Any:
    """The value between ``a`` and ``b`` a new point takes: the arithmetic (``scale =
    "log"``: geometric) mean, rounded to an integer for integer parameters and to 12
    significant digits otherwise (so the same decision gives the same label on any
    machine)."""
    if rule.scale == "log" and a > 0 and b > 0:
        m = math.sqrt(a * b)
    else:
        m = a + (b - a) / 2
    if rule.param in INTEGER_PARAMS:
        return int(round(m))
    return float(f"{m:.12g}")


def _wider(a: float, b: float, tol: float) -> bool:
    """``b - a > tol``, up to rounding (0.3 - 0.299 is not wider than 1e-3)."""
    return b - a > tol * (1 + 1e-9)


def bisect_step(rule: Rule, xs: list[Any], estimates: list[Estimate], members: list[int],
                max_seeds: int) -> Decision:
    """One bisection decision for one group (points ``members`` at values ``xs``, sorted).

    The condition is assumed to fail below the threshold value and hold above it. A point
    counts on one side only when its whole confidence interval does; an undecided point
    inside the bracket gets more seeds (up to ``max_seeds``); points still undecided then form
    a zone where the threshold cannot be located at that seed count: the gaps between the
    zone and the nearest decided points are bisected down to ``tol`` (status ``narrowing``),
    then the group stops with status ``undecided`` and the bracket that is certain (wider
    than ``tol``). Before a bracket is final, both its ends get ``max_seeds`` (status
    ``confirming``; a changed decision moves the bracket again). A condition that holds
    below a point where it fails stops the group with status ``non_monotone``.
    """
    sides = [_side(rule, e) for e in estimates]
    holds = [i for i, s in enumerate(sides) if s == "holds"]
    fails = [i for i, s in enumerate(sides) if s == "fails"]
    d = Decision()
    first = holds[0] if holds else None
    last = fails[-1] if fails else None
    if first is not None and last is not None and last > first:
        d.outcome = {"status": "non_monotone", "lo": None, "hi": None,
                     "note": f"holds at {xs[first]} but fails at {xs[last]}"}
        return d
    lo_i = last if last is not None else -1
    hi_i = first if first is not None else len(xs)
    between = range(lo_i + 1, hi_i)
    more = [members[i] for i in between if estimates[i].seeds < max_seeds]
    lo = xs[lo_i] if lo_i >= 0 else None
    hi = xs[hi_i] if hi_i < len(xs) else None
    d.outcome = {"lo": lo, "hi": hi}
    if more:
        d.more_seeds = more
        d.outcome["status"] = "adding_seeds"
        return d
    # The search is steered by decisions at few seeds; the reported bracket rests on both
    # ends decided at max_seeds (a point decided at 4 seeds is wrong 1 time in 20 when its
    # fraction is near the threshold, and a bisection takes many such steps).
    confirm = [members[i] for i in (lo_i, hi_i) if 0 <= i < len(xs)
               and estimates[i].seeds < max_seeds]
    if list(between):
        # The crossing lies in the zone of points that max_seeds cannot place on a side
        # (the statistic is close to the threshold there); bisecting the gaps between the
        # zone and the nearest decided points still narrows the certain bracket to it.
        first_u, last_u = xs[between[0]], xs[between[-1]]
        for a, b in ((lo, first_u), (last_u, hi)):
            if a is not None and b is not None and _wider(a, b, rule.tol) \
                    and (mid := midpoint(rule, a, b)) not in (a, b):
                d.values.append(mid)
        zone = ", ".join(str(xs[i]) for i in between)
        if not d.values and confirm:
            d.more_seeds = confirm
            d.outcome.update(status="confirming", note=f"undecided at max_seeds at {zone}")
            return d
        if d.values:
            d.outcome.update(status="narrowing", note=f"undecided at max_seeds at {zone}")
        else:
            d.outcome.update(status="undecided", note=f"undecided at max_seeds at {zone}")
        return d
    if lo is None or hi is None:
        d.outcome["status"] = "no_crossing"
        return d
    mid = midpoint(rule, lo, hi)
    if not _wider(lo, hi, rule.tol) or mid in (lo, hi):
        if confirm:
            d.more_seeds = confirm
            d.outcome["status"] = "confirming"
        else:
            d.outcome["status"] = "bracketed"
        return d
    d.values = [mid]
    d.outcome["status"] = "refining"
    return d


def densify_step(rule: Rule, xs: list[Any], estimates: list[Estimate], added: int
                 ) -> Decision:
    """One densify decision for one group: a new value in the segment whose rescaled length
    (python-adaptive's default loss) is largest, while the group has added fewer than
    ``rule.points`` values."""
    d = Decision(outcome={"status": "refining", "added": added})
    if added >= rule.points:
        d.outcome["status"] = "done"
        return d
    scale = (lambda v: math.log(v)) if rule.scale == "log" else (lambda v: v)  # noqa: E731
    x = [scale(v) for v in xs]
    y = [e.value for e in estimates]
    finite = [v for v in y if math.isfinite(v)]
    x_span = (max(x) - min(x)) or 1.0
    y_span = ((max(finite) - min(finite)) if finite else 0.0) or 1.0
    best, where = -1.0, None
    for i in range(len(xs) - 1):
        dy = (y[i + 1] - y[i]) / y_span if math.isfinite(y[i]) and math.isfinite(y[i + 1]) \
            else 1.0
        loss = math.hypot((x[i + 1] - x[i]) / x_span, dy)
        mid = midpoint(rule, xs[i], xs[i + 1])
        if loss > best and mid not in (xs[i], xs[i + 1]):
            best, where = loss, mid
    if where is None:
        d.outcome["status"] = "done"
    else:
        d.values = [where]
    return d


def summary_text(plan: Plan) -> str:
    """The refinement's progress and outcome as lines (``mimflow status`` and the driver
    show them): per group, the bracket (bisect) or the points added (densify) and a status."""
    lines = [f"refine:    round {plan.round}, {len(plan.added)} points added, "
             f"{sum(plan.seeds)} trajectories planned"
             + (", finished" if plan.done else ", in progress")]
    skip = {"param", "status", "lo", "hi", "note", "points", "trajectories", "estimates",
            "added"}
    for row in plan.outcome:
        labels = ", ".join(f"{k}={v}" for k, v in row.items() if k not in skip) or "all"
        where = (f"{row['param']} in ({row.get('lo')}, {row.get('hi')}]" if "lo" in row
                 else f"{row.get('added', 0)} values of {row['param']} added")
        lines.append(f"  {labels}: {where} {row['status']} ({row['points']} points, "
                     f"{row['trajectories']} trajectories)"
                     + (f"; {row['note']}" if row.get("note") else ""))
    return "\n".join(lines) + "\n"
