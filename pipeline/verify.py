"""Block integrity: what each block stored, checked cheaply on every run and fully on demand.

A block's completion marker (:mod:`pipeline.ledger`) records, for every variable it wrote,
the stored chunk's size and SHA-256 (``"chunks": {"u": [size, digest], "q": null}``; null:
the chunk held only fill values, and zarr stores nothing for it). The digest is of the bytes
on disk, read back by the worker right after writing, so it catches a chunk that was
deleted (zarr would read fill values: NaN escape times that look like "never escaped"),
truncated, or replaced by a valid chunk of other numbers. It lives in the ledger, not in the
chunk (zarr's crc32c codec), because a codec checksum travels with the chunk and says
nothing when the chunk is gone, and because the stored bytes stay those of earlier versions.

Two checks use it:

* :func:`quick_check`: one listing per variable, sizes only. ``run`` uses it to recompute
  blocks whose chunks are gone or have another size; ``status``, ``query``, ``analyze`` and
  ``figures`` to refuse (or skip) them instead of reading fill values or a codec error.
* :func:`full_check`: reads every chunk of every done block and compares digests
  (``mimflow verify``).

Markers written before digests existed have no ``"chunks"``: for them the quick check only
asks that the chunks a computed block always stores (``u0``, ``status``, ``steps``) exist,
and the full check that every chunk decodes and that the block's status is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sweeps import spec as sweep_spec

from . import ledger
from .errors import DamagedFile
from .ledger import StoreRef

#: Variables whose chunk a computed block always stores (never all fill values): real
#: neurons have finite initial overlaps, a status >= 0 and a step count >= 0.
ALWAYS_STORED = ("u0", "status", "steps")
#: Suffixes of temporary files a killed writer leaves (zarr's local store writes
#: ``<chunk>.<hex>.partial`` then renames it; the ledger writes ``.<hex>.tmp``).
TEMPORARY_SUFFIXES = (".partial", ".tmp")


def chunk_key(name: str, ndim: int, point_index: int, start: int, grid: tuple[int, int]
              ) -> str:
    """Key (relative to the store) of the stored object of variable ``name`` (``ndim``
    dimensions) that holds the unit starting at point ``point_index`` and seed ``start``: its
    shard (layout 2), or its block's chunk (layout 1); ``grid`` is ``(unit_points,
    unit_seeds)`` (:func:`pipeline.store.grid_of`). zarr v3's default chunk key encoding,
    with whole trailing axes (index 0)."""
    parts = [str(point_index // grid[0]), str(start // grid[1])] + ["0"] * (ndim - 2)
    return f"{name}/c/" + "/".join(parts)


def _ndims() -> dict[str, int]:
    from .store import VARIABLES

    return {v.name: 2 + len(v.dims) for v in VARIABLES}


def digest(data: bytes) -> str:
    """The digest recorded for a chunk's stored bytes."""
    return hashlib.sha256(data).hexdigest()


def stored_chunks(ref: StoreRef, names: Iterable[str], point_index: int, start: int,
                  grid: tuple[int, int]) -> dict[str, list | None]:
    """What the unit just stored, per variable: ``[size, sha256]`` of its shard (chunk in
    layout 1), or ``None`` when zarr stored nothing (only fill values). Runs on the worker
    after the write."""
    fs, root = ref.fs()
    ndims = _ndims()
    paths = {name: ref.path(chunk_key(name, ndims[name], point_index, start, grid), root)
             for name in names}
    contents = fs.cat(list(paths.values()), on_error="return")
    if not isinstance(contents, dict):
        contents = {next(iter(paths.values())): contents}
    out: dict[str, list | None] = {}
    for name, path in paths.items():
        raw = contents.get(path)
        if isinstance(raw, FileNotFoundError) or raw is None:
            out[name] = None
        elif isinstance(raw, BaseException):
            raise raw
        else:
            out[name] = [len(raw), digest(raw)]
    return out


def _scan_sizes(root: str, folder: str, out: dict[str, int]) -> None:
    """Add ``key -> size`` of every file under ``folder`` (keys relative to ``root``)."""
    prefix = len(root) + 1
    stack = [folder]
    while stack:  # plain strings, no pathlib: a store's folders number in the 10^5
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif not entry.name.endswith(TEMPORARY_SUFFIXES):
                    out[entry.path[prefix:]] = entry.stat().st_size


