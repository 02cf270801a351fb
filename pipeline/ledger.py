"""Where a store's bookkeeping lives: its location and the completion ledger.

zarr 3 does not store a chunk that holds only fill values (``write_empty_chunks=False``), so a
missing chunk proves nothing about whether a block ran. Completion is therefore recorded
explicitly: each block writes one small JSON marker, ``_mimflow/ledger/<block id>.json``,
*after* its data, and the driver lists those markers to know what is done. The markers sit
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

BOOK = "_mimflow"
LEDGER = f"{BOOK}/ledger"
RUNS = f"{BOOK}/runs"
#: Written by the driver once the store's metadata and coordinates are complete.
INITIALIZED = f"{BOOK}/initialized.json"


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
        text = os.fspath(path)
        if text.startswith("file://"):
            text = text[len("file://"):]
        if "://" not in text:
            text = os.path.abspath(os.path.expanduser(text))
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
    """The JSON object at ``key``, or ``None`` if it is missing or unreadable."""
    fs, root = ref.fs()
    try:
        return json.loads(fs.cat_file(ref.path(key, root)))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


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
    """Every completion marker, by block id (markers that cannot be read are skipped)."""
    fs, root = ref.fs()
    ids = sorted(_done_ids(ref, fs, root))
    if not ids:
        return {}
    paths = [ref.path(marker(i), root) for i in ids]
    contents = fs.cat(paths, on_error="omit")
    out = {}
    for block_id, path in zip(ids, paths, strict=True):
        raw = contents.get(path) if isinstance(contents, dict) else None
        if raw is None:
            continue
        try:
            out[block_id] = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return out


def write_run(ref: StoreRef, run_id: str, record: dict[str, Any]) -> None:
    """Keep the record of one run (what it computed, what failed, warnings) in the store."""
    put_json(ref, f"{RUNS}/{run_id}.json", record)


def runs(ref: StoreRef) -> list[dict[str, Any]]:
    """Records of the runs on this store, oldest first."""
    fs, root = ref.fs()
    try:
        names = sorted(fs.ls(ref.path(RUNS, root), detail=False))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.endswith(".json"):
            try:
                out.append(json.loads(fs.cat_file(name)))
            except (FileNotFoundError, json.JSONDecodeError):
                continue
    return out
