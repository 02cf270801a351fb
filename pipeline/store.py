"""The results store: a zarr v3 group written through xarray (docs/design.md §3).

Layout
------
Dimensions ``point, seed, neuron, index`` (+ ``time`` with snapshots, ``neuron2`` for the MSE
Gram ``q``). ``n`` and ``k`` are padded to their sweep maximum: padded float entries are NaN,
padded integer entries -1, and ``neuron_mask`` / ``index_mask`` say what is real.

Every data variable is chunked ``(1, block_seeds, <whole>...)``, so a block (one point, one
seed range) covers exactly one chunk of every variable it writes: blocks never share a chunk
and need no lock (zarr 3 has none). Coordinates (one per swept parameter along ``point``,
``point_hash``, ``n``, ``k``), masks and attributes are written once, by the driver, before
any block runs; blocks write only their own region of the ``(point, seed, ...)`` variables.

The variables a point may produce are declared in :data:`VARIABLES`; optional ones (``u_t``,
``q``) are part of a store only when its sweep produces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
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

#: Version of this layout, recorded in every store.
LAYOUT_VERSION = 1
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
    """Shape of a store: what the driver creates and what every block must fit into."""

    points: int
    seeds: int
    block_seeds: int
    n_max: int
    k_max: int
    times: tuple[float, ...] | None
    variables: tuple[Variable, ...]

    @classmethod
    def for_spec(cls, spec: Spec) -> Layout:
        """The layout of ``spec``'s store."""
        mse = any(p.point.loss == "mse" for p in spec.points)
        times = None if spec.snapshots is None else tuple(float(t) for t in spec.snapshots)
        sgd = any(p.point.method == "sgd" for p in spec.points)
        features = {"snapshots": times is not None, "mse": mse, "sgd": sgd}
        return cls(len(spec.points), spec.seeds, spec.block_seeds, spec.n_max, spec.k_max,
                   times, tuple(v for v in VARIABLES if all(features[f] for f in v.when)))

    @property
    def sizes(self) -> dict[str, int]:
        """Length of every dimension."""
        out = {"point": self.points, "seed": self.seeds, "neuron": self.n_max,
               "neuron2": self.n_max, "index": self.k_max}
        if self.times is not None:
            out["time"] = len(self.times)
        return out

    def shape(self, var: Variable, seeds: int | None = None) -> tuple[int, ...]:
        """Shape of ``var`` in the store (or of one block's region with ``seeds`` seeds)."""
        sizes = self.sizes
        lead = (self.points, self.seeds) if seeds is None else (1, seeds)
        return lead + tuple(sizes[d] for d in var.dims)

    def chunks(self, var: Variable) -> tuple[int, ...]:
        """Chunk shape of ``var``: one point, one block of seeds, whole trailing axes."""
        return (1, self.block_seeds) + self.shape(var)[2:]

    def block_nbytes(self) -> int:
        """Bytes of one block's results (one chunk of every variable)."""
        return sum(math.prod(self.chunks(v)) * np.dtype(v.dtype).itemsize
                   for v in self.variables)

    def store_nbytes(self) -> int:
        """Bytes of all data variables, uncompressed (an upper bound on the store's size)."""
        return sum(math.prod(self.shape(v)) * np.dtype(v.dtype).itemsize
                   for v in self.variables)


def _coordinate(values: Sequence[Any]) -> np.ndarray:
    """One swept parameter's labels as a 1-d array zarr can store.

    Integers stay int64 and numbers float64, so ``sel(d=1000)`` matches exactly; strings
    (activation names) are variable-length strings; tables and matrices become their JSON
    text, a readable and exact label.
    """
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    text = [v if isinstance(v, str) else json.dumps(json_plain(v), sort_keys=True) for v in values]
    return np.asarray(text, dtype=object)


