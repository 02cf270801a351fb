"""TOML sweep specs: parsing, validation and expansion into points and blocks (docs/design.md §3).

A spec names fixed parameters (``[params]``), a Cartesian ``[grid]``, ``[[zip]]`` groups varied
together, seeds and observation settings (``[observe]``). :func:`load_spec` checks *everything*
-- every value of every point, and the paper's assumptions for every activation pair -- before
returning, so that nothing is run or written for a spec that would fail later. Every error is a
:class:`~pipeline.errors.SpecError` naming the file, the field (``grid.d``), the value and what
is allowed.

Expansion order: the grid axes in file order, then each zip group as one more axis; the first
axis varies slowest. Points are numbered in that order and each point is cut into blocks of
``block_seeds`` consecutive seed indices.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engine.activations import check_assumptions, get_activation
from pipeline.engine.params import (
    IGNORED_LR,
    INTEGER_PARAMS,
    MATRIX_PARAMS,
    OBSERVE_PARAMS,
    TABLE_PARAMS,
    VOCABULARY,
    Point,
    hash_text,
    json_plain,
    json_text,
    resolve_point,
)
from pipeline.engine.seeding import validate_root_seed
from pipeline.engine.snapshots import default_snapshot_times, late_snapshots, validate_snapshots
from pipeline.errors import SpecError

from .points import GridParams, Points, PointsBuilder, SweepPoint, describe, show  # noqa: F401
from .refine import Refine, parse_refine
from .values import expand_helper, is_helper, looks_like_helper

TOP_LEVEL = ("name", "description", "seeds", "root_seed", "block_seeds", "unit_points",
             "unit_seeds", "params", "grid", "zip", "observe", "refine")
#: What ``[observe]`` accepts: the integration/observation settings and the snapshot grid.
OBSERVE_KEYS = (*OBSERVE_PARAMS, "snapshots")
DEFAULT_BLOCK_SEEDS = 1000
MAX_SEEDS = 2**31
MAX_POINTS = 1_000_000
#: Largest spec file read (a spec is a few lines; this stops /dev/zero, not a real spec).
MAX_SPEC_BYTES = 2**20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def block_id(point_index: int, start: int) -> str:
    """The name of the block of point ``point_index`` whose first seed is ``start`` (its
    ledger key)."""
    return f"{point_index:06d}-{start:010d}"


def parse_block_id(name: str) -> tuple[int, int]:
    """``"000003-0000000064"`` -> (point 3, first seed 64): the inverse of :func:`block_id`."""
    point, start = name.split("-")
    return int(point), int(start)


@dataclass(frozen=True)
class Block:
    """A unit of work: one point times a contiguous range of seed indices."""

    index: int
    point_index: int
    start: int
    stop: int

    @property
    def id(self) -> str:
        """Stable name of the block (ledger key): point index and first seed."""
        return block_id(self.point_index, self.start)

    @property
    def seeds(self) -> range:
        """The block's seed indices."""
        return range(self.start, self.stop)


