"""One place that configures numba for mimflow's compiled kernels.

numba's on-disk cache is invalidated only when the *decorated function's own file* changes,
so a kernel that inlines functions from another module would silently keep stale machine code
after that other module is edited or upgraded. mimflow therefore points numba's cache at a
directory keyed by a digest of every kernel source file: any change to any of them selects a
fresh cache. A user's own ``NUMBA_CACHE_DIR`` is respected as the parent directory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numba

#: Modules whose njit functions call each other; any edit to one of them must recompile all.
KERNEL_MODULES = ("continuation.py", "ddouble.py", "dispatch.py", "dop853.py", "dynamics.py",
                  "integrate.py", "linalg.py", "mse.py", "reciprocal.py", "sgd_kernels.py",
                  "sgd_coupled.py", "stiff.py", "woodbury.py")


def _kernel_digest() -> str:
    h = hashlib.sha256(numba.__version__.encode())
    here = Path(__file__).parent
    for name in KERNEL_MODULES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _cache_dir() -> str:
    base = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "mimflow-numba"
    )
    path = Path(base) / _kernel_digest()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".writable"
        probe.touch()
    except OSError:
        path = Path(tempfile.gettempdir()) / "mimflow-numba" / _kernel_digest()
        path.mkdir(parents=True, exist_ok=True)
    return str(path)


numba.config.CACHE_DIR = _cache_dir()


def jit(*args, **kwargs):
    """``numba.njit`` with mimflow's cache policy (``cache=True`` in the digest-keyed dir)."""
    kwargs.setdefault("cache", True)
    return numba.njit(*args, **kwargs)


def jit_named(fn, name: str):
    """:func:`jit` of ``fn`` (a closure made by a factory, e.g. one entry kernel per model)
    under the module-level ``name``: its cache files and the compile records carry that name,
    not the factory's ``<locals>``."""
    fn.__name__ = fn.__qualname__ = name
    return jit(fn)
