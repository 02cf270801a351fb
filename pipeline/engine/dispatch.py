"""Per-model functions behind one name: a kernel compiles only the model it runs.

The integrators (``integrate.py``) are written once for every model and call the model through
``dynamics``' functions ``f(model, y, args, ...)``. If ``model`` were a runtime integer, every
kernel would contain (and numba would type, lower and optimize) every model's code: a
correlation sweep would pay for the MSE field. Instead each public model function is a
:func:`by_model` function, resolved by the *type* of ``model``:

* called from compiled code with a compile-time constant model (numba's
  ``Literal[int]``, which a constant such as ``dynamics.REDUCED`` is, and which stays literal
  when passed on as an argument), it compiles to a direct call of that model's implementation
  alone: the entry kernels of ``integrate.py`` pass the model as such a constant, so
  everything below them is specialized and the other models are never compiled;
* called from compiled code with a runtime ``int64`` model, it compiles to a branch over all
  models (the old behaviour: correct, but compiles everything);
* called from Python, it calls the implementation of that model directly (which compiles it
  alone, for an ``int64`` model argument).

Every implementation takes the public signature, ``model`` included (so one implementation can
serve several models, e.g. ``mse.py``'s reduced and full-d coordinates).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from numba import types
from numba.extending import overload

#: Model ids in order (``dynamics.REDUCED``, ``FULL``, ``MSE_REDUCED``, ``MSE_FULL``).
N_MODELS = 4


def by_model(impls: dict[int, Callable]) -> Callable:
    """Decorate a documented stub ``def name(model, ...)`` into a per-model function whose
    implementation for model id ``i`` is ``impls[i]`` (compiled functions taking the stub's
    own arguments; a module that serves only some models, like ``mse.py``, names those)."""
    last = impls[max(impls)]
    # A model id without an implementation never reaches compiled code (the Python path and
    # the constant path refuse it), so the runtime branch may send it anywhere.
    slots = tuple(impls.get(i, last) for i in range(N_MODELS))

    def wrap(stub: Callable) -> Callable:
        @functools.wraps(stub)
        def public(model, *args):
            if model not in impls:
                raise ValueError(f"{stub.__name__}: model id must be one of {sorted(impls)}, "
                                 f"got {model!r}")
            return impls[model](model, *args)

        overload(public, prefer_literal=True)(functools.partial(_typed, impls, slots))
        return public

    return wrap


def _typed(impls, slots, model, *args):
    """numba's typing of a call: one model's implementation when ``model`` is a constant."""
    if isinstance(model, types.IntegerLiteral):
        if model.literal_value not in impls:
            raise ValueError(f"model id must be one of {sorted(impls)}, "
                             f"got {model.literal_value}")
        return _constant_call(impls[model.literal_value], model.literal_value, len(args))
    f0, f1, f2, f3 = slots

    def any_model(model, *args):
        if model == 0:
            return f0(model, *args)
        if model == 1:
            return f1(model, *args)
        if model == 2:
            return f2(model, *args)
        return f3(model, *args)

    return any_model


def _constant_call(fn, value, arity):
    """An implementation that calls ``fn`` with the model as the constant ``value``.

    A constant in a call's argument list stays a constant for the callee, but not once packed
    into a tuple (``fn(value, *args)``), and numba hands an overload's implementation its own
    arguments as plain ``int64``: hence the constant and one spelled-out call per arity.
    """
    if arity == 1:
        def call(model, *args):
            return fn(value, args[0])
    elif arity == 2:
        def call(model, *args):
            return fn(value, args[0], args[1])
    elif arity == 3:
        def call(model, *args):
            return fn(value, args[0], args[1], args[2])
    elif arity == 4:
        def call(model, *args):
            return fn(value, args[0], args[1], args[2], args[3])
    elif arity == 5:
        def call(model, *args):
            return fn(value, args[0], args[1], args[2], args[3], args[4])
    else:
        raise TypeError(f"by_model: {arity} arguments after the model are not supported")
    return call