@dataclass(frozen=True)
class SpecWarning:
    """A warning about the spec (broken assumption, truncated expansion) and where it applies."""

    category: str
    message: str
    points: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Spec:
    """A parsed, validated and expanded sweep spec. Build it with :func:`load_spec`."""

    source: str
    text: str
    name: str
    description: str
    seeds: int
    root_seed: int
    block_seeds: int
    fixed: dict[str, Any]
    swept: tuple[str, ...]
    index: tuple[str, ...]
    """The swept parameters that identify a point: every grid parameter and one key of each
    zip group (the others are determined by it). The store indexes ``point`` by these."""
    points: Points
    """The points (:class:`~sweeps.points.Points`: by column, each resolved on demand)."""
    snapshots: np.ndarray | None
    warnings: tuple[SpecWarning, ...] = field(default=())
    unit_points: int | None = None
    """Points per work unit (one Dask task, one shard of every variable); ``None``: sized
    automatically (:mod:`pipeline.units`)."""
    unit_seeds: int | None = None
    """Seeds per work unit, a multiple of ``block_seeds`` (or all seeds); ``None``: auto."""
    refine: Refine | None = None
    """The ``[refine]`` section (:mod:`sweeps.refine`); with it, ``seeds`` is the store's
    seed axis (``refine.max_seeds``) and the first round runs ``refine.seeds`` of them."""

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        """Every block, point by point, seed range by seed range."""
        out = []
        for p in range(len(self.points)):
            for start in range(0, self.seeds, self.block_seeds):
                out.append(Block(len(out), p, start, min(start + self.block_seeds,
                                                         self.seeds)))
        return tuple(out)

    @property
    def n_blocks(self) -> int:
        """Number of blocks, computed (``blocks`` enumerates them, which for 2^31 seeds in
        blocks of one is more than any memory holds)."""
        return len(self.points) * -(-self.seeds // self.block_seeds)

    @property
    def n_trajectories(self) -> int:
        """Number of (point, seed) trajectories."""
        return len(self.points) * self.seeds

    @property
    def n_neuron_trajectories(self) -> int:
        """Number of single-neuron paths (each trajectory has ``n`` neurons)."""
        return self.seeds * int(self.points.n.sum())

    @property
    def n_max(self) -> int:
        """Largest number of neurons over the points (the store pads to it)."""
        return int(self.points.n.max())

    @property
    def k_max(self) -> int:
        """Largest number of index vectors over the points (the store pads to it)."""
        return int(self.points.k.max())

    @cached_property
    def hash(self) -> str:
        """Identity of the computation: two specs with the same hash fill identical stores.

        It covers what decides the stored numbers and their layout (name, seeds, root seed,
        block size, snapshot times, every point's swept labels and content hash), not the
        description or the formatting of the file.
        """
        identity = {
            "name": self.name, "seeds": self.seeds, "root_seed": self.root_seed,
            "block_seeds": self.block_seeds, "swept": list(self.swept),
            "snapshots": None if self.snapshots is None else self.snapshots.tolist(),
            "points": [],  # [[labels, point hash], ...]: streamed in below
            # Only when set: specs without them keep the hash (and stores) they had.
            **{k: v for k, v in (("unit_points", self.unit_points),
                                 ("unit_seeds", self.unit_seeds)) if v is not None},
        }
        if self.refine is not None:  # absent otherwise: the hashes of older stores stand
            identity["refine"] = self.refine.identity()
        # The digest of the whole identity's JSON text, fed piece by piece: the same
        # digest as content_hash(identity with its points), never holding their text.
        # The first '"points":[]' is the top-level key's (sorted keys: only block_seeds
        # and name come before it, neither can hold a quote).
        head, _, tail = json_text(identity).partition('"points":[]')
        return hash_text(itertools.chain([head, '"points":['],
                                         self.points.identity_chunks(), ["]", tail]))

    def describe_point(self, index: int) -> str:
        """``d=1000, k=2`` for a point (``the single point`` when nothing is swept)."""
        return self.points.describe(index)


#: Points between two calls of a parse's ``progress`` callback.
PROGRESS_EVERY = 100_000


def load_spec(path: str | Path, *, progress: Callable[[int, int], None] | None = None
              ) -> Spec:
    """Read, validate and expand the TOML spec at ``path``. Raises :class:`SpecError`.

    ``progress(done, total)``, if given, is called every :data:`PROGRESS_EVERY` points
    resolved (only for specs with more points than that: 10^6 points take ~35 s).
    """
    source = str(path)
    try:
        file = Path(path)
        if file.exists() and not file.is_file():  # /dev/zero, a fifo, a folder
            raise SpecError("spec file", source, "a regular TOML file",
                            hint="it is a device, a pipe or a folder")
        with open(file, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError("spec file", source, f"a TOML file of at most "
                            f"{MAX_SPEC_BYTES // 2**20} MiB")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError("spec file", source, "a readable UTF-8 TOML file",
                        hint=f"{type(err).__name__}: {err}") from None
    return parse_spec(text, source=source, progress=progress)


def parse_spec(text: str, *, source: str = "<spec>",
               progress: Callable[[int, int], None] | None = None) -> Spec:
    """Validate and expand spec ``text``; ``source`` names it in messages; ``progress`` as
    in :func:`load_spec`."""
    try:
        return _parse(text, source, progress)
    except SpecError as err:
        if err.source is None:
            raise err.with_source(source) from None
        raise


def _parse(text: str, source: str, progress: Callable[[int, int], None] | None) -> Spec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError("TOML syntax", str(err), "a valid TOML document") from None
    for key in raw:
        if key not in TOP_LEVEL:
            hint = ("parameters go in [params], [grid] or [[zip]]" if key in VOCABULARY
                    else None)
            raise SpecError(key, raw[key], "a top-level key among " + ", ".join(TOP_LEVEL),
                            hint=hint)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError("name", name, "a name of letters, digits, '.', '_' or '-' (it names "
                        "the default store)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError("description", description, "a string")
    seeds = _count("seeds", raw.get("seeds"), MAX_SEEDS)
    try:
        root_seed = validate_root_seed(raw.get("root_seed", 0))
    except SpecError as err:
        raise SpecError("root_seed", err.value, err.allowed) from None
    block_seeds = _count("block_seeds", raw.get("block_seeds", min(seeds, DEFAULT_BLOCK_SEEDS)),
                         MAX_SEEDS)
    # A block never exceeds the seed count: its region is then the whole seed axis.
    block_seeds = min(block_seeds, seeds)
    unit_points = None if raw.get("unit_points") is None else \
        _count("unit_points", raw["unit_points"], MAX_POINTS)
    unit_seeds = None
    if raw.get("unit_seeds") is not None:
        unit_seeds = min(_count("unit_seeds", raw["unit_seeds"], MAX_SEEDS), seeds)
        if unit_seeds % block_seeds and unit_seeds != seeds:
            raise SpecError("unit_seeds", raw["unit_seeds"],
                            f"a multiple of block_seeds = {block_seeds} (or all {seeds} seeds)",
                            hint="a work unit holds whole blocks")

    params = _table(raw, "params")
    grid = _table(raw, "grid")
    observe = _table(raw, "observe")
    zips = raw.get("zip", [])
    if isinstance(zips, dict):  # `[zip]` (one group) instead of `[[zip]]`
        zips = [zips]
    if not isinstance(zips, list) or not all(isinstance(z, dict) for z in zips):
        raise SpecError("zip", zips, "[[zip]] tables of equal-length lists")

    sections = _sections(params, grid, zips, observe)
    snapshots_raw = observe.get("snapshots")
    fixed = {k: _single(f"params.{k}", k, v) for k, v in params.items()}
    fixed.update({k: _single(f"observe.{k}", k, v) for k, v in observe.items()
                  if k != "snapshots"})

    axes: list[tuple[tuple[str, ...], list[tuple]]] = []
    for key, value in grid.items():
        values = _values(f"grid.{key}", key, value)
        axes.append(((key,), [(v,) for v in values]))
    for g, group in enumerate(zips):
        axes.append(_zip_axis(g, group))
    swept = tuple(name for names, _ in axes for name in names)

    count = math.prod(len(values) for _, values in axes)
    if count > MAX_POINTS:
        raise SpecError("grid", f"{count} points", f"at most {MAX_POINTS} points per sweep",
                        hint="split the sweep into several specs")

    params_of = GridParams(fixed, axes)
    builder = PointsBuilder(swept, count)
    activations = _Activations(sections, swept, params_of)
    lr_points = []
    for i, combo in enumerate(itertools.product(*(values for _, values in axes))):
        assigned = {name: v for (names, _), vals in zip(axes, combo, strict=True)
                    for name, v in zip(names, vals, strict=True)}
        p = {**fixed, **assigned}
        point = _resolve(p, assigned, sections)
        labels = builder.add(point)
        activations.add(i, point, labels)
        if p.get("lr") is not None and point.method == "flow":
            lr_points.append(i)
        if progress is not None and (i + 1) % PROGRESS_EVERY == 0 and count > PROGRESS_EVERY:
            progress(i + 1, count)
    t_max_of = builder.t_max  # (not kept by Points: only the warnings below need it)
    points = builder.build(params_of)
    del builder

    index = _index(axes, points, sections)
    activations.raise_first()
    t_max = float(t_max_of.max())
    if snapshots_raw not in (None, False) and any(pr.point.method == "sgd"
                                                  for pr in points.profiles):
        t_max = _sample_grid_end(points)  # an SGD sweep's snapshots count samples
    snapshots = _snapshots(snapshots_raw, t_max)
    spec_warnings = activations.warnings()
    spec_warnings += _ignored_settings(lr_points, t_max_of, snapshots)
    refine = None
    if "refine" in raw:
        for setting in ("unit_points", "unit_seeds"):
            if raw.get(setting) is not None:
                raise SpecError(setting, raw[setting], "not set in a spec with a [refine] "
                                "section", hint="an adaptive sweep's work units are single "
                                "blocks (a later round adds seed blocks to single points); "
                                f"remove {setting}")
        refine = parse_refine(raw["refine"], grid=grid, swept=swept, seeds=seeds,
                              block_seeds=block_seeds)
        seeds = refine.max_seeds  # the store's seed axis; rounds fill it as they need
    return Spec(
        source=source, text=text, name=name, description=description, seeds=seeds,
        root_seed=root_seed, block_seeds=block_seeds, fixed=fixed, swept=swept,
        index=index, points=points, snapshots=snapshots,
        warnings=tuple(spec_warnings), unit_points=unit_points, unit_seeds=unit_seeds,
        refine=refine,
    )


def _count(name: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise SpecError(name, value, f"an integer in [1, {limit}]")
    return value


def _table(raw: dict, key: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(key, value, f"a table [{key}]")
    return value


def _sections(params: dict, grid: dict, zips: list[dict], observe: dict) -> dict[str, str]:
    """Map each parameter to the section that sets it; reject unknown and repeated names."""
    where: dict[str, str] = {}
    named = [("params", params), ("grid", grid)]
    named += [(f"zip[{i}]", z) for i, z in enumerate(zips)]
    named.append(("observe", observe))
    for section, table in named:
        allowed_names = OBSERVE_KEYS if section == "observe" else tuple(VOCABULARY)
        for key, value in table.items():
            if key not in allowed_names:
                if section == "observe":
                    allowed = "a setting among " + ", ".join(OBSERVE_KEYS)
                    hint = "model parameters go in [params], [grid] or [[zip]]" \
                        if key in VOCABULARY else None
                else:
                    allowed = "a parameter among " + ", ".join(VOCABULARY)
                    hint = "snapshots go in [observe]" if key == "snapshots" else None
                raise SpecError(f"{section}.{key}", value, allowed, hint=hint)
            if key in where:
                raise SpecError(
                    f"{section}.{key}", value,
                    "each parameter in only one of [params], [grid], [[zip]], [observe]",
                    hint=f"{key} is already set in [{where[key]}]")
            where[key] = section
    return where


def _single(field: str, name: str, value: Any) -> Any:
    """A fixed value: not a helper, not a list (unless the parameter is a matrix)."""
    if looks_like_helper(value) and name not in TABLE_PARAMS:
        raise SpecError(field, value, "a single value here",
                        hint=f"to sweep {name}, put it in [grid] or [[zip]]")
    if isinstance(value, dict) and name not in TABLE_PARAMS:
        raise SpecError(field, value, f"a single value ({VOCABULARY.get(name, name)})")
    if isinstance(value, list) and name not in MATRIX_PARAMS:
        raise SpecError(field, value, "a single value here",
                        hint=f"to sweep {name}, put the list in [grid] or [[zip]]")
    return value


def _values(field: str, name: str, value: Any, *, distinct: bool = True) -> list:
    """The list of values of a swept parameter: a non-empty list or a value helper.

    Grid axes must not repeat a value (``distinct``); zip columns may, see ``_zip_axis``.
    """
    if is_helper(value):
        values = expand_helper(field, name, value)
    elif looks_like_helper(value) and name not in TABLE_PARAMS:
        raise SpecError(field, value, "a list or a value helper: {logspace = [a, b, num]}, "
                        "{linspace = [a, b, num]} or {range = [a, b, step]}")
    elif isinstance(value, list) and not (name in MATRIX_PARAMS and _is_matrix(value)):
        values = list(value)
    else:
        raise SpecError(field, value, "a list of values or a value helper such as "
                        "{logspace = [2, 4, 3]}",
                        hint=f"a fixed {name} goes in [params]")
    if not values:
        raise SpecError(field, value, "a non-empty list of values")
    if distinct and (dup := _first_repeat(values)) is not None:
        extra = " after rounding to integers" if name in INTEGER_PARAMS and is_helper(value) \
            else ""
        raise SpecError(field, value, f"distinct values (got {dup!r} twice{extra})")
    return values


def _first_repeat(items: list) -> Any:
    """The first item whose JSON form occurs more than once in ``items`` (None if none does)."""
    keys = [json.dumps(json_plain(x), sort_keys=True) for x in items]
    if len(set(keys)) == len(keys):
        return None
    return next(x for x, key in zip(items, keys, strict=True) if keys.count(key) > 1)


def _is_matrix(value: list) -> bool:
    """True for one matrix (a list of rows of numbers), as opposed to a list of matrices."""
    return bool(value) and isinstance(value[0], list) \
        and all(isinstance(x, int | float) for x in value[0])


def _zip_axis(g: int, group: dict) -> tuple[tuple[str, ...], list[tuple]]:
    """One zip group as an axis: its names and the tuples of values varied together."""
    if not group:
        raise SpecError(f"zip[{g}]", group, "a table of equal-length lists")
    # A zip column may repeat a value (k = [1, 4, 4] with beta = [0, 0, 0.2]); it is the rows
    # that must be distinct.
    columns = {key: _values(f"zip[{g}].{key}", key, value, distinct=False)
               for key, value in group.items()}
    lengths = {key: len(v) for key, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise SpecError(f"zip[{g}]", lengths, "lists of equal length (values varied together)")
    rows = list(zip(*columns.values(), strict=True))
    if (dup := _first_repeat(rows)) is not None:
        raise SpecError(f"zip[{g}]", dict(zip(columns, dup, strict=True)),
                        "distinct rows of values varied together (this row appears twice)")
    return tuple(columns), rows


def _index(axes: list[tuple[tuple[str, ...], list[tuple]]], points: Points,
           sections: dict[str, str]) -> tuple[str, ...]:
    """The parameters that label points uniquely; refuse two points with the same labels
    (``d = [100, 100.0]`` gives two points with d = 100)."""
    codes = {name: _codes(points.columns[name]) for names, _ in axes for name in names}
    index: list[str] = []
    for names, rows in axes:
        key = next((n for n in names if int(codes[n].max(initial=-1)) + 1 == len(rows)), None)
        index.extend([key] if key else names)
    if not index or len(points) < 2:
        return tuple(index)
    # One integer per point from its codes (mixed radix), when that fits in 63 bits.
    sizes = [int(codes[name].max()) + 1 for name in index]
    if math.prod(sizes) < 2**62:
        key = np.zeros(len(points), dtype=np.int64)
        for name, size in zip(index, sizes, strict=True):
            key = key * size + codes[name]
        order = np.argsort(key, kind="stable")
        same = np.nonzero(key[order][1:] == key[order][:-1])[0]
        pairs = [(int(order[s]), int(order[s + 1])) for s in same[:1]]
    else:
        table = np.stack([codes[name] for name in index], axis=1)
        _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        repeated = np.nonzero(first[inverse] != np.arange(len(points)))[0]
        pairs = [(int(first[inverse[r]]), int(r)) for r in repeated[:1]]
    if pairs:
        j, i = pairs[0]
        p, q = points.params(i), points.params(j)
        name = next((n for n in points.swept if p[n] != q[n]), index[0])
        raise SpecError(f"{sections[name]}.{name}", p[name],
                        "values that give distinct points",
                        hint=f"{q[name]!r} and {p[name]!r} both give the point "
                             f"{points.describe(i)}")
    return tuple(index)


def _codes(column: Any) -> np.ndarray:
    """An integer per value of a label column, equal exactly where the labels' JSON texts
    are equal (floats by their bits: -0.0 and 0.0 are two labels, as their texts are)."""
    if isinstance(column, np.ndarray):
        bits = column.view(np.int64) if column.dtype == np.float64 else column
        return np.unique(bits, return_inverse=True)[1].reshape(-1)
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(json.dumps(json_plain(v), sort_keys=True), len(seen))
                     for v in column], dtype=np.int64)


def _resolve(params: dict, assigned: dict, sections: dict[str, str]) -> Point:
    """Resolve one point; a failure names the section of the field and the point's labels."""
    try:
        return resolve_point(params)
    except SpecError as err:
        section = sections.get(err.field)
        where = f"{section}.{err.field}" if section else err.field
        at = f"at the point {describe(assigned)}" if assigned else None
        hint = "; ".join(x for x in (err.hint, at) if x)
        raise SpecError(where, err.value, err.allowed, hint=hint or None) from None


def _sample_grid_end(points: Points) -> float:
    """The largest sample budget, for a sweep whose snapshots are sample counts (SGD).

    The store has one ``time`` axis, so a sweep with snapshots may not mix SGD points (grid
    in samples) with flow or GD points (grid in time)."""
    methods = sorted({pr.point.method for pr in points.profiles})
    if methods != ["sgd"]:
        raise SpecError("method", methods, "only 'sgd', or no 'sgd', in a sweep with "
                        "snapshots (SGD snapshots count samples, the others time)",
                        hint="split the sweep into an SGD spec and a flow/GD spec")
    return float(max(pr.point.max_samples for pr in points.profiles))


def _snapshots(value: Any, t_max: float) -> np.ndarray | None:
    try:
        if is_helper(value):
            value = expand_helper("observe.snapshots", "snapshots", value)
        elif looks_like_helper(value):
            raise SpecError("snapshots", value, "true, a list of times or a value helper "
                            "({logspace = [a, b, num]} ...)")
        elif isinstance(value, dict | str):
            raise SpecError("snapshots", value, "true, false, a list of times or a helper")
        if value is True:
            return default_snapshot_times(t_max)
        return validate_snapshots(value, t_max)
    except SpecError as err:
        field_name = err.field if err.field.startswith("observe.") else f"observe.{err.field}"
        raise SpecError(field_name, err.value, err.allowed, hint=err.hint) from None


class _Activations:
    """The paper's assumptions, checked once per distinct (teacher, student, degree, frame),
    point by point as the parse resolves them.

    An activation pair with no dynamics is an error; broken assumptions and truncated
    expansions become :class:`SpecWarning` s, each reported once with the points it concerns.
    Two spellings of one activation (``h3`` and ``{3 = 1.0}``) at otherwise equal points are
    one computation under two labels: an error. The first error is raised by
    :meth:`raise_first`, after the check of distinct labels (as before points were kept by
    column).
    """

    def __init__(self, sections: dict[str, str], swept: tuple[str, ...],
                 params_of: GridParams) -> None:
        self.sections = sections
        self.params_of = params_of
        self.found: dict[tuple[str, str], list[int]] = {}
        self.seen: dict[Any, list[tuple[str, str]]] = {}
        self.numbers: dict[Any, str] = {}  # activation key -> the Hermite coefficients, text
        # Only when an activation is swept can two points differ by its spelling alone.
        self.spellings = "teacher" in swept or "student" in swept
        # digest of what a point computes -> its first point and activation key
        self.same: dict[int, tuple[int, Any]] = {}
        self.error: SpecError | None = None

    def add(self, i: int, p: Any, labels: dict[str, Any]) -> None:
        """Check point ``i`` (resolved: ``p``; its swept labels: ``labels``)."""
        if self.error is not None:
            return
        key: Any = (p.teacher, p.student, p.degree, p.gram, p.beta, p.k)
        try:
            hash(key)
        except TypeError:  # an activation given as a table of coefficients
            key = json.dumps([p.teacher, p.student, p.degree, p.gram, p.beta, p.k],
                             sort_keys=True)
        if key not in self.seen:
            if not self._first_of(key, i, p, labels):
                return
        for item in self.seen[key]:
            self.found.setdefault(item, []).append(i)
        if self.spellings:
            self._spelling(key, i, p, labels)

    def _first_of(self, key: Any, i: int, p: Any, labels: dict[str, Any]) -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            teacher = get_activation(p.teacher, p.degree, field_name="teacher")
            student = get_activation(p.student, p.degree, field_name="student")
        self.numbers[key] = json.dumps([teacher.coefficients.tolist(),
                                        student.coefficients.tolist()])
        issues = check_assumptions(student.coefficients, teacher.coefficients, p.gram_matrix)
        for issue in issues:
            if issue.severity == "error":
                name = "teacher" if "teacher" in self.sections else "student"
                self.error = SpecError(
                    f"{self.sections.get(name, 'params')}.{name}", getattr(p, name),
                    f"activations satisfying Assumption {issue.assumption}",
                    hint=f"{issue.message}; at the point {describe(labels)}")
                return False
        self.seen[key] = [(w.category.__name__, str(w.message)) for w in caught]
        self.seen[key] += [("AssumptionWarning",
                            f"Assumption {i.assumption} broken: {i.message}") for i in issues]
        return True

    def _spelling(self, key: Any, i: int, p: Any, labels: dict[str, Any]) -> None:
        canon = {k: v for k, v in p.canonical().items() if k not in ("teacher", "student")}
        ident = json.dumps([canon, self.numbers[key]], sort_keys=True, default=str)
        digest = int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest())
        j, key_j = self.same.setdefault(digest, (i, key))
        if j == i:
            return
        first = resolve_point(self.params_of(j))
        canon_j = {k: v for k, v in first.canonical().items()
                   if k not in ("teacher", "student")}
        if json.dumps([canon_j, self.numbers[key_j]], sort_keys=True, default=str) != ident:
            return  # two digests alike by chance, not two spellings
        name = next((n for n in ("teacher", "student") if getattr(p, n) != getattr(first, n)),
                    "teacher")
        params = self.params_of(i)
        self.error = SpecError(
            f"{self.sections.get(name, 'params')}.{name}", params.get(name),
            "activations that give distinct points",
            hint=f"{show(getattr(first, name))} and {show(getattr(p, name))} have the same "
                 f"Hermite coefficients: the points "
                 f"{describe({n: getattr(first, n) for n in labels})} and "
                 f"{describe(labels)} are one computation")

    def raise_first(self) -> None:
        """Raise the first error found, if any."""
        if self.error is not None:
            raise self.error

    def warnings(self) -> list[SpecWarning]:
        """The warnings, each with the points it concerns."""
        return [SpecWarning(cat, msg, tuple(idx)) for (cat, msg), idx in self.found.items()]


def _ignored_settings(lr_points: list[int], t_max: np.ndarray, snapshots: np.ndarray | None
                      ) -> list[SpecWarning]:
    """Warnings for settings that have no effect: ``lr`` with method flow (at the points
    ``lr_points``), snapshot times after a point's ``t_max`` (``t_max[i]``)."""
    out = []
    if lr_points:
        out.append(SpecWarning("ignored", IGNORED_LR, tuple(lr_points)))
    if snapshots is None:
        return out
    values, first, inverse = np.unique(t_max, return_index=True, return_inverse=True)
    members = np.split(np.argsort(inverse, kind="stable"),
                       np.cumsum(np.bincount(inverse.reshape(-1)))[:-1])
    late: dict[str, list[int]] = {}
    for v in np.argsort(first, kind="stable"):  # in the order of each value's first point
        if (text := late_snapshots(snapshots, float(values[v]))) is not None:
            late.setdefault(text, []).extend(members[v].tolist())
    out += [SpecWarning("ignored", text, tuple(sorted(idx))) for text, idx in late.items()]
    return out
