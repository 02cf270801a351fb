"""Where a store's bookkeeping lives: its location and the completion ledger.

zarr 3 does not store a chunk that holds only fill values (``write_empty_chunks=False``), so a
missing chunk proves nothing about whether a unit ran. Completion is therefore recorded
explicitly: each work unit (:mod:`pipeline.units`; in stores of layout 1, each block) writes
one small JSON marker, ``_mimflow/ledger/<unit id>.json``, *after* its data, and the driver
lists those markers to know what is done: O(work units) small objects. The markers sit
in a plain folder next to the zarr arrays (not a zarr node), so zarr and xarray ignore them;
every block writes a different object, so there is nothing to race on.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec

from .errors import DamagedFile, SpecError

BOOK = "_mimflow"
LEDGER = f"{BOOK}/ledger"
RUNS = f"{BOOK}/runs"
#: Written by the driver once the store's metadata and coordinates are complete.
INITIALIZED = f"{BOOK}/initialized.json"
#: Written by the driver *before* it deletes or creates anything (removed once the store is
#: initialized): a store that holds it was being (re)created when its run was interrupted,
#: so what is left there was already given up and may be created again.
CREATING = f"{BOOK}/creating.json"
#: The plan of an adaptive sweep: rounds, added points, seeds per point, outcome
#: (``sweeps.refine.Plan``; written by ``analysis.refine``, read by ``mimflow status``).
REFINE = f"{BOOK}/refine.json"
#: Where ``mimflow verify --repair`` moves the markers of damaged blocks (kept, not deleted).
SET_ASIDE = f"{BOOK}/damaged"


@dataclass(frozen=True)
class StoreRef:
    """Location of a store: a local path or an fsspec URL (``s3://bucket/x.zarr``).

    Local paths (and ``file://`` URLs) are made absolute, so workers started elsewhere in the
    same file system find the same place.
    """

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, path: str | os.PathLike, storage_options: dict | None = None) -> StoreRef:
        """Normalize ``path`` (a local path or an fsspec URL) into a :class:`StoreRef`."""
        if not isinstance(path, str | os.PathLike):
            raise SpecError("store", path, "a path or an fsspec URL (s3://bucket/x.zarr)")
        text = os.fspath(path)
        if text.startswith("file://"):
            text = text[len("file://"):]
        if "://" not in text:
            text = os.path.abspath(os.path.expanduser(text))
        else:
            protocol = text.split("://", 1)[0]
            try:
                fsspec.get_filesystem_class(protocol.split("::")[-1])
            except ValueError:
                raise SpecError("store", text, "a local path or a URL of a protocol fsspec "
                                "knows (s3://, gs://, abfs://, ...)",
                                hint=f"{protocol!r} is not one") from None
            except ImportError as e:
                raise SpecError("store", text, "a URL whose fsspec backend is installed",
                                hint=f"{e}") from None
        return cls(text, dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        """True for a path on the local file system."""
        return "://" not in self.url

    def fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec file system and the store's root path within it."""
        return fsspec.core.url_to_fs(self.url, **self.storage_options)

    def path(self, key: str, root: str | None = None) -> str:
        """Path of ``key`` (``"_mimflow/ledger"``) inside the store, for :meth:`fs`;
        ``root``, the root :meth:`fs` returned, spares resolving the file system again."""
        if root is None:
            _, root = self.fs()
        return f"{root.rstrip('/')}/{key}"

    def exists(self) -> bool:
        """True when something is at the store's location."""
        fs, root = self.fs()
        return fs.exists(root)

    def __str__(self) -> str:
        return self.url


def put_json(ref: StoreRef, key: str, record: dict[str, Any]) -> None:
    """Write ``record`` at ``key``; on local disks atomically (temp file, then rename)."""
    data = json.dumps(record, sort_keys=True, indent=1, default=str).encode()
    if ref.is_local:
        path = os.path.join(ref.url, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # a killed writer leaves a temp file, never half a marker
    else:
        fs, root = ref.fs()
        fs.pipe_file(ref.path(key, root), data)  # object stores publish a put atomically


def get_json(ref: StoreRef, key: str) -> dict[str, Any] | None:
    """The JSON object at ``key``, or ``None`` if it is missing, unreadable or not an
    object (see :func:`read_json` to tell those apart)."""
    try:
        return read_json(ref, key)
    except DamagedFile:
        return None


def read_json(ref: StoreRef, key: str) -> dict[str, Any] | None:
    """The JSON object at ``key``; ``None`` if there is no such file.

    Raises :class:`~pipeline.errors.DamagedFile` naming the file when it exists but is not
    a JSON object (empty, truncated, a list...).
    """
    fs, root = ref.fs()
    path = ref.path(key, root)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedFile(path, "is a folder") from None
    return parse_object(raw, path)


def parse_object(raw: bytes, path: str) -> dict[str, Any]:
    """``raw`` (the content of the file ``path``) as a JSON object, or
    :class:`~pipeline.errors.DamagedFile`."""
    if not raw.strip():
        raise DamagedFile(path, "is empty")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFile(path, f"is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise DamagedFile(path, f"holds a JSON {type(value).__name__}, not an object")
    return value


def covers(record: dict[str, Any], unit: Any) -> bool:
    """True when the completion ``record`` covers all of ``unit``'s points (a unit whose
    store grew along ``point`` after it was written holds more points now, and is computed
    again). Records of layout 1 (one block) name no point range: they cover their block."""
    points = record.get("points")
    return points is None or list(points) == [unit.p0, unit.p1]


def marker(block_id: str) -> str:
    """Key of block ``block_id``'s completion marker inside the store."""
    return f"{LEDGER}/{block_id}.json"


def mark_done(ref: StoreRef, block_id: str, record: dict[str, Any]) -> None:
    """Record that block ``block_id`` is complete. Call only after its data is written."""
    put_json(ref, marker(block_id), {"block": block_id, **record})


def done_ids(ref: StoreRef) -> set[str]:
    """Ids of the blocks recorded as complete (a listing; no marker is read)."""
    return _done_ids(ref, *ref.fs())


def _done_ids(ref: StoreRef, fs: fsspec.AbstractFileSystem, root: str) -> set[str]:
    folder = ref.path(LEDGER, root)
    fs.invalidate_cache(folder)  # object-store listings are cached; workers added markers
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return set()
    out = set()
    for name in names:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(".json") and not base.startswith("."):
            out.add(base[: -len(".json")])
    return out


def done_records(ref: StoreRef) -> dict[str, dict[str, Any]]:
    """Every valid completion marker, by block id (damaged markers are left out; see
    :func:`read_markers`)."""
    return read_markers(ref).records


@dataclass
class Markers:
    """The ledger as read: valid completion records, and the markers that are damaged."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)
    """Block id -> the problem with its marker (its path and what is wrong)."""


def read_markers(ref: StoreRef) -> Markers:
    """Read every completion marker (one listing, one batched read).

    A marker counts as *done* only if it is a JSON object with the block's ``status_counts``
    (what :func:`pipeline.worker.run_unit` writes); an empty, truncated or foreign marker is
    reported in ``damaged``, so that the driver, ``status`` and ``verify`` agree on what is
    done (the block is simply computed again).
    """
    fs, root = ref.fs()
    out = Markers()
    ids = sorted(_done_ids(ref, fs, root))
    if not ids:
        return out
    paths = [ref.path(marker(i), root) for i in ids]
    contents = fs.cat(paths, on_error="return")
    if not isinstance(contents, dict):  # a single path: fsspec returns the bytes
        contents = {paths[0]: contents}
    for block_id, path in zip(ids, paths, strict=True):
        raw = contents.get(path)
        if isinstance(raw, BaseException) or raw is None:
            if isinstance(raw, FileNotFoundError):  # deleted between listing and reading
                continue
            out.damaged[block_id] = f"{path} cannot be read ({raw!r})"
            continue
        try:
            record = parse_object(raw, path)
        except DamagedFile as e:
            out.damaged[block_id] = f"{path} {e.problem}"
            continue
        if not isinstance(record.get("status_counts"), dict):
            out.damaged[block_id] = f"{path} has no status_counts (not a completion record)"
            continue
        out.records[block_id] = record
    return out


def write_run(ref: StoreRef, run_id: str, record: dict[str, Any]) -> None:
    """Keep the record of one run (what it computed, what failed, warnings) in the store."""
    put_json(ref, f"{RUNS}/{run_id}.json", record)


def runs(ref: StoreRef) -> list[dict[str, Any]]:
    """Records of the runs on this store, oldest first (damaged ones left out; see
    :func:`read_runs`)."""
    return read_runs(ref)[0]


def read_runs(ref: StoreRef) -> tuple[list[dict[str, Any]], list[str]]:
    """(records of the runs on this store, oldest first; the paths of run records that are
    damaged). A run record is history, not data: a damaged one is reported, never fatal."""
    fs, root = ref.fs()
    try:
        names = sorted(fs.ls(ref.path(RUNS, root), detail=False))
    except FileNotFoundError:
        return [], []
    out, damaged = [], []
    for name in names:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if not base.endswith(".json") or base.startswith("."):
            continue
        try:
            out.append(parse_object(fs.cat_file(name), name))
        except FileNotFoundError:
            continue
        except DamagedFile as e:
            damaged.append(f"{name} {e.problem}")
    return out, damaged
