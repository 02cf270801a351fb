"""Build multi-point datasets straight from ``simulate`` (no store), for tests and notebooks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import xarray as xr

import pipeline

from ._points import as_points


def simulate_points(points: Iterable[Mapping[str, Any]], seeds, **kwargs) -> xr.Dataset:
    """Concatenate ``simulate`` results along ``point``, padding n and k with NaN.

    The result has the ``point_params`` coordinate that the estimators read, like a store.
    """
    parts = [as_points(pipeline.simulate(point, seeds, **kwargs)) for point in points]
    return xr.concat(parts, dim="point", join="outer", combine_attrs="drop")