def chunk_sizes(ref: StoreRef, names: Iterable[str]) -> dict[str, int]:
    """Size of every stored chunk of the variables ``names``, by key (one listing each)."""
    fs, root = ref.fs()
    root = root.rstrip("/")
    out: dict[str, int] = {}
    if ref.is_local:
        # os.scandir, not fsspec's find: the same listing ~10x faster on a local disk (a
        # store of 10^4 units has 7 10^4 files, listed before every run and round).
        for name in names:
            _scan_sizes(root, os.path.join(root, name, "c"), out)
        return out
    for name in names:
        folder = f"{root}/{name}/c"
        fs.invalidate_cache(folder)
        try:
            found = fs.find(folder, detail=True)
        except FileNotFoundError:
            continue
        for path, info in found.items():
            key = path[len(root) + 1:] if path.startswith(root + "/") else path
            if not key.endswith(TEMPORARY_SUFFIXES):
                out[key] = int(info.get("size") or 0)
    return out


def quick_check(ref: StoreRef, names: Iterable[str], records: dict[str, dict[str, Any]],
                grid: tuple[int, int]) -> dict[str, str]:
    """Done units (``records``: unit id -> marker) whose objects are not what they stored,
    by a listing of sizes: unit id -> what is wrong. ``names``: the store's data variables;
    ``grid``: ``(unit_points, unit_seeds)``."""
    names = list(names)
    sizes = chunk_sizes(ref, names)
    ndims = _ndims()
    out: dict[str, str] = {}
    for block_id, record in records.items():
        point, start = sweep_spec.parse_block_id(block_id)
        problems = []
        chunks = record.get("chunks")
        if isinstance(chunks, dict):
            for name, expected in sorted(chunks.items()):
                if name not in ndims:
                    continue
                key = chunk_key(name, ndims[name], point, start, grid)
                size = sizes.get(key)
                if expected is None:
                    if size is not None:
                        problems.append(f"{key} exists, but the block stored no chunk there")
                elif size is None:
                    problems.append(f"{key} is missing")
                elif size != expected[0]:
                    problems.append(f"{key} has {size} bytes, the block stored {expected[0]}")
        else:  # a marker from before digests: only presence can be judged
            for name in ALWAYS_STORED:
                if name in names:
                    key = chunk_key(name, ndims[name], point, start, grid)
                    if key not in sizes:
                        problems.append(f"{key} is missing")
        if problems:
            out[block_id] = "; ".join(problems)
    return out


def full_check(ref: StoreRef, names: Iterable[str], records: dict[str, dict[str, Any]],
               grid: tuple[int, int], seeds: int) -> dict[str, str]:
    """Done blocks whose stored chunks differ from what they stored (digests), or, for
    markers without digests, do not decode or hold no status: block id -> what is wrong."""
    names = list(names)
    out = quick_check(ref, names, records, grid)
    fs, root = ref.fs()
    ndims = _ndims()
    legacy = []
    for block_id, record in sorted(records.items()):
        if block_id in out:
            continue
        chunks = record.get("chunks")
        if not isinstance(chunks, dict):
            legacy.append(block_id)
            continue
        point, start = sweep_spec.parse_block_id(block_id)
        keys = {name: chunk_key(name, ndims[name], point, start, grid)
                for name, expected in chunks.items() if expected is not None and name in ndims}
        paths = {ref.path(key, root): (name, key) for name, key in keys.items()}
        contents = fs.cat(list(paths), on_error="return") if paths else {}
        if not isinstance(contents, dict):
            contents = {next(iter(paths)): contents}
        problems = []
        for path, (name, key) in sorted(paths.items(), key=lambda item: item[1]):
            raw = contents.get(path)
            if raw is None or isinstance(raw, BaseException):
                problems.append(f"{key} cannot be read ({raw!r})")
            elif digest(raw) != chunks[name][1]:
                problems.append(f"{key} holds other bytes than the block stored "
                                "(checksum mismatch)")
        if problems:
            out[block_id] = "; ".join(problems)
    if legacy:
        out.update(_decode_check(ref, names, legacy, grid, seeds))
    return out


def _decode_check(ref: StoreRef, names: list[str], block_ids: list[str],
                  grid: tuple[int, int], seeds: int) -> dict[str, str]:
    import zarr

    from .store import _target

    out: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        group = zarr.open_group(_target(ref), mode="r", zarr_format=3)
        arrays = {name: group[name] for name in names}
        for block_id in block_ids:
            point, start = sweep_spec.parse_block_id(block_id)
            stop = min(start + grid[1], seeds)
            problems = []
            for name, arr in arrays.items():
                try:
                    values = arr[point:point + grid[0], start:stop]
                except Exception as e:  # a codec error: the chunk is damaged
                    problems.append(f"{name} cannot be decoded ({type(e).__name__}: {e})")
                    continue
                if name == "status" and np.any(values[..., 0] < 0):
                    problems.append("status is missing (fill values where the block's "
                                    "first neuron must have a status)")
            if problems:
                out[block_id] = "; ".join(problems)
    return out


