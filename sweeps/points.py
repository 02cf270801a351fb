"""The points of a sweep, kept by column (docs/design.md §3).

A spec of 10^6 points cannot keep a resolved :class:`~pipeline.engine.params.Point` (and its
parameter dictionaries) per point: that was ~1.1 kB a point, 1.8 GB for the driver before any
work. :func:`~sweeps.spec.load_spec` still resolves and validates every point, once, but keeps
only what the driver needs afterwards, by column:

* each point's swept labels (the store's coordinates along ``point``), its content hash, its
  ``n`` and ``k``, and its canonical parameters as JSON text (the ``point_params``
  coordinate), the latter compressed in blocks: they repeat the fixed parameters;
* *profiles*: per distinct ``(loss, method, backend, n, k)``, the largest ``d``, ``t_max``,
  ``max_steps`` and ``max_samples`` of its points, for the sweep-wide questions (which
  kernels, how much memory and time a point may take, which convergence rules);
* how to rebuild a point's parameters from its index (the grid's axes, mixed-radix).

``points[i]`` resolves point ``i`` again on demand (a :class:`SweepPoint`, as before); the
columns answer everything that concerns all points without resolving any.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.params import Point, hash_text, json_plain, json_text, resolve_point

#: Canonical parameter texts per compressed block.
CANON_BLOCK = 10_000


def show(value: Any) -> str:
    """A label as text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(json_plain(value))


def describe(labels: dict[str, Any]) -> str:
    """``d=1000, k=2`` for a point's swept labels (``the single point`` when none)."""
    return ", ".join(f"{k}={show(v)}" for k, v in labels.items()) or "the single point"


@dataclass(frozen=True, eq=False)
class SweepPoint:
    """One point of a sweep: its position, its parameters and its swept labels."""

    index: int
    params: dict[str, Any]
    """Parameters as given to :func:`pipeline.simulate` (fixed and swept values)."""
    labels: dict[str, Any]
    """Swept parameter name -> resolved value (the store's coordinates along ``point``)."""
    point: Point

    def swept_names(self) -> list[str]:
        """Names of the swept parameters, in expansion order."""
        return list(self.labels)

    def describe(self) -> str:
        """``d=1000, k=2`` for the point (``the single point`` when nothing is swept)."""
        return describe(self.labels)


@dataclass(frozen=True)
class Profile:
    """The points of one ``(loss, method, backend, n, k)``: the first of them, and the
    largest ``d``, ``t_max``, ``max_steps`` and ``max_samples`` among them (in ``point``,
    a worst case for cost and memory estimates, not necessarily a point of the sweep)."""

    index: int
    """A point of the profile with the largest ``d`` (the one named in messages)."""
    point: Point


class GridParams:
    """Point ``i``'s parameters from the grid: ``fixed`` plus one row of each axis, the first
    axis varying slowest (``itertools.product`` order). Picklable, unlike a closure."""

    def __init__(self, fixed: dict[str, Any],
                 axes: Sequence[tuple[tuple[str, ...], Sequence[tuple]]]) -> None:
        self.fixed = fixed
        self.axes = tuple((tuple(names), list(rows)) for names, rows in axes)

    def __call__(self, i: int) -> dict[str, Any]:
        rows = []
        for _, values in reversed(self.axes):
            i, r = divmod(i, len(values))
            rows.append(values[r])
        assigned = {name: v for (names, _), row in zip(self.axes, reversed(rows), strict=True)
                    for name, v in zip(names, row, strict=True)}
        return {**self.fixed, **assigned}


