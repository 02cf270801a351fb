"""mimflow's simulation pipeline.

Two layers, imported in one direction only (see ``docs/design.md``, "Architecture"):

* :mod:`pipeline.engine` — the science: activations, frames, exact initial conditions,
  dynamics, integrators and :func:`simulate`. It imports nothing from the layer above.
* :mod:`pipeline` itself — orchestration: sweeps on Dask, the zarr store and its ledger,
  clusters, queries and the command line.

The names below are loaded lazily (PEP 562), so that importing a light module such as
:mod:`pipeline.errors` (or the spec parser, which uses it) does not compile or load the
numba kernels, Dask or zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> module that defines it.
_EXPORTS = {
    "AssumptionWarning": "pipeline.errors",
    "SpecError": "pipeline.errors",
    "TruncationWarning": "pipeline.errors",
    "Point": "pipeline.engine.params",
    "resolve_point": "pipeline.engine.params",
    "simulate": "pipeline.engine.simulate",
    "open_results": "pipeline.store",
}

__all__ = [
    "AssumptionWarning",
    "Point",
    "SpecError",
    "TruncationWarning",
    "open_results",
    "resolve_point",
    "simulate",
]

if TYPE_CHECKING:
    from .engine.params import Point, resolve_point
    from .engine.simulate import simulate
    from .errors import AssumptionWarning, SpecError, TruncationWarning
    from .store import open_results


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