def temporaries(ref: StoreRef, older_than: float | None = None) -> list[str]:
    """Temporary files that killed writers left in a local store (``*.partial`` chunks,
    ``.*.tmp`` ledger records), modified before ``older_than`` (a ``time.time()``; ``None``:
    any). Object stores have none: a put is atomic there."""
    if not ref.is_local or not os.path.isdir(ref.url):
        return []
    out = []
    for dirpath, _, filenames in os.walk(ref.url):
        for name in filenames:
            if not name.endswith(TEMPORARY_SUFFIXES):
                continue
            if name.endswith(".tmp") and not name.startswith("."):
                continue  # not one of ours
            path = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                if older_than is None or os.stat(path).st_mtime < older_than:
                    out.append(path)
    return sorted(out)


def remove_temporaries(ref: StoreRef, older_than: float | None = None) -> list[str]:
    """Delete what :func:`temporaries` lists; returns the paths removed. Only leftovers of
    writers that are gone are removed: a file younger than ``older_than`` may be one that a
    live writer is about to rename."""
    removed = []
    for path in temporaries(ref, older_than):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# A store's health, as status, verify and the reading commands see it.


@dataclass
class Health:
    """What a look at a store found."""

    url: str
    attrs: dict[str, Any]
    block_ids: list[str]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Healthy completed blocks (their markers)."""
    damaged: dict[str, str] = field(default_factory=dict)
    """Blocks marked done whose data is not what they stored: id -> what is wrong."""
    bad_markers: dict[str, str] = field(default_factory=dict)
    """Blocks whose ledger marker is damaged: id -> the path and the problem."""
    missing: list[str] = field(default_factory=list)
    """Blocks never completed (no marker)."""
    temporaries: list[str] = field(default_factory=list)
    initialized: str | None = None
    """What is wrong with ``_mimflow/initialized.json`` (``None``: nothing)."""
    full: bool = False
    _labels: list[str] | None = field(default=None, repr=False)

    @property
    def healthy(self) -> bool:
        """No damaged block, marker or bookkeeping file (missing blocks may remain)."""
        return not (self.damaged or self.bad_markers or self.initialized)

    def describe(self, block_id: str) -> str:
        """``block 000001-0000000004 (point d=1000, k=2; seeds 4..7)`` (layout 1), or
        ``unit 000000-0000000000 (points d=100 .. d=1000; seeds 0..9)`` (layout 2)."""
        from .store import grid_of

        return describe_unit(self.attrs, block_id, grid_of(self.attrs), self.labels)

    def labels(self, point: int) -> str:
        """Point ``point``'s swept parameters as text."""
        if self._labels is None:
            self._labels = point_labels(self.attrs)
        return self._labels[point] if 0 <= point < len(self._labels) else f"#{point}"

    def problems(self, limit: int | None = None) -> list[str]:
        """One line per damaged block, damaged marker and bookkeeping problem."""
        lines = []
        if self.initialized:
            lines.append(self.initialized)
        for block_id, why in sorted(self.damaged.items()):
            lines.append(f"{self.describe(block_id)}: {why}")
        for block_id, why in sorted(self.bad_markers.items()):
            lines.append(f"{self.describe(block_id)}: ledger marker {why}")
        if limit is not None and len(lines) > limit:
            lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
        return lines


def describe_unit(attrs: dict[str, Any], unit_id: str, grid: tuple[int, int],
                  label: Any) -> str:
    """A unit (layout 1: a block) by its points' parameters (``label(point)``) and seeds."""
    point, start = sweep_spec.parse_block_id(unit_id)
    stop = min(start + grid[1], int(attrs["seeds"]))
    if "unit_points" not in attrs:
        return f"block {unit_id} (point {label(point)}; seeds {start}..{stop - 1})"
    last = min(point + grid[0], int(attrs["points"])) - 1
    where = f"point {label(point)}" if last == point else \
        f"points #{point}..#{last}: {label(point)} .. {label(last)}"
    return f"unit {unit_id} ({where}; seeds {start}..{stop - 1})"


def point_labels(attrs: dict[str, Any]) -> list[str]:
    """Each point's swept parameters as text (``d=1000, k=2``), from the spec recorded in
    the store's attributes ``attrs``; ``#3`` when it no longer parses."""
    try:
        from sweeps.spec import parse_spec

        spec = parse_spec(attrs["spec_text"], source=str(attrs.get("spec_file")))
        return [spec.describe_point(i) for i in range(len(spec.points))]
    except Exception:  # a store from an older version whose spec no longer parses
        return [f"#{i}" for i in range(int(attrs.get("points", 0)))]


