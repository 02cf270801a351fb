"""Provenance of a store: package versions, git revision of the code, creation time."""

from __future__ import annotations

import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

#: Packages whose versions can change the stored numbers or their layout.
PACKAGES = ("mimflow", "numpy", "scipy", "numba", "xarray", "zarr", "dask", "distributed",
            "pandas", "fsspec")


def versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (and Python)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str:
    """``<sha>`` of the checkout this package runs from (``<sha>+dirty`` with local edits).

    ``"unknown"`` when the code is not in a git checkout (an installed wheel, say).
    """
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()
