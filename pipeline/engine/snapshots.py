"""Snapshot grids: the times at which a trajectory's state is recorded.

Kept apart from the integrators so that the spec parser can validate a grid without loading
the compiled kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError
from .frames import has_booleans

#: Number of snapshot times in the default (log-spaced) grid.
DEFAULT_SNAPSHOTS = 64


def default_snapshot_times(t_max: float, num: int = DEFAULT_SNAPSHOTS) -> np.ndarray:
    """Log-spaced snapshot times from ``1e-2`` to ``t_max``."""
    return np.logspace(-2.0, np.log10(t_max), num)


def validate_snapshots(snapshots: Any, t_max: float) -> np.ndarray | None:
    """``None`` / ``False``: none; ``True``: the default grid; else increasing times >= 0."""
    if snapshots is None or snapshots is False:
        return None
    if snapshots is True:
        return default_snapshot_times(t_max)
    if isinstance(snapshots, str | bytes) or has_booleans(snapshots):
        raise SpecError("snapshots", snapshots, "a list of times >= 0")
    try:
        times = np.asarray(snapshots, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise SpecError("snapshots", snapshots, "a list of times >= 0") from None
    if times.ndim > 1:
        raise SpecError("snapshots", snapshots, "a flat list of times >= 0 (not nested)")
    times = times.ravel()
    if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times < 0) \
            or np.any(np.diff(times) <= 0):
        raise SpecError("snapshots", snapshots, "a non-empty, strictly increasing list of "
                        "finite times >= 0")
    return times


def late_snapshots(times: np.ndarray | None, t_max: float) -> str | None:
    """A warning (text) when snapshot times lie after ``t_max``: they are never reached
    (recorded as NaN); ``None`` when every time is within reach."""
    if times is None or not np.any(times > t_max):
        return None
    late = times[times > t_max]
    return (f"{late.size} of {times.size} snapshot times are after t_max = {t_max:g} (from "
            f"{late[0]:g}): they are never reached and read as NaN")