class _Column:
    """One label column as it fills: a preallocated int64 or float64 array while every value
    is a Python int (or every one a float), which keeps each value's exact JSON; a list as
    soon as one is not."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.kind: type | None = None
        self.values: Any = None
        self.count = 0

    def append(self, value: Any) -> None:
        kind = type(value)
        if self.kind is None:
            self.kind = kind
            dtype = {int: np.int64, float: np.float64}.get(kind)
            self.values = [] if dtype is None else np.empty(self.size, dtype=dtype)
        elif kind is not self.kind and isinstance(self.values, np.ndarray):
            self.values = [_item(self.values, i) for i in range(self.count)]
        if isinstance(self.values, np.ndarray):
            self.values[self.count] = value
        else:
            self.values.append(value)
        self.count += 1

    def finish(self) -> Sequence[Any]:
        return self.values[:self.count] if self.values is not None else []


class PointsBuilder:
    """Collects the columns of ``size`` points as they are resolved one by one, in order."""

    def __init__(self, swept: Sequence[str], size: int) -> None:
        self.swept = tuple(swept)
        self.size = size
        self.labels = {name: _Column(size) for name in self.swept}
        self.hashes = np.empty(size, dtype="S16")
        self.n = np.empty(size, dtype=np.int64)
        self.k = np.empty(size, dtype=np.int64)
        self.t_max = np.empty(size, dtype=np.float64)
        self.count = 0
        self._lines: list[str] = []
        self._canon: list[bytes] = []
        self._profiles: dict[tuple, list] = {}

    def add(self, point: Point) -> dict[str, Any]:
        """Record the next point; returns its labels."""
        i = self.count
        canonical = point.canonical()
        text = json.dumps(json_plain(canonical), sort_keys=True)
        labels = {name: getattr(point, name) for name in self.swept}
        for name, value in labels.items():
            self.labels[name].append(value)
        self.hashes[i] = point.hash
        self.n[i], self.k[i], self.t_max[i] = point.n, point.k, point.t_max
        self.count += 1
        self._lines.append(text)
        if len(self._lines) == CANON_BLOCK:
            self._flush()
        key = (point.loss, point.method, point.backend, point.n, point.k)
        prof = self._profiles.get(key)
        if prof is None:
            self._profiles[key] = [i, point, point.d, point.t_max, point.max_steps,
                                   point.max_samples]
        else:
            if point.d > prof[2]:
                prof[0], prof[1], prof[2] = i, point, point.d
            prof[3] = max(prof[3], point.t_max)
            prof[4] = max(prof[4], point.max_steps)
            prof[5] = max(prof[5], point.max_samples)
        return labels

    def _flush(self) -> None:
        if self._lines:
            self._canon.append(zlib.compress("\n".join(self._lines).encode(), 1))
            self._lines = []

    def build(self, params_of: Callable[[int], dict[str, Any]]) -> Points:
        """The :class:`Points` collected; ``params_of(i)`` gives point ``i``'s parameters."""
        self._flush()
        profiles = tuple(
            Profile(i, dataclasses.replace(p, d=d, t_max=t, max_steps=s, max_samples=m))
            for i, p, d, t, s, m in self._profiles.values())
        if self.count != self.size:
            raise ValueError(f"{self.count} points recorded, {self.size} announced")
        return Points(self.swept, {name: c.finish() for name, c in self.labels.items()},
                      self.hashes, self.n, self.k, profiles, tuple(self._canon), params_of)


def _item(column: Sequence[Any], i: int) -> Any:
    value = column[i]
    return value.item() if isinstance(value, np.generic) else value


