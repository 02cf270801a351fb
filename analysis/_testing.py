"""Build multi-point datasets straight from ``simulate`` (no store), for tests and notebooks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import xarray as xr

import pipeline


def simulate_points(points: Iterable[Mapping[str, Any]], seeds, **kwargs) -> xr.Dataset:
    """Concatenate ``simulate`` results along ``point``, padding n and k with NaN.

    The result has the ``point_params`` coordinate that the estimators read, like a store.
    """
    parts = []
    for point in points:
        ds = pipeline.simulate(point, seeds, **kwargs)
        parts.append(ds.expand_dims("point").assign_coords(
            point_params=("point", [ds.attrs["point"]])))
    return xr.concat(parts, dim="point", join="outer", combine_attrs="drop")
