"""Reading sweep points out of a results dataset, with the NaN padding removed.

A results store (``pipeline.open_results``) has a ``point`` dimension with the canonical
parameters of each point in ``point_params`` (JSON) and masks for the padding of ``n`` and
``k``; a single ``pipeline.simulate`` result has no ``point`` dimension and its parameters in
``attrs["point"]``. Estimators accept either.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.engine.activations import dual_coefficients, get_activation, information_exponent
from pipeline.engine.status import MISSING


def as_points(ds: xr.Dataset) -> xr.Dataset:
    """Give a single-point ``simulate`` result a ``point`` dimension; stores pass through."""
    if "point" in ds.dims:
        return ds
    out = ds.expand_dims("point")
    return out.assign_coords(point_params=("point", [ds.attrs["point"]]))


def point_params(ds: xr.Dataset) -> pd.DataFrame:
    """One row per point with its canonical parameters (plus ``p_star`` of the teacher)."""
    ds = as_points(ds)
    rows = []
    for text in ds["point_params"].values:
        params: dict[str, Any] = json.loads(str(text))
        if "gram" in params:
            params["gram"] = json.dumps(params["gram"])
        params["teacher"] = _label(params["teacher"])
        params["student"] = _label(params["student"])
        if params.get("method") == "sgd":
            # Points of one step-size law differ in lr across d; the law is their group.
            law = params.get("lr_law")
            params["lr_law"] = (json.dumps(law, sort_keys=True) if law is not None
                                else repr(params["lr"]))
        rows.append(params)
    table = pd.DataFrame(rows)
    if "lr_law" in table.columns and "lr" in table.columns:  # GD points beside SGD ones
        bare = table["lr_law"].isna() & table["lr"].notna()
        table.loc[bare, "lr_law"] = table.loc[bare, "lr"].map(repr)
    table["p_star"] = [p_star(t, deg) for t, deg in zip(table["teacher"], table["degree"],
                                                        strict=True)]
    return table


def _label(activation: Any) -> str:
    return activation if isinstance(activation, str) else json.dumps(activation, sort_keys=True)


def coefficients(label: str, degree: int, role: str = "activation") -> np.ndarray:
    """Hermite coefficients of an activation given by its label in ``point_params``."""
    spec = json.loads(label) if str(label).startswith("{") else label
    return get_activation(spec, int(degree), field_name=role).coefficients


def p_star(teacher: str, degree: int) -> int:
    """Information exponent of a teacher given by its label."""
    return information_exponent(coefficients(teacher, degree, "teacher")) or 0


def dual_c(params: dict[str, Any]) -> np.ndarray:
    """Dual coefficients ``c_p = a_p b_p`` of a point's student and teacher."""
    return dual_coefficients(coefficients(params["student"], params["degree"], "student"),
                             coefficients(params["teacher"], params["degree"], "teacher"))


def iter_points(ds: xr.Dataset, table: pd.DataFrame | None = None
                ) -> Iterator[tuple[dict[str, Any], xr.Dataset]]:
    """Yield ``(params, data)`` per point, ``data`` trimmed to the point's real n and k and
    to the seeds that were run.

    A seed whose every neuron has status -1 was never computed (an adaptive sweep runs only
    some seed blocks of a point; a damaged block read with ``damaged="skip"``): it is left
    out, so that fractions and medians count the trajectories that exist. ``table`` is
    ``point_params(ds)`` when the caller already has it (it is not re-parsed).
    """
    ds = as_points(ds)
    table = point_params(ds) if table is None else table
    for i, params in enumerate(table.to_dict("records")):
        sub = ds.isel(point=i)
        sub = sub.isel(neuron=slice(0, int(params["n"])), index=slice(0, int(params["k"])))
        if "status" in sub and "seed" in sub["status"].dims:
            ran = (np.asarray(sub["status"].values) != MISSING).any(axis=-1)
            if not ran.all():
                sub = sub.isel(seed=np.flatnonzero(ran))
        yield params, sub


def finished(params: dict[str, Any], status: np.ndarray) -> np.ndarray:
    """Trajectories whose final state counts as the end of training.

    Flow and GD: converged (status 0). Online SGD never comes to rest, so a chain that used
    its whole sample budget (status 1) has finished training too."""
    status = np.asarray(status)
    if params.get("method") == "sgd":
        return (status == 0) | (status == 1)
    return status == 0


def group_columns(table: pd.DataFrame, varying: str) -> list[str]:
    """Parameters that define a group of points varying only in ``varying``.

    With ``varying = "d"``, SGD points are grouped by their step-size law (``lr_law``)
    rather than by ``lr``, which a power law makes differ with d."""
    drop = {varying}
    if varying == "d" and "lr_law" in table.columns:
        drop.add("lr")
    return [c for c in table.columns if c not in drop]
