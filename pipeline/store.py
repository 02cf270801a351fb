"""The results store: a zarr v3 group written through xarray (docs/design.md §3).

Layout
------
Dimensions ``point, seed, neuron, index`` (+ ``time`` with snapshots, ``neuron2`` for the MSE
Gram ``q``). ``n`` and ``k`` are padded to their sweep maximum: padded float entries are NaN,
padded integer entries -1, and ``neuron_mask`` / ``index_mask`` say what is real.

Every data variable is stored in zarr v3 shards of one work unit each (``(unit_points,
unit_seeds, <whole>...)``, :mod:`pipeline.units`), so a work unit covers exactly one shard of
every variable it writes: the units tile ``(point, seed)`` on the shard grid itself (same
numbers, recorded in the store), :func:`write_unit` refuses any other region, and so no two
tasks ever write one shard and none needs a lock (zarr 3 has none). Coordinates (one per
swept parameter along ``point``, ``point_hash``, ``n``, ``k``), masks and attributes are
written once, by the driver, before any unit runs; units write only their own shards.
Stores of layout 1 (one chunk per block, no shards) are read and resumed as stores whose work
unit is one block (:meth:`Layout.for_store`).

The variables a point may produce are declared in :data:`VARIABLES`; optional ones (``u_t``,
``q``) are part of a store only when its sweep produces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.core.sync import sync  # runs a coroutine on zarr's own I/O loop

from . import _testhooks
from .engine.params import RENAMED, json_plain
from .engine.status import STORE_FLAGS
from .errors import SpecError
from .ledger import CREATING, INITIALIZED, StoreRef, get_json, put_json
from .lock import LOCK

if TYPE_CHECKING:
    from sweeps.spec import Spec

    from .engine.simulate import Trajectories

#: Version of this layout, recorded in every store.
LAYOUT_VERSION = 2
STATUS_MISSING = -1
#: The status flags of the store (one vocabulary: :mod:`pipeline.engine.status`).
STATUS_FLAGS = STORE_FLAGS


@dataclass(frozen=True)
class Variable:
    """A per-trajectory output: its dims after ``(point, seed)``, dtype, fill and meaning."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    fill: float | int
    long_name: str
    when: tuple[str, ...] = ()
    """Features the sweep must have for the store to hold this variable: ``"snapshots"``
    (it records u(t)), ``"mse"`` (some point uses the MSE loss), ``"sgd"`` (some point is
    online SGD). Empty: always."""


VARIABLES: tuple[Variable, ...] = (
    Variable("u0", ("neuron", "index"), "float64", np.nan, "initial overlaps V^T w(0)"),
    Variable("u", ("neuron", "index"), "float64", np.nan, "final overlaps V^T w"),
    Variable("escape_time", ("neuron",), "float64", np.nan,
             "first t with ||u||_2 >= escape_threshold (NaN: never)"),
    Variable("t_final", ("neuron",), "float64", np.nan,
             "time at which integration stopped (SGD: lr x steps)"),
    Variable("steps", ("neuron",), "int64", -1, "accepted steps (-1: missing or padding)"),
    Variable("status", ("neuron",), "int8", STATUS_MISSING,
             "0 converged, 1 t_max (SGD: max_samples), 2 max_steps, 3 non-finite, "
             "-1 missing or padding"),
    Variable("loss", ("neuron",), "float64", np.nan, "final loss (C = 0)"),
    Variable("escape_samples", ("neuron",), "float64", np.nan,
             "SGD: samples seen when ||u||_2 first reaches escape_threshold (NaN: never, "
             "or not an SGD point)", when=("sgd",)),
    Variable("u_t", ("neuron", "time", "index"), "float64", np.nan,
             "overlaps at the snapshot times", when=("snapshots",)),
    Variable("q", ("neuron", "neuron2"), "float64", np.nan,
             "final student Gram W^T W (MSE loss)", when=("mse",)),
    Variable("loss_t", ("time",), "float64", np.nan,
             "MSE loss at the snapshot times", when=("mse", "snapshots")),
)


def coord_name(param: str) -> str:
    """Name of the store coordinate that holds swept parameter ``param``.

    Parameters whose name is also a data variable get another one (``store_name`` in the
    parameter table): ``loss`` (correlation | mse) is the coordinate ``loss_type``, next to
    the data variable ``loss`` (the final loss value)."""
    return RENAMED.get(param, param)