class Points(Sequence[SweepPoint]):
    """The points of a sweep by column (see the module docstring). ``points[i]`` is a
    :class:`SweepPoint`, resolved on demand; the other members answer without resolving."""

    def __init__(self, swept: tuple[str, ...], labels: dict[str, Sequence[Any]],
                 hashes: np.ndarray, n: np.ndarray, k: np.ndarray,
                 profiles: tuple[Profile, ...], canon: tuple[bytes, ...],
                 params_of: Callable[[int], dict[str, Any]]) -> None:
        self.swept = swept
        self.columns = labels
        """Swept parameter name -> its resolved value at every point."""
        self.hash_bytes = hashes
        self.n = n
        """Each point's number of neurons."""
        self.k = k
        """Each point's number of index vectors."""
        self.profiles = profiles
        """One :class:`Profile` per distinct (loss, method, backend, n, k)."""
        self._canon = canon
        self._params_of = params_of

    def __len__(self) -> int:
        return len(self.hash_bytes)

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"point {i} of {len(self)}")
        return i

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._index(i)
        params = self.params(i)
        return SweepPoint(i, params, self.label(i), resolve_point(params))

    def __iter__(self) -> Iterator[SweepPoint]:
        return (self[i] for i in range(len(self)))

    def params(self, i: int) -> dict[str, Any]:
        """Point ``i``'s parameters, as given to :func:`pipeline.simulate` (not resolved)."""
        return self._params_of(self._index(i))

    def label(self, i: int) -> dict[str, Any]:
        """Point ``i``'s swept labels (resolved values)."""
        i = self._index(i)
        return {name: _item(self.columns[name], i) for name in self.swept}

    def describe(self, i: int) -> str:
        """``d=1000, k=2`` for point ``i``."""
        return describe(self.label(i))

    def hash(self, i: int) -> str:
        """Point ``i``'s content hash."""
        return self.hash_bytes[self._index(i)].decode()

    def hashes(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The content hashes of points ``start:stop``."""
        return [h.decode() for h in self.hash_bytes[start:stop]]

    def canonical_texts(self) -> Iterator[list[str]]:
        """The points' canonical parameters as JSON text, in blocks of consecutive points."""
        for block in self._canon:
            yield zlib.decompress(block).decode().split("\n")

    def identity_chunks(self, start: int = 0) -> Iterator[str]:
        """``[labels, hash]`` of each point from ``start`` on as JSON (a spec's identity),
        comma-separated, in pieces: hashing 10^6 points never holds their text at once."""
        step = 10_000
        for lo in range(start, len(self), step):
            rows = [json_text([json_plain(self.label(i)), self.hash(i)])
                    for i in range(lo, min(lo + step, len(self)))]
            yield ("," if lo > start else "") + ",".join(rows)

    def slice(self, start: int, stop: int) -> PointRange:
        """Points ``start:stop`` as a :class:`PointRange` (what a work unit's task carries)."""
        params = [self.params(i) for i in range(start, stop)]
        fixed = {k: v for k, v in params[0].items() if k not in self.swept}
        for i, p in enumerate(params):
            if list(p) != [*fixed, *self.swept] or \
                    any(p[k] != v for k, v in fixed.items()):
                raise ValueError(f"point {start + i} does not share the fixed parameters of "
                                 f"point {start}")
        values = {name: _as_column([p[name] for p in params]) for name in self.swept}
        return PointRange(start, fixed, self.swept, values, self.hash(start),
                          hash_text(self.hashes(start, stop)), self.describe(start),
                          self.describe(stop - 1))

    def extended(self, added: Sequence[tuple[dict[str, Any], Point]]) -> Points:
        """These points followed by ``added`` (parameters and resolved point, in order)."""
        n = len(self)
        b = PointsBuilder(self.swept, n + len(added))
        for name in self.swept:
            for i in range(n):
                b.labels[name].append(_item(self.columns[name], i))
        b.hashes[:n], b.n[:n], b.k[:n] = self.hash_bytes, self.n, self.k
        b.count = n
        b._canon = list(self._canon)
        b._profiles = {(p.point.loss, p.point.method, p.point.backend, p.point.n, p.point.k):
                       [p.index, p.point, p.point.d, p.point.t_max, p.point.max_steps,
                        p.point.max_samples] for p in self.profiles}
        base, extra = len(self), [params for params, _ in added]
        # Block boundaries of the canonical texts stay where they were: a new block starts.
        for _, point in added:
            b.add(point)
        return b.build(_Extended(self._params_of, base, extra))


def _as_column(values: list) -> Sequence[Any]:
    """``values`` as a :class:`_Column` holds them: an int64 or float64 array when every one
    is a Python int (or every one a float), a few bytes each; the list otherwise."""
    column = _Column(len(values))
    for v in values:
        column.append(v)
    return column.finish()


@dataclass(frozen=True)
class PointRange:
    """Consecutive points ``start, start + 1, ...`` of a sweep in a few bytes each: the
    fixed parameters once, the swept ones by column, and a digest of the points' content
    hashes (a work unit's task carries this: a Dask scheduler keeps a task's arguments
    around, and 5,000 parameter dictionaries per task made the driver grow by MBs per unit).
    """

    start: int
    fixed: dict[str, Any]
    swept: tuple[str, ...]
    values: dict[str, Sequence[Any]]
    """Swept parameter name -> its given (unresolved) value at each point of the range."""
    first_hash: str
    """The content hash of the first point."""
    digest: str
    """``hash_text`` of the points' content hashes, in order."""
    first: str
    """The first point described (``d=1000, k=2``)."""
    last: str
    """The last point described."""

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 1

    def params(self, row: int) -> dict[str, Any]:
        """The parameters of the range's point ``row`` (``start + row`` of the sweep)."""
        return {**self.fixed, **{name: _item(self.values[name], row) for name in self.swept}}

    def describe(self, row: int) -> str:
        """Point ``row`` described by its given swept values."""
        return describe({name: _item(self.values[name], row) for name in self.swept})


class _Extended:
    """Parameters of a grid extended by listed points (picklable)."""

    def __init__(self, base: Callable[[int], dict[str, Any]], size: int,
                 extra: list[dict[str, Any]]) -> None:
        self.base, self.size, self.extra = base, size, extra

    def __call__(self, i: int) -> dict[str, Any]:
        return self.base(i) if i < self.size else dict(self.extra[i - self.size])
