"""mimflow's simulation pipeline: activations, frames, exact initial conditions, dynamics,
integrators and the :func:`simulate` entry point (later: block execution and the store)."""

from .errors import AssumptionWarning, SpecError, TruncationWarning
from .params import Point, resolve_point
from .simulate import simulate
from .store import open_results

__all__ = [
    "AssumptionWarning",
    "Point",
    "SpecError",
    "TruncationWarning",
    "open_results",
    "resolve_point",
    "simulate",
]