@dataclass(frozen=True)
class Layout:
    """Shape of a store: what the driver creates and what every work unit must fit into.

    Layout 2 (this version): every variable is stored in shards of ``(unit_points,
    unit_seeds, <whole>...)``, one per work unit (:mod:`pipeline.units`), each cut into inner
    chunks of ``(chunk_points, block_seeds, <whole>...)`` (what a reader decodes at once).
    Layout 1 (stores written before): no shards, one chunk ``(1, block_seeds, ...)`` per
    block, i.e. a work unit of one block (``unit_points = chunk_points = 1``,
    ``unit_seeds = block_seeds``, ``sharded = False``).
    """

    points: int
    seeds: int
    block_seeds: int
    n_max: int
    k_max: int
    times: tuple[float, ...] | None
    variables: tuple[Variable, ...]
    unit_points: int = 1
    unit_seeds: int = 0
    """Seeds per work unit (a multiple of ``block_seeds``; 0: ``block_seeds``)."""
    chunk_points: int = 1
    sharded: bool = False
    planned: frozenset[str] | None = None
    """Ids of the units a run computes, when not all of them: an adaptive sweep
    (:mod:`sweeps.refine`) plans seed blocks round by round and leaves the others missing;
    its units are single blocks (:func:`pipeline.units.plan`), so a unit id is a block id."""

    def __post_init__(self) -> None:
        if not self.unit_seeds:
            object.__setattr__(self, "unit_seeds", self.block_seeds)

    @classmethod
    def for_spec(cls, spec: Spec) -> Layout:
        """The layout of a new store of ``spec`` (work units planned by
        :func:`pipeline.units.plan`)."""
        from . import units

        profiles = spec.points.profiles
        mse = any(pr.point.loss == "mse" for pr in profiles)
        times = None if spec.snapshots is None else tuple(float(t) for t in spec.snapshots)
        sgd = any(pr.point.method == "sgd" for pr in profiles)
        features = {"snapshots": times is not None, "mse": mse, "sgd": sgd}
        base = cls(len(spec.points), spec.seeds, spec.block_seeds, spec.n_max, spec.k_max,
                   times, tuple(v for v in VARIABLES if all(features[f] for f in v.when)))
        unit_points, unit_seeds = units.plan(spec, base.trajectory_nbytes())
        unit_seeds = -(-unit_seeds // spec.block_seeds) * spec.block_seeds  # whole blocks
        planned = (frozenset(b.id for b in spec.blocks)
                   if getattr(spec, "refine", None) is not None else None)
        return replace(base, unit_points=unit_points, unit_seeds=unit_seeds,
                       chunk_points=base._chunk_points(unit_points), sharded=True,
                       planned=planned)

    @classmethod
    def for_store(cls, spec: Spec, attrs: dict[str, Any]) -> Layout:
        """The layout of the existing store of ``spec`` whose root attributes are ``attrs``:
        its recorded unit shape (layout 1 when it records none), never a new plan."""
        fresh = cls.for_spec(spec)
        if "unit_points" not in attrs:  # layout 1: one block per unit, no shards
            return replace(fresh, unit_points=1, unit_seeds=spec.block_seeds, chunk_points=1,
                           sharded=False)
        return replace(fresh, unit_points=int(attrs["unit_points"]),
                       unit_seeds=int(attrs["unit_seeds"]),
                       chunk_points=int(attrs["chunk_points"]), sharded=True)

    def _chunk_points(self, unit_points: int) -> int:
        """Points per inner chunk: a divisor of ``unit_points`` (inner chunks tile a shard)
        whose chunks hold at most :data:`CHUNK_BYTES` of the largest variable."""
        per_point = max(math.prod(self.chunks(v)[1:]) * np.dtype(v.dtype).itemsize
                        for v in self.variables)
        most = max(1, CHUNK_BYTES // per_point)
        return max(c for c in range(1, min(unit_points, most) + 1) if unit_points % c == 0)

    @property
    def sizes(self) -> dict[str, int]:
        """Length of every dimension."""
        out = {"point": self.points, "seed": self.seeds, "neuron": self.n_max,
               "neuron2": self.n_max, "index": self.k_max}
        if self.times is not None:
            out["time"] = len(self.times)
        return out

    def shape(self, var: Variable, seeds: int | None = None, points: int = 1
              ) -> tuple[int, ...]:
        """Shape of ``var`` in the store (or of a region of ``points`` x ``seeds``)."""
        sizes = self.sizes
        lead = (self.points, self.seeds) if seeds is None else (points, seeds)
        return lead + tuple(sizes[d] for d in var.dims)

    def chunks(self, var: Variable) -> tuple[int, ...]:
        """Chunk shape of ``var`` (inner chunks of the shards in layout 2)."""
        return (self.chunk_points, self.block_seeds) + self.shape(var)[2:]

    def shards(self, var: Variable) -> tuple[int, ...] | None:
        """Shard shape of ``var``: one work unit (``None`` in layout 1)."""
        if not self.sharded:
            return None
        return (self.unit_points, self.unit_seeds) + self.shape(var)[2:]

    @property
    def grid(self) -> tuple[int, int]:
        """``(unit_points, unit_seeds)``: the work-unit (and shard) shape along
        ``(point, seed)``."""
        return self.unit_points, self.unit_seeds

    def units(self) -> Iterator[Any]:
        """The store's work units (:class:`pipeline.units.Unit`), in order."""
        from . import units

        tiles = units.tile(self.points, self.seeds, self.unit_points, self.unit_seeds)
        if self.planned is None:
            return tiles
        return (u for u in tiles if u.id in self.planned)

    @property
    def n_units(self) -> int:
        """Number of work units (computed)."""
        from . import units

        if self.planned is not None:
            return len(self.planned)
        return units.count(self.points, self.seeds, self.unit_points, self.unit_seeds)

    def trajectory_nbytes(self) -> int:
        """Bytes of one trajectory's results (one point, one seed, every variable)."""
        return sum(math.prod(self.shape(v, 1)) * np.dtype(v.dtype).itemsize
                   for v in self.variables)

    def block_nbytes(self) -> int:
        """Bytes of one block's results (``block_seeds`` trajectories)."""
        return self.block_seeds * self.trajectory_nbytes()

    def unit_nbytes(self) -> int:
        """Bytes of one work unit's results."""
        return self.unit_points * self.unit_seeds * self.trajectory_nbytes()

    def store_nbytes(self) -> int:
        """Bytes of all data variables, uncompressed (an upper bound on the store's size)."""
        return sum(math.prod(self.shape(v)) * np.dtype(v.dtype).itemsize
                   for v in self.variables)

    def attrs(self) -> dict[str, Any]:
        """What a store records of its layout (root attributes; read by :meth:`for_store`)."""
        if not self.sharded:
            return {}
        return {"unit_points": self.unit_points, "unit_seeds": self.unit_seeds,
                "chunk_points": self.chunk_points, "units": self.n_units}


#: Largest inner chunk (uncompressed) of layout 2: what a reader decodes to get one value.
CHUNK_BYTES = 2**18


def _coordinate(values: Sequence[Any]) -> np.ndarray:
    """One swept parameter's labels as a 1-d array zarr can store.

    Integers stay int64 and numbers float64, so ``sel(d=1000)`` matches exactly; strings
    (activation names) are variable-length strings; tables and matrices become their JSON
    text, a readable and exact label.
    """
    if isinstance(values, np.ndarray) and values.dtype in (np.int64, np.float64):
        return values  # a label column already typed (sweeps.points)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    text = [v if isinstance(v, str) else json.dumps(json_plain(v), sort_keys=True) for v in values]
    return np.asarray(text, dtype=object)


def template(spec: Spec, layout: Layout, attrs: dict[str, Any]) -> xr.Dataset:
    """The store as a lazy dataset: data variables are unevaluated dask arrays (never
    computed), coordinates, masks and attributes are real, except ``point_hash`` and
    ``point_params`` (:func:`write_point_texts` writes them in pieces: as Python strings,
    10^6 points' parameter texts alone are ~400 MB)."""
    data: dict[str, Any] = {}
    for var in layout.variables:
        # One dask chunk per variable: the array is never computed (only its metadata is
        # written), and a graph of one task per block would cost the driver time and memory.
        # The zarr chunks come from the encoding (see `_encoding`).
        data[var.name] = (("point", "seed") + var.dims,
                          da.full(layout.shape(var), var.fill, dtype=var.dtype, chunks=-1),
                          {"long_name": var.long_name})
    data["status"][2].update(flag_values=sorted(STATUS_FLAGS),
                             flag_meanings=" ".join(STATUS_FLAGS[k] for k in
                                                    sorted(STATUS_FLAGS)))
    n, k = spec.points.n, spec.points.k
    data["neuron_mask"] = (("point", "neuron"), np.arange(layout.n_max) < n[:, None],
                           {"long_name": "neuron exists at this point (n < n_max is padded)"})
    data["index_mask"] = (("point", "index"), np.arange(layout.k_max) < k[:, None],
                          {"long_name": "index vector exists at this point (k < k_max is "
                                        "padded)"})
    coords: dict[str, Any] = {
        "seed": np.arange(layout.seeds, dtype=np.int64),
        "neuron": np.arange(layout.n_max, dtype=np.int64),
        "index": np.arange(layout.k_max, dtype=np.int64),
    }
    for name in spec.swept:
        coords[coord_name(name)] = ("point", _coordinate(spec.points.columns[name]))
    for name, values in (("n", n), ("k", k)):
        if name not in spec.swept:
            coords[name] = ("point", values.astype(np.int64))
    if layout.times is not None:
        sgd = any(v.name == "escape_samples" for v in layout.variables)
        coords["time"] = ("time", np.asarray(layout.times, dtype=np.float64),
                          {"units": "samples" if sgd else "time"})
    if any(v.name == "q" for v in layout.variables):
        coords["neuron2"] = np.arange(layout.n_max, dtype=np.int64)
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _encoding(layout: Layout) -> dict[str, dict[str, Any]]:
    enc: dict[str, dict[str, Any]] = {}
    for var in layout.variables:
        enc[var.name] = {"chunks": layout.chunks(var)}
        if layout.sharded:
            enc[var.name]["shards"] = layout.shards(var)
        if np.dtype(var.dtype).kind in "iu":
            # A zarr-level fill value (not xarray's _FillValue, which would turn the integers
            # into floats on reading): unwritten and padded entries read as -1.
            enc[var.name]["fill_value"] = var.fill
    # layout 2: the seed labels in one object (they are read whole anyway)
    enc["seed"] = {"chunks": (layout.seeds if layout.sharded else layout.block_seeds,)}
    return enc


def create(ref: StoreRef, spec: Spec, attrs: dict[str, Any], *, layout: Layout | None = None
           ) -> Layout:
    """Write the store's metadata, coordinates, masks and attributes (no block data).

    Replaces whatever is at ``ref`` (the caller decides whether that is allowed), except the
    run lock (:data:`~pipeline.lock.LOCK`), which belongs to the run that calls this.
    :data:`~pipeline.ledger.CREATING` is written before anything is deleted and removed at
    the end; :data:`~pipeline.ledger.INITIALIZED` is deleted first and written last, with a
    new ``store_id``: a block of an older incarnation of the store (a run replaced by
    ``--overwrite``) recognizes that the store is no longer its own. ``layout`` is
    ``Layout.for_spec(spec)`` when the caller has it already.
    """
    layout = layout if layout is not None else Layout.for_spec(spec)
    # First the marker that says "being created": from here on an interruption leaves a
    # store that every command recognizes as abandoned (not a complete one with holes).
    put_json(ref, CREATING, {"spec_hash": spec.hash, "started": attrs.get("created")})
    fs, root = ref.fs()
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(ref.path(INITIALIZED, root))
    remove(ref, keep=(LOCK, CREATING))
    # The layout version and unit shape travel with the store: a resume uses them.
    attrs = {**attrs, "mimflow_layout": LAYOUT_VERSION if layout.sharded else 1,
             **layout.attrs()}
    ds = template(spec, layout, attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # zarr's v3-spec notices
        # compute=False: the dask-backed data variables are not written at all, everything
        # else (metadata, coordinates, masks) is, once, from this one process. mode="a", not
        # "w": the location is empty but for the lock, which "w" would delete.
        ds.to_zarr(_target(ref), mode="a", compute=False, consolidated=False, zarr_format=3,
                   encoding=_encoding(layout))
        write_point_texts(zarr.open_group(_target(ref), mode="r+", zarr_format=3,
                                          use_consolidated=False), spec)
    put_json(ref, INITIALIZED, {"spec_hash": spec.hash, "layout_version": LAYOUT_VERSION,
                                "store_id": uuid.uuid4().hex})
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(ref.path(CREATING, root))
    return layout


#: Points per chunk of ``point_hash`` and ``point_params`` (one object up to this many; a
#: chunk of parameter texts is ~10 MB as Python strings, and is written whole, once).
TEXT_CHUNK = 20_000


def write_point_texts(group: Any, spec: Spec) -> None:
    """Write the coordinates ``point_hash`` (each point's content hash) and ``point_params``
    (its canonical parameters as JSON text) into the zarr ``group`` of a store, block by
    block, and name them as coordinates of every data variable (xarray reads them as such
    then, as when ``to_zarr`` writes them; the array metadata is what it writes too)."""
    n = len(spec.points)
    hashes = spec.points.hash_bytes
    pieces = {
        "point_hash": ([hashes[lo:lo + TEXT_CHUNK].astype(str)
                        for lo in range(0, n, TEXT_CHUNK)]),
        "point_params": spec.points.canonical_texts(),
    }
    for name, blocks in pieces.items():
        if name in group and group[name].shape == (n,):
            arr = group[name]
        else:
            arr = group.create_array(name, shape=(n,), dtype=str,
                                     chunks=(min(n, TEXT_CHUNK),),
                                     dimension_names=["point"], overwrite=True)
        # Whole chunks at a time: a partial write would read, decode and re-encode the chunk.
        step = arr.chunks[0]
        lo, buffer = 0, []
        for texts in itertools.chain(blocks, [None]):
            if texts is not None:
                buffer.extend(texts)
            while buffer and (len(buffer) >= step or texts is None):
                piece, buffer = buffer[:step], buffer[step:]
                arr[lo:lo + len(piece)] = np.array(piece, dtype=np.dtypes.StringDType())
                lo += len(piece)
    for _, arr in group.arrays():  # the data variables (and masks) xarray wrote
        if "coordinates" in arr.attrs:
            listed = str(arr.attrs["coordinates"]).split()
            missing = [name for name in pieces if name not in listed]
            if missing:
                arr.attrs["coordinates"] = " ".join(sorted([*listed, *missing]))


def remove(ref: StoreRef, *, keep: Sequence[str] = ()) -> None:
    """Delete the store at ``ref`` (nothing if it is absent), except the keys in ``keep``
    (paths relative to the store, e.g. the run lock)."""
    if not keep:
        if ref.is_local:
            shutil.rmtree(ref.url, ignore_errors=True)
            return
        fs, root = ref.fs()
        if fs.exists(root):
            fs.rm(root, recursive=True)
        return
    fs, root = ref.fs()
    root = root.rstrip("/")
    kept = {f"{root}/{k}" for k in keep}
    if ref.is_local:
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if path not in kept:
                    os.unlink(path)
                    _testhooks.after_remove()
            for name in dirnames:
                with contextlib.suppress(OSError):  # not empty: it holds a kept file
                    os.rmdir(os.path.join(dirpath, name))
        return
    try:
        files = [f for f in fs.find(root) if f.rstrip("/") not in kept]
    except FileNotFoundError:
        return
    if files:
        fs.rm(files)


def read_attrs(ref: StoreRef) -> dict[str, Any] | None:
    """The root attributes of the zarr group at ``ref``, or ``None`` if there is none.

    Raises :class:`SpecError` when the location cannot be read at all (no credentials, an
    unreachable endpoint), so the user hears of it before anything starts.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            group = zarr.open_group(_target(ref), mode="r", zarr_format=3)
            return dict(group.attrs)
    except (OSError, zarr.errors.GroupNotFoundError, KeyError, ValueError, TypeError):
        return None  # nothing there, or not a zarr group
    except Exception as e:  # each fsspec backend raises its own types (botocore, gcsfs, ...)
        raise SpecError("store", ref.url, "a location this machine can read",
                        hint=f"reading it failed with {type(e).__name__}: {e}. An object "
                             "store's endpoint and credentials go in --storage-option "
                             "KEY=VALUE or in the environment") from e


def fill_unit(layout: Layout, unit: Any) -> dict[str, np.ndarray]:
    """Empty result arrays of work unit ``unit`` (fill values), by variable name, shaped as
    its region ``(points, seeds, ...)`` of the store."""
    return {v.name: np.full(layout.shape(v, unit.s1 - unit.s0, unit.p1 - unit.p0), v.fill,
                            dtype=v.dtype)
            for v in layout.variables}


def put_point(layout: Layout, data: dict[str, np.ndarray], row: int,
              run: Trajectories | xr.Dataset) -> None:
    """Copy one point's simulation output over the unit's seeds (from
    :func:`pipeline.engine.simulate.compute`, or the dataset of :func:`pipeline.simulate`)
    into row ``row`` of a unit's arrays ``data`` (from :func:`fill_unit`).

    ``neuron``/``index`` stay padded to the sweep maximum; coordinates are the driver's.
    Dtypes are checked, never cast (a float32 cast would break bit-identity).
    """
    if isinstance(run, xr.Dataset):
        out = {name: (var.dims, var.values) for name, var in run.data_vars.items()}
        times = run.variables["time"].values if "time" in run.variables else None
    else:
        out, times = run.data, run.times
    extra = sorted(set(out) - set(data))
    if extra:
        raise ValueError(f"simulate returned {extra}, which this store does not declare: "
                         "add them to pipeline.store.VARIABLES")
    if layout.times is not None:
        if times is None or not np.array_equal(np.asarray(times, dtype=np.float64),
                                               np.asarray(layout.times)):
            raise ValueError("snapshot times of the point differ from the store's")
    for var in layout.variables:
        if var.name not in out:
            if var.when:  # optional: e.g. q of a correlation point in a mixed sweep
                continue
            raise ValueError(f"simulate did not return {var.name!r}, which the store expects")
        dims, values = out[var.name]
        if tuple(dims) != ("seed",) + var.dims:
            raise ValueError(f"{var.name} has dims {tuple(dims)}, the store expects "
                             f"{('seed',) + var.dims}")
        if values.dtype != np.dtype(var.dtype):
            raise TypeError(f"{var.name} is {values.dtype}, the store holds {var.dtype}; "
                            "refusing to cast")
        data[var.name][(row,) + tuple(slice(0, s) for s in values.shape)] = values


def check_unit(layout: Layout, unit: Any) -> None:
    """Refuse a region that is not exactly one work unit of the store: its shard (or, in
    layout 1, its chunk) would be shared with another task, and zarr 3 has no lock to make
    a partial read-modify-write of it safe."""
    P, S = layout.grid
    whole = (unit.p0 % P == 0 and unit.s0 % S == 0 and 0 <= unit.p0 < layout.points
             and 0 <= unit.s0 < layout.seeds and unit.p1 == min(unit.p0 + P, layout.points)
             and unit.s1 == min(unit.s0 + S, layout.seeds))
    if not whole:
        raise ValueError(f"points [{unit.p0}, {unit.p1}) x seeds [{unit.s0}, {unit.s1}) are "
                         f"not one whole work unit of this store ({P} points x {S} seeds, "
                         f"of {layout.points} points x {layout.seeds} seeds): writing them "
                         "would share a shard with another task")


def write_unit(ref: StoreRef, layout: Layout, unit: Any, data: dict[str, np.ndarray]) -> None:
    """Write one work unit's results (from :func:`fill_unit` + :func:`put_point`) into its
    own shards, through zarr directly and all arrays in one asynchronous batch.

    The arrays were defined when the store was created (dimension names, fill values, chunks,
    shards); a unit writes whole shards (each encoded once and put as one object) and cannot
    touch any metadata. Each array's chunking is checked against the layout first.
    """
    check_unit(layout, unit)
    for name, values in data.items():
        if values.shape[:2] != (unit.p1 - unit.p0, unit.s1 - unit.s0):
            raise ValueError(f"{name} has shape {values.shape}, the unit's region is "
                             f"{(unit.p1 - unit.p0, unit.s1 - unit.s0)}")
    target = _target(ref)
    if isinstance(target, str):
        target = zarr.storage.LocalStore(target)
    sync(_write_region(_WholeObjects(target), layout, unit, data))


class _WholeObjects(zarr.storage.WrapperStore):
    """A store through which chunk and shard objects read as absent.

    zarr writes into a shard by reading it, replacing the inner chunks written and putting
    the shard back (a read-modify-write, even when every inner chunk is replaced). A unit
    owns its shards and replaces all of them: what is stored there (an earlier attempt, a
    damaged object) must neither be read nor merged, so the writer sees none and puts the
    whole new shard as one object (atomically: a temporary file renamed, or one put).
    """

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if key.startswith("c/") or "/c/" in key:
            return None
        return await self._store.get(key, prototype, byte_range)


async def _write_region(target: Any, layout: Layout, unit: Any,
                        data: dict[str, np.ndarray]) -> None:
    names = list(data)
    arrays = await asyncio.gather(*(zarr_async.open_array(store=target, path=name, mode="r+",
                                                          zarr_format=3) for name in names))
    expected = {v.name: v for v in layout.variables}
    for name, arr in zip(names, arrays, strict=True):
        var = expected[name]
        if arr.shape != layout.shape(var) or arr.chunks != layout.chunks(var) \
                or arr.shards != layout.shards(var) or arr.dtype != np.dtype(var.dtype):
            raise ValueError(f"the store's {name} is {arr.shape} in chunks {arr.chunks}, "
                             f"shards {arr.shards} of {arr.dtype}, the sweep expects "
                             f"{layout.shape(var)} in chunks {layout.chunks(var)}, shards "
                             f"{layout.shards(var)} of {var.dtype}")
    region = (slice(unit.p0, unit.p1), slice(unit.s0, unit.s1))
    await asyncio.gather(*(arr.setitem(region, data[name])
                           for name, arr in zip(names, arrays, strict=True)))


def consolidate(ref: StoreRef) -> None:
    """Consolidate the metadata (once, from the driver, when no block is writing)."""
    with warnings.catch_warnings():
        # zarr notes that consolidated metadata is not in the v3 spec yet, and that the
        # `_mimflow` bookkeeping folder is not a zarr node; both are expected.
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(_target(ref), zarr_format=3)


def _target(ref: StoreRef) -> Any:
    """What zarr and xarray open: the path itself, or an fsspec-backed zarr store."""
    if ref.is_local:
        return ref.url
    return zarr.storage.FsspecStore.from_url(ref.url, storage_options=ref.storage_options)


def open_store(path: str, storage_options: dict | None = None
               ) -> tuple[StoreRef, dict[str, Any]]:
    """The location of the mimflow store at ``path`` and its root attributes; a location that
    holds no mimflow store, or cannot be read, raises :class:`SpecError` naming it."""
    ref = StoreRef.parse(path, storage_options)
    attrs = read_attrs(ref)
    if attrs is None or "mimflow_layout" not in attrs:
        raise SpecError("store", ref.url, "a mimflow store (created by `mimflow run`)",
                        hint="Nothing is there" if attrs is None else
                        "A zarr group not written by mimflow is there")
    return ref, attrs


#: ``open_results``'s ``chunks`` when not given: xarray's own default (dask, the zarr chunks).
_DEFAULT = object()


def open_results(path: str, *, storage_options: dict | None = None,
                 damaged: str = "raise", warn: Any = None, chunks: Any = _DEFAULT
                 ) -> xr.Dataset:
    """Open a results store as a lazy (dask-backed) dataset.

    The ``point`` dimension is indexed by the parameters that identify a point (attribute
    ``index``: every grid parameter and one key per zip group; a pandas MultiIndex when there
    are several), so ``ds.sel(d=1000, k=2)`` selects one point by its parameters and
    ``ds.sel(d=1000)`` all points with d = 1000. The other swept parameters (say ``gamma``,
    zipped with ``k``) are coordinates along ``point`` too. ``path`` may be a local path or
    an fsspec URL. A location that holds no mimflow store, or cannot be read, raises
    :class:`SpecError` naming it.

    Blocks marked done whose chunks are missing or have another size than they stored (a
    listing; :mod:`pipeline.verify`) would read as fill values or fail in a codec: with
    ``damaged="raise"`` (default) they raise :class:`SpecError` naming them, with
    ``"skip"`` they read as missing (fill values, status -1) and ``warn`` (a callable taking
    text, default :func:`warnings.warn`) is told which; ``"ignore"`` does not look.
    ``chunks`` is xarray's: ``None`` gives lazily indexed arrays without dask, which a
    caller reading many small chunks at once in one process reads far faster.
    """
    if damaged not in ("raise", "skip", "ignore"):
        raise SpecError("damaged", damaged, "'raise', 'skip' or 'ignore'")
    if not isinstance(path, str | os.PathLike):
        raise SpecError("path", path, "a store path (str or os.PathLike) or fsspec URL")
    ref, attrs = open_store(path, storage_options)
    bad: dict[str, str] = {}
    if damaged != "ignore":
        from .verify import readable_damage

        bad = readable_damage(ref, attrs, skip=damaged == "skip", warn=warn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        # a store whose run was interrupted is not consolidated yet: reading it is fine
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated",
                                category=RuntimeWarning)
        ds = xr.open_zarr(_target(ref), consolidated=None, zarr_format=3,
                          **({} if chunks is _DEFAULT else {"chunks": chunks}))
    # Labels along `point` are small: load them, so that selecting never reads more arrays.
    labels = [name for name, c in ds.coords.items() if c.dims == ("point",)]
    ds = ds.assign_coords({name: ds[name].load() for name in labels})
    if bad:
        ds = _mask_units(ds, bad, grid_of(attrs))
    index = json.loads(ds.attrs.get("index", "[]"))
    if index:
        ds = ds.set_xindex(index)
    return ds


def grid_of(attrs: dict[str, Any]) -> tuple[int, int]:
    """``(unit_points, unit_seeds)`` of the store whose root attributes are ``attrs``: the
    rectangle of ``(point, seed)`` one ledger record and one stored object cover (layout 1:
    one block, ``(1, block_seeds)``)."""
    if "unit_points" in attrs:
        return int(attrs["unit_points"]), int(attrs["unit_seeds"])
    return 1, int(attrs["block_seeds"])


def _mask_units(ds: xr.Dataset, unit_ids: dict[str, str], grid: tuple[int, int]
                ) -> xr.Dataset:
    """``ds`` with the data of ``unit_ids`` replaced by fill values (as if never computed)."""
    from sweeps.spec import parse_block_id

    bad = np.zeros((ds.sizes["point"], ds.sizes["seed"]), dtype=bool)
    for unit_id in unit_ids:
        point, start = parse_block_id(unit_id)
        bad[point:point + grid[0], start:start + grid[1]] = True
    keep = xr.DataArray(~bad, dims=("point", "seed"))
    fills = {v.name: v.fill for v in VARIABLES}
    return ds.assign({name: ds[name].where(keep, fills[name]).astype(ds[name].dtype)
                      for name in ds.data_vars if name in fills})


def extend_points(ref: StoreRef, spec: Spec, coords: dict[str, Sequence[Any]] | None = None
                  ) -> bool:
    """Grow the store at ``ref`` along ``point`` to the points of ``spec`` (an adaptive
    sweep's later round: :mod:`sweeps.refine`); returns whether anything changed. Call it
    from a driver holding the store's run lock.

    The store's points must be the first points of ``spec`` (same content hashes, same
    order), or :class:`SpecError` is raised and nothing is touched. Every ``(point, ...)``
    array is resized (metadata only: no stored shard changes; the new points read as fill
    values, status -1), the coordinates and masks along ``point`` are written for all
    points, ``coords`` (name -> one value per point, e.g. the round that added each point)
    become coordinates along ``point``, and the spec hash in the attributes and in
    ``initialized.json`` becomes ``spec.hash``, last, so that an interrupted extension is
    done again whole by calling this again (it is idempotent).

    ``run_sweep(spec, store)`` then resumes the store: the new points fall into new work
    units, i.e. new shards. The unit shape never changes; a last unit that held fewer points
    than a unit holds (the old edge) now holds more, so its ledger record no longer covers it
    (:func:`ledger.covers`) and it is computed again whole - the old points in it to the same
    bytes.
    """
    coords = dict(coords or {})
    attrs = read_attrs(ref) or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # `_mimflow` is no zarr node
        # Not the consolidated metadata: it is stale while an extension is under way.
        group = zarr.open_group(_target(ref), mode="r+", zarr_format=3,
                                use_consolidated=False)
        return _extend(ref, spec, group, coords, attrs)


def _extend(ref: StoreRef, spec: Spec, group: Any, coords: dict[str, Sequence[Any]],
            attrs: dict[str, Any]) -> bool:
    old, new = int(attrs.get("points", 0)), len(spec.points)
    hashes = [str(h) for h in group["point_hash"][:old]]
    if new < old or hashes != spec.points.hashes(0, old):
        raise SpecError("store", ref.url, f"a store whose {old} points are the first points "
                        f"of {spec.name!r}, in the same order (points may only be appended)",
                        hint="its points differ; pass --overwrite to replace it or --store "
                        "to write elsewhere")
    init = get_json(ref, INITIALIZED) or {}
    current = all(name in group and group[name].shape == (new,)
                  and [_plain(v) for v in group[name][:]] == list(values)
                  for name, values in coords.items())
    if attrs.get("spec_hash") == spec.hash == init.get("spec_hash") and old == new and current:
        return False
    layout = replace(Layout.for_store(spec, attrs), points=new)
    arrays = dict(group.arrays())
    for arr in arrays.values():
        dims = arr.metadata.dimension_names or ()
        if dims[:1] == ("point",) and arr.shape[0] != new:
            arr.resize((new, *arr.shape[1:]))
    full = template(spec, layout, {})
    data = {v.name for v in layout.variables}
    for name, var in full.variables.items():
        if name not in data and var.dims[:1] == ("point",):
            arrays[name][...] = _writable(np.asarray(var.values))
    write_point_texts(group, spec)
    for name, values in coords.items():
        values = _writable(_coordinate(list(values)))
        group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                           dimension_names=["point"], overwrite=True)[...] = values
    for name in data:  # xarray reads an array as a coordinate when a variable names it
        listed = str(group[name].attrs.get("coordinates", "")).split()
        extra = [c for c in coords if c not in listed]
        if extra:
            group[name].attrs["coordinates"] = " ".join(listed + extra)
    group.attrs.update({"spec_text": spec.text, "spec_file": spec.source, "points": new,
                        "blocks": spec.n_blocks, **layout.attrs(), "spec_hash": spec.hash})
    consolidate(ref)
    put_json(ref, INITIALIZED, {**init, "spec_hash": spec.hash})
    return True


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _writable(values: np.ndarray) -> np.ndarray:
    """Object arrays of text as numpy strings (what zarr's string arrays take)."""
    return values.astype(np.dtypes.StringDType()) if values.dtype == object else values

