"""One driver per store: a lease lock that a dead process cannot hold forever.

Blocks never race each other (each owns whole chunks), but two *drivers* on one store do:
both would submit the same blocks, and one of them may ``--overwrite`` (delete) the store
while the other's workers write into it. So ``mimflow run`` takes ``<store>/_mimflow/lock.json``
before it writes anything and keeps it until it ends; a second run on the same store is
refused with :class:`StoreLocked`, which names the holder.

How it works
------------
* **Taking it** is an exclusive create: on a local or shared POSIX file system the record is
  written to a temporary file and hard-linked to ``lock.json`` (``link`` fails if the name
  exists, and the record is complete the moment it appears; this is the classic NFS-safe
  lock); on an object store it is a conditional put (``If-None-Match: *`` through fsspec's
  ``pipe_file(mode="create")``, atomic on S3 and S3-compatible servers; file systems without
  conditional writes fall back to check-then-write, which is not atomic).
* **Keeping it**: a daemon thread rewrites the record every ``ttl / 6`` seconds with a fresh
  ``heartbeat`` time, after checking that the lock still carries its token. If the token has
  changed (the lease was judged dead and taken over) the lock is marked :attr:`RunLock.lost`
  and the driver stops submitting.
* **A dead holder** loses the lock: on the same machine (same host name and boot id) as soon
  as its process no longer exists (pid *and* start time, so a reused pid does not count);
  from another machine once its heartbeat is older than ``ttl`` (clocks are assumed to agree
  to well within ``ttl``). A holder that is alive on this machine keeps the lock whatever its
  heartbeat says (a stopped process may resume and write).
* **Taking over** a dead holder's lock: first an exclusive create of
  ``lock.json.break-<its token>`` (so of many racing drivers exactly one proceeds), then a
  re-read that the dead token is still there, then delete and take it as above.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from .ledger import BOOK, StoreRef, get_json
from .provenance import utc_now

LOCK = f"{BOOK}/lock.json"
#: Seconds after its last heartbeat at which a holder on another machine counts as dead.
DEFAULT_TTL = 60.0


class StoreLocked(RuntimeError):
    """Another live run holds the store's lock; nothing was written."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


def _boot_id() -> str:
    # Distinguishes machines that share a host name (and reboots of one machine).
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> float | None:
    """Start time of process ``pid`` (``None`` if there is no such process)."""
    import psutil  # a dependency of distributed

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def describe_holder(holder: dict[str, Any], now: float | None = None) -> str:
    """``run 2025...-ab12cd (pid 123 on node7, since ..., last heartbeat 4 s ago)``."""
    now = time.time() if now is None else now
    beat = holder.get("heartbeat")
    ago = f"{max(now - float(beat), 0.0):.0f} s ago" \
        if isinstance(beat, int | float) and not isinstance(beat, bool) else "?"
    return (f"run {holder.get('run', '?')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('started', '?')}, last heartbeat "
            f"{ago})")


