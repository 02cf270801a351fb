"""Value helpers of sweep specs: ``{logspace = [a, b, num]}``, ``{linspace = [a, b, num]}`` and
``{range = [a, b, step]}``, plus the rounding rule for integer parameters.

A helper is a one-key TOML table; it expands to a plain list before any point is built, so the
rest of the spec machinery only ever sees lists of values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.engine.params import INTEGER_PARAMS
from pipeline.errors import SpecError

HELPERS = ("logspace", "linspace", "range")
#: Most values one helper may produce: as many as a sweep may have points (a one-axis scan of
#: 10^6 values is a sweep like any other); a typo such as a step of 1e-9 is refused, not run.
MAX_HELPER_VALUES = 1_000_000


def is_helper(value: Any) -> bool:
    """True when ``value`` looks like a value helper (a table whose only key names a helper)."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in HELPERS


def looks_like_helper(value: Any) -> bool:
    """True for a one-key table whose key is not a number: a helper, possibly misspelt.

    Activation tables (``{3 = 1.0}``) have integer keys, so they are never mistaken for one.
    """
    if not isinstance(value, dict) or len(value) != 1:
        return False
    key = next(iter(value))
    return not key.strip().lstrip("+-").isdigit()


def _numbers(field: str, name: str, args: Any) -> list[float]:
    allowed = f"{{{name} = [a, b, {'step' if name == 'range' else 'num'}]}} with numbers"
    if not isinstance(args, list) or len(args) != 3:
        raise SpecError(field, {name: args}, allowed)
    out = []
    for x in args:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise SpecError(field, {name: args}, allowed)
        out.append(x)
    return out


def _num(field: str, name: str, args: list, num: float) -> int:
    if float(num) != int(num) or not 1 <= num <= MAX_HELPER_VALUES:
        raise SpecError(field, {name: args},
                        f"{{{name} = [a, b, num]}} with num an integer in [1, {MAX_HELPER_VALUES}]")
    return int(num)


def expand_helper(field: str, name: str, value: dict) -> list:
    """Expand one helper table into a list of values (integers for :data:`INTEGER_PARAMS`).

    ``field`` is the location used in messages (``"grid.d"``); ``name`` the parameter name.
    ``logspace`` takes base-10 exponents like :func:`numpy.logspace`; ``range`` is half-open
    like Python's ``range`` (``[1, 4, 1]`` gives 1, 2, 3).
    """
    (kind, args), = value.items()
    if kind == "range":
        a, b, step = _numbers(field, kind, args)
        if step == 0 or (b - a) / step <= 0:
            raise SpecError(field, value, "{range = [a, b, step]} with a non-empty half-open "
                            "range: step != 0 and of the sign of b - a")
        count = math.ceil((b - a) / step - 1e-9)
        if count > MAX_HELPER_VALUES:
            raise SpecError(field, value, f"a range of at most {MAX_HELPER_VALUES} values")
        if all(isinstance(x, int) for x in (a, b, step)):
            values = list(range(a, b, step))
        else:
            values = [a + i * step for i in range(count)]
    else:
        a, b, num = _numbers(field, kind, args)
        count = _num(field, kind, args, num)
        grid = np.logspace(a, b, count) if kind == "logspace" else np.linspace(a, b, count)
        values = [float(x) for x in grid]
    if name in INTEGER_PARAMS:
        values = [_round(field, value, x) for x in values]
    return values


def _round(field: str, helper: dict, x: float) -> int:
    # Explicit rounding for integer parameters: logspace/linspace rarely hit integers exactly.
    if not math.isfinite(x) or abs(x) > 2**53:
        raise SpecError(field, helper, "values that round to integers below 2^53")
    return int(round(x))