def template(spec: Spec, layout: Layout, attrs: dict[str, Any]) -> xr.Dataset:
    """The store as a lazy dataset: data variables are unevaluated dask arrays (never
    computed), coordinates, masks and attributes are real."""
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
    n = np.array([p.point.n for p in spec.points])
    k = np.array([p.point.k for p in spec.points])
    data["neuron_mask"] = (("point", "neuron"), np.arange(layout.n_max) < n[:, None],
                           {"long_name": "neuron exists at this point (n < n_max is padded)"})
    data["index_mask"] = (("point", "index"), np.arange(layout.k_max) < k[:, None],
                          {"long_name": "index vector exists at this point (k < k_max is "
                                        "padded)"})
    coords: dict[str, Any] = {
        "seed": np.arange(layout.seeds, dtype=np.int64),
        "neuron": np.arange(layout.n_max, dtype=np.int64),
        "index": np.arange(layout.k_max, dtype=np.int64),
        "point_hash": ("point", np.array([p.point.hash for p in spec.points], dtype=object)),
        "point_params": ("point", np.array([json.dumps(json_plain(p.point.canonical()),
                                                       sort_keys=True)
                                            for p in spec.points], dtype=object)),
    }
    for name in spec.swept:
        coords[coord_name(name)] = ("point",
                                    _coordinate([p.labels[name] for p in spec.points]))
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
        if np.dtype(var.dtype).kind in "iu":
            # A zarr-level fill value (not xarray's _FillValue, which would turn the integers
            # into floats on reading): unwritten and padded entries read as -1.
            enc[var.name]["fill_value"] = var.fill
    enc["seed"] = {"chunks": (layout.block_seeds,)}
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
    ds = template(spec, layout, attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # zarr's v3-spec notices
        # compute=False: the dask-backed data variables are not written at all, everything
        # else (metadata, coordinates, masks) is, once, from this one process. mode="a", not
        # "w": the location is empty but for the lock, which "w" would delete.
        ds.to_zarr(_target(ref), mode="a", compute=False, consolidated=False, zarr_format=3,
                   encoding=_encoding(layout))
    put_json(ref, INITIALIZED, {"spec_hash": spec.hash, "layout_version": LAYOUT_VERSION,
                                "store_id": uuid.uuid4().hex})
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(ref.path(CREATING, root))
    return layout


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


def block_dataset(ds: xr.Dataset, layout: Layout) -> xr.Dataset:
    """One block's simulation output shaped as its store region ``(1, seeds, ...)``.

    Pads ``neuron``/``index`` to the sweep maximum and drops every coordinate: a region write
    must carry only variables that span the region's dimensions, and the coordinates are the
    driver's. Dtypes are checked, never cast (a float32 cast would break bit-identity).
    """
    expected = {v.name for v in layout.variables}
    extra = sorted(set(ds.data_vars) - expected)
    if extra:
        raise ValueError(f"simulate returned {extra}, which this store does not declare: "
                         "add them to pipeline.store.VARIABLES")
    if layout.times is not None:
        times = np.asarray(ds["time"].values, dtype=np.float64)
        if not np.array_equal(times, np.asarray(layout.times)):
            raise ValueError("snapshot times of the block differ from the store's")
    seeds = ds.sizes["seed"]
    out = {}
    for var in layout.variables:
        padded = np.full(layout.shape(var, seeds), var.fill, dtype=var.dtype)
        out[var.name] = (("point", "seed") + var.dims, padded)
        if var.name not in ds:
            if var.when:  # optional: e.g. q of a correlation point in a mixed sweep
                continue
            raise ValueError(f"simulate did not return {var.name!r}, which the store expects")
        arr = ds[var.name]
        if arr.dims != ("seed",) + var.dims:
            raise ValueError(f"{var.name} has dims {arr.dims}, the store expects "
                             f"{('seed',) + var.dims}")
        if arr.dtype != np.dtype(var.dtype):
            raise TypeError(f"{var.name} is {arr.dtype}, the store holds {var.dtype}; "
                            "refusing to cast")
        padded[(0,) + tuple(slice(0, s) for s in arr.shape)] = arr.values
    return xr.Dataset(out)


def check_region(layout: Layout, start: int, stop: int) -> None:
    """Refuse a seed range that is not exactly one chunk (a partial chunk write is a
    read-modify-write race with the block that owns the rest of the chunk)."""
    size = layout.block_seeds
    if start % size or stop != min(start + size, layout.seeds) or start >= layout.seeds:
        raise ValueError(f"seeds [{start}, {stop}) are not one whole chunk of {size} seeds")


def write_block(ref: StoreRef, layout: Layout, point_index: int, start: int, stop: int,
                ds: xr.Dataset) -> None:
    """Write one block's output (from :func:`pipeline.simulate`) into its own region.

    The arrays were defined by xarray when the store was created (dimension names, fill
    values, chunks); a block only fills its chunks, through zarr directly and all arrays in
    one asynchronous batch. That costs a third of an xarray region write (which re-reads the
    whole group's metadata per call), and a worker cannot touch any metadata. Each array's
    chunking is checked against the layout before anything is written.
    """
    check_region(layout, start, stop)
    if not 0 <= point_index < layout.points:
        raise ValueError(f"point {point_index} is outside the store's {layout.points} points")
    if ds.sizes.get("seed") != stop - start:
        raise ValueError(f"block has {ds.sizes.get('seed')} seeds, its region {stop - start}")
    block = block_dataset(ds, layout)
    data = {name: block[name].values for name in block.data_vars}
    sync(_write_region(_target(ref), layout, point_index, start, stop, data))


async def _write_region(target: Any, layout: Layout, point_index: int, start: int, stop: int,
                        data: dict[str, np.ndarray]) -> None:
    names = list(data)
    arrays = await asyncio.gather(*(zarr_async.open_array(store=target, path=name, mode="r+",
                                                          zarr_format=3) for name in names))
    expected = {v.name: v for v in layout.variables}
    for name, arr in zip(names, arrays, strict=True):
        var = expected[name]
        if arr.shape != layout.shape(var) or arr.chunks != layout.chunks(var) \
                or arr.dtype != np.dtype(var.dtype):
            raise ValueError(f"the store's {name} is {arr.shape} in chunks {arr.chunks} of "
                             f"{arr.dtype}, the sweep expects {layout.shape(var)} in chunks "
                             f"{layout.chunks(var)} of {var.dtype}")
    region = (slice(point_index, point_index + 1), slice(start, stop))
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
        ds = _mask_blocks(ds, bad, int(attrs["block_seeds"]))
    index = json.loads(ds.attrs.get("index", "[]"))
    if index:
        ds = ds.set_xindex(index)
    return ds


def _mask_blocks(ds: xr.Dataset, block_ids: dict[str, str], block_seeds: int) -> xr.Dataset:
    """``ds`` with the data of ``block_ids`` replaced by fill values (as if never computed)."""
    from sweeps.spec import parse_block_id

    bad = np.zeros((ds.sizes["point"], ds.sizes["seed"]), dtype=bool)
    for block_id in block_ids:
        point, start = parse_block_id(block_id)
        bad[point, start:start + block_seeds] = True
    keep = xr.DataArray(~bad, dims=("point", "seed"))
    fills = {v.name: v.fill for v in VARIABLES}
    return ds.assign({name: ds[name].where(keep, fills[name]).astype(ds[name].dtype)
                      for name in ds.data_vars if name in fills})


def extend_points(ref: StoreRef, spec: Spec, coords: dict[str, Sequence[Any]] | None = None
                  ) -> bool:
    """Grow the store at ``ref`` along ``point`` to the points of ``spec`` (an adaptive
    sweep's later round: :mod:`sweeps.refine`); returns whether anything changed.

    The store's points must be the first points of ``spec`` (same content hashes), or
    :class:`SpecError` is raised and nothing is touched. Every ``(point, ...)`` array is
    resized (the new points' data chunks stay unwritten: fill values, status -1), the
    coordinates and masks along ``point`` are written for all points, ``coords`` (name ->
    one value per point, e.g. the round that added each point) become coordinates along
    ``point``, and the spec hash in the attributes and in ``initialized.json`` becomes
    ``spec.hash``, last, so that an interrupted extension is done again whole by calling this
    again (it is idempotent).
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
    if new < old or hashes != [p.point.hash for p in spec.points[:old]]:
        raise SpecError("store", ref.url, f"a store whose {old} points are the first points "
                        f"of {spec.name!r} after refinement", hint="its points differ; pass "
                        "--overwrite to replace it or --store to write elsewhere")
    init = get_json(ref, INITIALIZED) or {}
    current = all(name in group and group[name].shape == (new,)
                  and [_plain(v) for v in group[name][:]] == list(values)
                  for name, values in coords.items())
    if attrs.get("spec_hash") == spec.hash == init.get("spec_hash") and old == new and current:
        return False
    layout = Layout.for_spec(spec)
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
    for name, values in coords.items():
        values = _writable(_coordinate(list(values)))
        group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                           dimension_names=["point"], overwrite=True)[...] = values
    for name in data:  # xarray reads an array as a coordinate when a variable names it
        listed = str(group[name].attrs.get("coordinates", "")).split()
        extra = [c for c in coords if c not in listed]
        if extra:
            group[name].attrs["coordinates"] = " ".join(listed + extra)
    group.attrs.update({"points": new, "blocks": len(spec.blocks), "spec_hash": spec.hash})
    consolidate(ref)
    put_json(ref, INITIALIZED, {**init, "spec_hash": spec.hash})
    return True


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _writable(values: np.ndarray) -> np.ndarray:
    """Object arrays of text as numpy strings (what zarr's string arrays take)."""
    return values.astype(np.dtypes.StringDType()) if values.dtype == object else values