def _number(value: Any, default: float | None) -> float | None:
    """``value`` as a finite float, or ``default`` when a (damaged) lock record holds
    something else there: a lock is judged on what can be read, never with a traceback."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return default
    try:
        out = float(value)
    except ValueError:
        return default
    return out if out == out and abs(out) != float("inf") else default


class RunLock:
    """The lease lock of one store, held by one run (a context manager).

    ``acquire()`` raises :class:`StoreLocked` when a live run holds the lock; after it, a
    heartbeat thread keeps the lease until ``release()``. :attr:`took_over` describes the
    dead holder whose lock was taken, if any.
    """

    def __init__(self, ref: StoreRef, run_id: str, *, ttl: float = DEFAULT_TTL,
                 heartbeat: float | None = None) -> None:
        self.ref = ref
        self.run_id = run_id
        self.ttl = float(ttl)
        self.interval = float(heartbeat) if heartbeat is not None else self.ttl / 6
        self.token = uuid.uuid4().hex
        self.lost = False
        self.took_over: dict[str, Any] | None = None
        self._held = False
        self._started: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fs, root = ref.fs()
        self._path = ref.path(LOCK, root)

    # -- the record ----------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "run": self.run_id, "token": self.token, "host": socket.gethostname(),
            "boot_id": _boot_id(), "pid": pid, "pid_started": _process_start(pid),
            "started": self._started or utc_now(),
            "heartbeat": time.time(), "ttl": self.ttl,
            "command": " ".join(sys.argv[:1] + sys.argv[1:4]),
        }

    def _read(self) -> tuple[dict[str, Any] | None, bool]:
        """(record, exists): the lock's record, or ``None`` if it is missing or unreadable."""
        try:
            raw = self._fs.cat_file(self._path)
        except FileNotFoundError:
            return None, False
        try:
            record = json.loads(raw)
            return (record if isinstance(record, dict) else None), True
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, True

    def _create(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` unless it exists; True if this call created it."""
        if self.ref.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), f".{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            try:
                os.link(tmp, path)  # atomic, and never exposes half a record
                return True
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: exclusive open instead
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                return True
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        try:
            self._fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False

    def _write(self, data: bytes) -> None:
        if self.ref.is_local:
            tmp = os.path.join(os.path.dirname(self._path), f".{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self._path)
        else:
            self._fs.pipe_file(self._path, data)

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(path)

    # -- liveness ------------------------------------------------------------------------

    def is_dead(self, holder: dict[str, Any] | None, exists: bool = True,
                now: float | None = None) -> bool:
        """Whether the run that wrote ``holder`` can no longer hold the lock."""
        now = time.time() if now is None else now
        if holder is None:
            if not exists:
                return True
            # unreadable: only a crash mid-write could leave that; judge by its age
            try:
                mtime = self._fs.modified(self._path).timestamp()
            except (OSError, NotImplementedError, AttributeError):
                return False
            return now - mtime > self.ttl
        if holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id():
            pid = holder.get("pid")
            started = _process_start(int(pid)) if isinstance(pid, int) else None
            if started is None:
                return True
            recorded = _number(holder.get("pid_started"), None)
            # a different start time: the pid was reused by another process
            return recorded is not None and abs(started - recorded) > 1e-3
        beat = holder.get("heartbeat")
        ttl = _number(holder.get("ttl"), self.ttl)
        return not isinstance(beat, int | float) or now - float(beat) > ttl

    # -- acquire / release ---------------------------------------------------------------

    def acquire(self) -> RunLock:
        """Take the lock (or a dead holder's), then start the heartbeat; see the module."""
        self._started = utc_now()
        for _ in range(5):  # each round either returns, raises, or saw the lock change
            if self._create(self._path, self._encode()):
                self._start_heartbeat()
                return self
            holder, exists = self._read()
            if not self.is_dead(holder, exists):
                raise StoreLocked(self._refusal(holder), holder)
            if self._break(holder):
                self.took_over = holder or {}
            # else: another driver is breaking it; look again
            time.sleep(0.05)
        holder, _ = self._read()
        raise StoreLocked(self._refusal(holder), holder)

    def _break(self, holder: dict[str, Any] | None) -> bool:
        """Delete a dead holder's lock; True if this call did (exactly one breaker does)."""
        token = (holder or {}).get("token", "unreadable")
        marker = f"{self._path}.break-{token}"
        if not self._create(marker, self._encode()):
            return False
        try:
            again, exists = self._read()
            if exists and (again or {}).get("token", "unreadable") == token:
                self._delete(self._path)
                return True
            return False
        finally:
            self._delete(marker)

    def _encode(self) -> bytes:
        return json.dumps(self._record(), sort_keys=True, indent=1).encode()

    def _refusal(self, holder: dict[str, Any] | None) -> str:
        if holder is None:
            return (f"the store {self.ref.url} is locked by another mimflow run (its lock "
                    f"{self._path} cannot be read yet); try again in a moment")
        ttl = _number(holder.get("ttl"), self.ttl)
        same = holder.get("host") == socket.gethostname()
        after = ("it is released when that run ends; if that process is killed, the next run "
                 "on this machine takes the lock at once" if same else
                 f"it is released when that run ends, or {ttl:.0f} s after its last heartbeat "
                 "if that run is dead")
        return (f"the store {self.ref.url} is being written by another mimflow run: "
                f"{describe_holder(holder)}. Two runs on one store would compute the same "
                f"blocks twice (or delete each other's work with --overwrite), so this one "
                f"stops without touching it; {after}")

    def _start_heartbeat(self) -> None:
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="mimflow-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                holder, _ = self._read()
                if (holder or {}).get("token") != self.token:
                    self.lost = True  # judged dead and taken over: stop using the store
                    return
                self._write(self._encode())
            except OSError:
                continue  # a transient storage error: the lease has ttl to spare

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        if not self._held:
            return
        self._held = False
        holder, _ = self._read()
        if (holder or {}).get("token") == self.token:
            self._delete(self._path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock(ref: StoreRef) -> dict[str, Any] | None:
    """The record of the run that holds (or held, if it died) the store's lock, if any."""
    record = get_json(ref, LOCK)
    return record if isinstance(record, dict) else None
