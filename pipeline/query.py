"""Summary statistics of a store: select points, group them, reduce one variable.

The computation is plain xarray on the store (``isel`` the selected points, mask padding and
missing entries, reduce over everything with the xarray method of the same name), so a query
gives exactly what the same expression typed at a Python prompt gives.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .errors import SpecError
from .store import coord_name

STATS = ("median", "mean", "min", "max", "count", "quantile:Q")
FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class Result:
    """Rows of a query: one per group, with the group's labels, point count and value."""

    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]


def parse_stat(text: str) -> tuple[str, float | None]:
    """``"median"`` -> ``("median", None)``; ``"quantile:0.9"`` -> ``("quantile", 0.9)``."""
    if text in STATS[:-1]:
        return text, None
    if text.startswith("quantile:"):
        try:
            q = float(text.split(":", 1)[1])
        except ValueError:
            q = math.nan
        if 0.0 <= q <= 1.0:
            return "quantile", q
    raise SpecError("--stat", text, "one of median, mean, min, max, count, quantile:Q with "
                    "Q in [0, 1]")


def parse_where(items: list[str]) -> list[tuple[str, str]]:
    """``["d=1000", "teacher=h3"]`` -> ``[("d", "1000"), ("teacher", "h3")]``."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SpecError("--where", item, "PARAM=VALUE, e.g. d=1000")
        out.append((name.strip(), value.strip()))
    return out


def point_coords(ds: xr.Dataset) -> list[str]:
    """Names of the labels along ``point`` that can select or group (not the JSON params)."""
    return [name for name, c in ds.coords.items()
            if c.dims == ("point",) and name not in ("point", "point_params")]


def _match(name: str, values: np.ndarray, raw: str) -> np.ndarray:
    if values.dtype.kind in "iuf":
        try:
            x = float(raw)
        except ValueError:
            raise SpecError("--where", f"{name}={raw}", f"a number ({name} is numeric)") \
                from None
        if values.dtype.kind == "f":
            return np.isclose(values, x, rtol=1e-12, atol=0.0)
        return values == x
    return np.array([str(v) for v in values.tolist()], dtype=object) == raw


def _same(fixed: Any, raw: str) -> bool:
    if isinstance(fixed, bool) or not isinstance(fixed, int | float):
        return str(fixed) == raw
    try:
        return math.isclose(float(raw), float(fixed), rel_tol=1e-12)
    except ValueError:
        return False


def select_points(ds: xr.Dataset, where: list[tuple[str, str]]) -> np.ndarray:
    """Indices of the points matching every ``(param, value)`` condition.

    A condition on a swept parameter (or ``n``, ``k``, ``point_hash``) compares labels,
    numbers within 1e-12 relative; one on a fixed parameter keeps all points or none.
    """
    labels = point_coords(ds)
    fixed = json.loads(ds.attrs.get("fixed_params", "{}"))
    keep = np.ones(ds.sizes["point"], dtype=bool)
    for name, raw in where:
        if name not in labels and coord_name(name) in labels:
            name = coord_name(name)  # `loss=mse` selects on the coordinate loss_type
        if name in labels:
            keep &= _match(name, np.asarray(ds[name].values), raw)
        elif name in fixed:
            keep &= _same(fixed[name], raw)
        else:
            raise SpecError("--where", name, "a parameter of this store: "
                            + ", ".join(labels + sorted(fixed)))
    return np.flatnonzero(keep)


def valid_values(ds: xr.Dataset, var: str, points: np.ndarray,
                 masks: Mapping[str, xr.DataArray] | None = None) -> xr.DataArray:
    """``var`` at ``points`` with padding and missing entries set to NaN (loaded).

    ``masks`` holds ``neuron_mask``/``index_mask`` already read (default: read them from ``ds``).
    """
    masks = ds if masks is None else masks
    da = ds[var].isel(point=points)
    mask = None
    # (dimension of var, mask variable, that mask's own dimension): neuron2 reuses neuron_mask.
    for dim, m, mask_dim in (("neuron", "neuron_mask", "neuron"), ("index", "index_mask", "index"),
                             ("neuron2", "neuron_mask", "neuron")):
        if dim in da.dims and m in masks:
            part = masks[m].isel(point=points)
            if mask_dim != dim:
                part = part.rename({mask_dim: dim})
            mask = part if mask is None else mask & part
    if da.dtype.kind in "iu":
        # Integer variables mark padding and never-written blocks with -1.
        missing = da != -1
        mask = missing if mask is None else mask & missing
    if mask is not None:
        da = da.where(mask)
    return da.load()


def statistic(da: xr.DataArray, stat: str, q: float | None = None) -> float:
    """One number from ``da`` with the xarray reduction ``stat`` over every dimension."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN groups give NaN
        if stat == "quantile":
            out = da.quantile(q)
        elif stat == "count":
            return int(da.count())
        else:
            out = getattr(da, stat)()
    return float(out)


def query(ds: xr.Dataset, *, where: list[tuple[str, str]] = (), var: str = "escape_time",
          stat: str = "median", by: list[str] | None = None) -> Result:
    """Select points (``where``), group them (``by``, default: every swept parameter) and
    reduce ``var`` over all seeds, neurons (and other axes) of each group with ``stat``."""
    name, q = parse_stat(stat)
    data_vars = [v for v in ds.data_vars if ds[v].dims[:2] == ("point", "seed")]
    if var not in data_vars:
        raise SpecError("--var", var, "one of " + ", ".join(data_vars))
    labels = point_coords(ds)
    swept = json.loads(ds.attrs.get("swept", "[]"))
    by = [b if b in labels else coord_name(b) for b in (swept if by is None else by)]
    for b in by:
        if b not in labels:
            raise SpecError("--by", b, "a label along point: " + ", ".join(labels))
    points = select_points(ds, list(where))
    groups: dict[tuple, list[int]] = {}
    label_values = {b: np.asarray(ds[b].values) for b in by}
    for i in points:
        key = tuple(_scalar(label_values[b][i]) for b in by)
        groups.setdefault(key, []).append(int(i))
    column = f"{stat}({var})"
    # Read the (small) masks once here, not once per group in valid_values: on a remote store
    # every re-read is another request per group.
    masks = {m: ds[m].load() for m in ("neuron_mask", "index_mask") if m in ds}
    rows = []
    for key, idx in groups.items():
        value = statistic(valid_values(ds, var, np.asarray(idx), masks), name, q)
        rows.append({**dict(zip(by, key, strict=True)), "points": len(idx), column: value})
    return Result(tuple(by) + ("points", column), tuple(rows))


def _scalar(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def format_result(result: Result, fmt: str = "table") -> str:
    """Render rows as an aligned ``table``, ``csv`` (exact floats) or ``json`` (NaN: null)."""
    if fmt == "json":
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in row.items()} for row in result.rows]
        return json.dumps(rows, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow([repr(v) if isinstance(v, float) else v
                             for v in (row[c] for c in result.columns)])
        return buf.getvalue()
    if fmt != "table":
        raise SpecError("--format", fmt, "one of " + ", ".join(FORMATS))
    import pandas as pd

    table = pd.DataFrame(result.rows, columns=list(result.columns))
    return table.to_string(index=False, float_format=lambda v: f"{v:.6g}") + "\n"