def data_names(ref: StoreRef) -> list[str]:
    """The per-trajectory data variables this store holds."""
    from .store import VARIABLES

    fs, root = ref.fs()
    return [v.name for v in VARIABLES if fs.exists(ref.path(f"{v.name}/zarr.json", root))]


def inspect(ref: StoreRef, attrs: dict[str, Any], *, full: bool = False,
            leftovers: bool = True) -> Health:
    """Look at the store at ``ref`` (root attributes ``attrs``): ledger, chunks (sizes; with
    ``full``, digests and decoding), ``initialized.json`` and, with ``leftovers``, temporary
    files (one more walk of a local store)."""
    from .store import grid_of
    from .units import tile

    points, seeds = int(attrs["points"]), int(attrs["seeds"])
    grid = grid_of(attrs)
    units = {u.id: u for u in tile(points, seeds, *grid)}
    ids = list(units)
    health = Health(ref.url, attrs, ids, full=full)
    try:
        init = ledger.read_json(ref, ledger.INITIALIZED)
    except DamagedFile as e:
        health.initialized = str(e)
    else:
        if _exists(ref, ledger.CREATING):
            health.initialized = (f"{ref.url} was being created when its run was "
                                  "interrupted: re-run the spec to create it again")
        elif init is None:
            health.initialized = (f"{ref.path(ledger.INITIALIZED)} is missing (a store "
                                  "copied without its _mimflow folder, or damaged)")
        elif init.get("spec_hash") != attrs.get("spec_hash"):
            health.initialized = (f"{ref.path(ledger.INITIALIZED)} belongs to spec hash "
                                  f"{init.get('spec_hash')!r}, the store's attributes to "
                                  f"{attrs.get('spec_hash')!r}")
    markers = ledger.read_markers(ref)
    records = {i: r for i, r in markers.records.items() if i in units
               and ledger.covers(r, units[i])}
    health.bad_markers = {i: why for i, why in markers.damaged.items() if i in units}
    names = data_names(ref)
    check = full_check(ref, names, records, grid, seeds) if full else \
        quick_check(ref, names, records, grid)
    health.damaged = check
    health.done = {i: r for i, r in records.items() if i not in check}
    health.missing = [i for i in ids if i not in records and i not in health.bad_markers]
    health.temporaries = temporaries(ref) if leftovers else []
    return health


def _exists(ref: StoreRef, key: str) -> bool:
    fs, root = ref.fs()
    return fs.exists(ref.path(key, root))


def set_aside(ref: StoreRef, block_ids: Iterable[str]) -> list[str]:
    """Move the ledger markers of ``block_ids`` to ``_mimflow/damaged/`` (kept, not deleted):
    the blocks count as not done, and the next run computes them again."""
    fs, root = ref.fs()
    moved = []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for block_id in block_ids:
        src = ref.path(ledger.marker(block_id), root)
        dst = ref.path(f"{ledger.SET_ASIDE}/{block_id}.{stamp}.json", root)
        try:
            if ref.is_local:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
            fs.mv(src, dst)
        except FileNotFoundError:
            continue
        moved.append(block_id)
    return moved


def readable_damage(ref: StoreRef, attrs: dict[str, Any], *, skip: bool = False,
                    warn: Any = None) -> dict[str, str]:
    """Damaged blocks of a store about to be read (a quick check): raises
    :class:`~pipeline.errors.SpecError` naming them, or with ``skip`` returns them (block id
    -> problem) after telling ``warn`` (default :func:`warnings.warn`). A store whose
    creation was interrupted is refused either way: it is partly deleted."""
    from .errors import SpecError

    health = inspect(ref, attrs, leftovers=False)
    fix = (f"run `mimflow verify {ref.url} --repair`, then the spec again "
           f"(`mimflow run {attrs.get('spec_file')} --store {ref.url}`) to recompute them")
    if health.initialized and _exists(ref, ledger.CREATING):
        raise SpecError("store", ref.url, "a mimflow store that was created completely",
                        hint=health.initialized)
    if not health.damaged:
        return {}
    lines = [f"{health.describe(i)}: {why}" for i, why in sorted(health.damaged.items())]
    shown = "; ".join(lines[:5]) + (f"; ... and {len(lines) - 5} more" if len(lines) > 5
                                    else "")
    if not skip:
        raise SpecError("store", ref.url, "a store without damaged blocks",
                        hint=f"{len(lines)} blocks marked done are damaged: {shown}. {fix}, "
                             "or pass --skip-damaged to read the store without them")
    message = (f"{ref.url}: {len(lines)} damaged blocks are left out (read as never "
               f"computed): {shown}")
    (warn or (lambda text: warnings.warn(text, stacklevel=3)))(message)
    return health.damaged


