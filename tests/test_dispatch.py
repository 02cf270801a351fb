"""Per-model functions (dispatch.by_model): a constant model compiles that model's code alone,
a runtime model and a Python call reach the right implementation, a bad id is refused."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from pipeline.engine import dynamics
from pipeline.engine.dispatch import by_model


@numba.njit
def _times(model, x):
    return model * x


@numba.njit
def _square(model, x):
    return x * x


@by_model({0: _times, 1: _times, 2: _square})
def toy(model, x):
    """``model * x`` for models 0 and 1, ``x^2`` for model 2."""


@numba.njit
def _toy_runtime(model, x):
    return toy(model, x)


# Used by the first test only: which of them gets compiled is what it checks.
@numba.njit
def _minus(model, x):
    return -x


@numba.njit
def _double(model, x):
    return 2.0 * x


@by_model({0: _minus, 1: _double})
def toy2(model, x):
    """``-x`` for model 0, ``2 x`` for model 1."""


@numba.njit
def _toy2_model_1():
    return toy2(1, 3.0)


def test_constant_model_compiles_only_its_implementation():
    assert _toy2_model_1() == 6.0
    assert not _minus.signatures
    # The constant reaches the implementation as a constant (not an int64), so whatever the
    # implementation calls per model is specialized too, all the way down.
    assert [str(sig[0]) for sig in _double.signatures] == ["Literal[int](1)"]


def test_runtime_model_and_python_call_reach_each_implementation():
    for model, want in ((0, 0.0), (1, 3.0), (2, 9.0)):
        assert _toy_runtime(model, 3.0) == want
        assert toy(model, 3.0) == want
    assert toy.__doc__.startswith("``model * x``") and toy.__name__ == "toy"


def test_unknown_model_id_is_refused():
    with pytest.raises(ValueError, match="toy: model id must be one of \\[0, 1, 2\\], got 7"):
        toy(7, 1.0)


def test_dynamics_functions_agree_between_python_and_a_constant_model():
    # The reduced field at a point, from Python (int model) and from a compiled constant path.
    c = np.array([0.0, 0.0, 0.0, 1.0])
    args = dynamics.reduced_args(np.eye(2), c)
    y = np.array([0.6, 0.3, np.sqrt(1 - 0.45)])
    work = np.empty(dynamics.work_size(dynamics.REDUCED, args))
    dy = np.empty(3)
    dynamics.vector_field(dynamics.REDUCED, y, args, work, dy)
    # du = A a - (u.a) u with a = 3 u^2 (h3: c_3 = 1), dr = -(u.a) r.
    u = y[:2]
    a = 3 * u**2
    np.testing.assert_allclose(dy, np.r_[a - (u @ a) * u, -(u @ a) * y[2]], rtol=1e-14)