def explain_read_error(paths: Iterable[str], storage_options: dict | None,
                       error: BaseException) -> None:
    """After reading a store failed with ``error`` (say a codec error that names no chunk),
    look for the damaged block with a full check and raise
    :class:`~pipeline.errors.SpecError` naming it; return if none is found."""
    from .errors import SpecError
    from .store import read_attrs

    for path in paths:
        ref = StoreRef.parse(path, storage_options)
        try:
            attrs = read_attrs(ref)
            if not attrs or "mimflow_layout" not in attrs:
                continue
            health = inspect(ref, attrs, full=True)
        except Exception:
            continue
        if health.damaged:
            lines = [f"{health.describe(i)}: {why}" for i, why in sorted(health.damaged.items())]
            raise SpecError("store", ref.url, "a store without damaged blocks",
                            hint=f"reading it failed ({type(error).__name__}: {error}); "
                                 f"{len(lines)} damaged blocks: " + "; ".join(lines[:5])
                                 + f". Run `mimflow verify {ref.url} --repair`, then the "
                                   "spec again to recompute them") from None


def adoptable(ref: StoreRef, attrs: dict[str, Any]) -> str | None:
    """Why the store's arrays do not match the layout of the spec in its attributes
    (``None``: they match, so ``initialized.json`` may be written again)."""
    import zarr

    from .store import Layout, _target

    try:
        from sweeps.spec import parse_spec

        spec = parse_spec(attrs["spec_text"], source=str(attrs.get("spec_file")))
    except Exception as e:
        return f"the spec recorded in its attributes does not parse ({e})"
    if spec.hash != attrs.get("spec_hash"):
        return "the spec recorded in its attributes has another hash than the store's"
    layout = Layout.for_store(spec, attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        group = zarr.open_group(_target(ref), mode="r", zarr_format=3)
        for var in layout.variables:
            try:
                arr = group[var.name]
            except KeyError:
                return f"it has no array {var.name!r}"
            if arr.shape != layout.shape(var) or arr.chunks != layout.chunks(var) \
                    or arr.shards != layout.shards(var) or arr.dtype != np.dtype(var.dtype):
                return (f"its {var.name} is {arr.shape} in chunks {arr.chunks} of {arr.dtype}, "
                        f"the spec's {layout.shape(var)} in chunks {layout.chunks(var)} of "
                        f"{var.dtype}")
    return None


def repair(ref: StoreRef, health: Health) -> list[str]:
    """Make a store consistent again without losing anything, under its run lock: markers of
    damaged blocks (and damaged markers) are set aside so the next run computes those blocks
    again, temporary files are removed, and a missing or damaged ``initialized.json`` is
    written again when the arrays match the store's spec. Returns what was done, one line
    each; raises :class:`~pipeline.errors.SpecError` for what cannot be repaired."""
    from .errors import SpecError
    from .ledger import put_json
    from .provenance import utc_now
    from .store import LAYOUT_VERSION

    done = []
    if health.initialized:
        if _exists(ref, ledger.CREATING):
            raise SpecError("store", ref.url, "a store whose creation completed",
                            hint=f"{health.initialized}; nothing here is worth keeping")
        why = adoptable(ref, health.attrs)
        if why is not None:
            raise SpecError("store", ref.url, "a store whose arrays match its spec",
                            hint=f"{health.initialized}, and it cannot be adopted: {why}. "
                                 "Pass --overwrite to `mimflow run` to replace it, or "
                                 "--store to write elsewhere")
        import uuid

        put_json(ref, ledger.INITIALIZED, {
            "spec_hash": health.attrs.get("spec_hash"), "layout_version": LAYOUT_VERSION,
            "store_id": uuid.uuid4().hex, "repaired": utc_now()})
        done.append(f"wrote {ref.path(ledger.INITIALIZED)} again (the arrays match the "
                    "store's spec; blocks without a marker will be computed again)")
    bad = sorted(set(health.damaged) | set(health.bad_markers))
    moved = set_aside(ref, bad)
    for block_id in bad:
        if block_id in moved:
            done.append(f"{health.describe(block_id)}: marker moved to {ledger.SET_ASIDE}/; "
                        "the next run computes it again")
    for path in remove_temporaries(ref):
        done.append(f"removed temporary file {path}")
    return done
