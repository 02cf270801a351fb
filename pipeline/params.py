"""The parameter vocabulary: defaults, validation and canonical identity of a sweep point.

One name everywhere (spec files, the Python API, store coordinates). Resolution follows
xarray's zarr backend: defaults are filled in first, then each field is validated on its own,
then combinations are checked, and every error names the field, the value, what is allowed
and, for combinations, both values and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .activations import DEFAULT_DEGREE, MAX_DEGREE, canonical_activation_name
from .errors import SpecError
from .frames import equiangular_gram, max_overlap_norm, validate_gram
from .initial import INITS

LOSSES = ("correlation", "mse")
METHODS = ("flow", "gd")
BACKENDS = ("reduced", "full")
#: Largest d the full-d validation backend accepts (it stores explicit d-vectors).
FULL_D_MAX = 100_000
#: Largest k accepted (the reduced state is k numbers per neuron; beyond this, ask first).
K_MAX = 4096
#: d must be an exactly representable integer.
D_MAX = 2**53
#: Largest n accepted: a state of n neurons (n^2 + nk numbers with the MSE loss) per seed;
#: beyond this no worker holds even one seed (the resource guard judges what fits below it).
N_MAX = 1_000_000
#: Largest max_steps accepted: the kernels count steps in int64.
MAX_STEPS_MAX = 10**15
#: The integrator cannot keep the gradient norm below ~ its relative accuracy: gtol must
#: leave this margin above rtol (see DESIGN section 2).
GTOL_OVER_RTOL = 10.0

#: Defaults, filled in before anything is validated.
DEFAULTS: dict[str, Any] = {
    "loss": "correlation",
    "student": None,  # None: same as teacher
    "n": None,  # from gamma, else 1
    "gamma": None,
    "beta": None,  # None: 0 unless a gram is given
    "gram": None,
    "init": "uniform",
    "method": "flow",
    "lr": None,  # required for gd, 0.1 by default there
    "backend": "reduced",
    "degree": DEFAULT_DEGREE,
    "escape_threshold": 0.5,
    "t_max": 1e12,
    "rtol": 1e-8,
    "atol": 1e-12,
    "gtol": 1e-6,
    "max_steps": 1_000_000,
}
REQUIRED = ("teacher", "d", "k")
DEFAULT_LR = 0.1

#: Every parameter a point may carry, with a one-line description (used in messages and docs).
VOCABULARY: dict[str, str] = {
    "loss": "correlation | mse",
    "teacher": "target activation: h<p>, relu, abs, tanh, erf, sigmoid, gelu, softplus, "
               "or a Hermite table {p = a_p}",
    "student": "student activation (default: the teacher's)",
    "d": "ambient dimension, integer >= k",
    "k": "number of index vectors, integer >= 1",
    "n": "number of student neurons, integer >= 1",
    "gamma": "alternative to n: n = ceil(gamma k)",
    "beta": "equiangular dot product in [0, 1); 0 is the orthogonal frame",
    "gram": "explicit k x k Gram matrix of the index vectors (instead of beta)",
    "init": "uniform | positive | uncollected",
    "method": "flow | gd",
    "lr": "learning rate of method gd, > 0",
    "backend": "reduced | full",
    "degree": f"Hermite truncation degree, integer in [1, {MAX_DEGREE}]",
    "escape_threshold": "escape when ||u||_2 first reaches this value",
    "t_max": "time limit, > 0",
    "rtol": "relative tolerance of the integrator, in (0, 0.01]",
    "atol": "absolute tolerance of the integrator, > 0",
    "gtol": "convergence when the spherical gradient norm falls below this, after escape",
    "max_steps": "limit on accepted steps, integer >= 1",
}


def _number(name: str, value: Any, *, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        kind = "an integer" if integer else "a number"
        raise SpecError(name, value, f"{kind} ({VOCABULARY[name]})")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:  # an int beyond float range
        finite = False
    if not finite:
        raise SpecError(name, value, f"a finite number ({VOCABULARY[name]})")
    if integer:
        if float(value) != math.floor(float(value)):
            raise SpecError(name, value, f"an integer ({VOCABULARY[name]})")
        return int(value)
    return float(value)


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise SpecError(name, value, "one of " + ", ".join(repr(o) for o in options))
    return value


@dataclass(frozen=True)
class Point:
    """A fully resolved, validated sweep point. Build it with :func:`resolve_point`."""

    loss: str
    teacher: str | dict
    student: str | dict
    d: int
    k: int
    n: int
    beta: float | None
    gram: tuple[tuple[float, ...], ...] | None
    init: str
    method: str
    lr: float | None
    backend: str
    degree: int
    escape_threshold: float
    t_max: float
    rtol: float
    atol: float
    gtol: float
    max_steps: int
    gamma: float | None = None
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def gram_matrix(self) -> np.ndarray:
        """The k x k Gram matrix ``A`` of the index vectors."""
        if self.gram is not None:
            return np.array(self.gram, dtype=float)
        return equiangular_gram(self.k, self.beta or 0.0)

    def canonical(self) -> dict[str, Any]:
        """Canonical parameters: what defines the simulated numbers (hashed for identity)."""
        out = {
            "loss": self.loss, "teacher": self.teacher, "student": self.student,
            "d": self.d, "k": self.k, "n": self.n, "init": self.init, "method": self.method,
            "backend": self.backend, "degree": self.degree,
            "escape_threshold": self.escape_threshold, "t_max": self.t_max,
            "gtol": self.gtol, "max_steps": self.max_steps,
        }
        if self.gram is not None:
            out["gram"] = [list(row) for row in self.gram]
        else:
            out["beta"] = self.beta
        if self.method == "gd":
            out["lr"] = self.lr
        else:
            out["rtol"], out["atol"] = self.rtol, self.atol
        return out

    def initial_key(self) -> dict[str, Any]:
        """Parameters that define the law of the initial condition (and nothing else).

        The random stream of a trajectory is keyed by these only, so points that differ in
        loss, activations, method, backend or tolerances start from identical initial
        conditions (common random numbers make such comparisons sharp).
        """
        key = {"d": self.d, "k": self.k, "init": self.init}
        if self.gram is not None:
            key["gram"] = [list(row) for row in self.gram]
        else:
            key["beta"] = self.beta
        return key

    @property
    def hash(self) -> str:
        """Content hash of :meth:`canonical` (16 hex digits)."""
        return content_hash(self.canonical())


def content_hash(obj: Any) -> str:
    """Stable 64-bit hex digest of a JSON-serializable object (sorted keys, repr floats)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def json_plain(obj: Any) -> Any:
    """``obj`` with mapping keys as strings and tuples as lists, ready for ``json.dumps``.

    Parameter tables such as ``{3: 1.0}`` (a Hermite mixture) then serialize the same way
    wherever they are written: spec identities, store coordinates, hashes.
    """
    if isinstance(obj, Mapping):
        return {str(k): json_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_plain(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not serializable: {obj!r}")


def resolve_point(point: Mapping[str, Any] | Point, *, source: str | None = None) -> Point:
    """Fill defaults, validate every field and every combination, return a :class:`Point`.

    Raises :class:`SpecError` naming the field, the value and what is allowed. ``source``
    (a file name, say) is prefixed to the message.
    """
    if isinstance(point, Point):
        return point
    try:
        return _resolve(dict(point))
    except SpecError as err:
        if source:
            raise err.with_source(source) from None
        raise


def _resolve(raw: dict[str, Any]) -> Point:
    unknown = sorted(set(raw) - set(VOCABULARY))
    if unknown:
        raise SpecError(unknown[0], raw[unknown[0]],
                        "a known parameter name: " + ", ".join(sorted(VOCABULARY)))
    for name in REQUIRED:
        if raw.get(name) is None:
            raise SpecError(name, None, f"a value: {name} is required ({VOCABULARY[name]})")
    p = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}

    loss = _choice("loss", p["loss"], LOSSES)
    degree = _number("degree", p["degree"], integer=True)
    if not 1 <= degree <= MAX_DEGREE:
        raise SpecError("degree", degree, f"an integer in [1, {MAX_DEGREE}]")
    teacher = canonical_activation_name(p["teacher"], "teacher", degree)
    student = canonical_activation_name(
        p["student"] if p["student"] is not None else p["teacher"], "student", degree)

    k = _number("k", p["k"], integer=True)
    if not 1 <= k <= K_MAX:
        raise SpecError("k", k, f"an integer in [1, {K_MAX}]")
    d = _number("d", p["d"], integer=True)
    if not 1 <= d <= D_MAX:
        raise SpecError("d", d, "an integer in [1, 2^53]")
    if d < k:
        raise SpecError("d", d, f"an integer >= k = {k} (k index vectors must fit in R^d)",
                        hint="raise d or lower k")

    if p["n"] is not None and p["gamma"] is not None:
        raise SpecError("n", p["n"], f"either n or gamma, not both (gamma = {p['gamma']!r})",
                        hint="drop one of them: n = ceil(gamma k)")
    gamma = None
    if p["gamma"] is not None:
        gamma = _number("gamma", p["gamma"])
        if gamma <= 0 or gamma * k > N_MAX:
            raise SpecError("gamma", gamma, f"a number > 0 and <= {N_MAX:g} / k (n = "
                            f"ceil(gamma k) <= {N_MAX:g}; k = {k})")
        n = max(1, math.ceil(gamma * k - 1e-9))
    else:
        n = _number("n", p["n"] if p["n"] is not None else 1, integer=True)
        if not 1 <= n <= N_MAX:
            raise SpecError("n", n, f"an integer >= 1 and <= {N_MAX:g}")

    beta, gram = None, None
    if p["gram"] is not None:
        if p["beta"] is not None:
            raise SpecError("beta", p["beta"], "unset when an explicit gram is given",
                            hint="give either beta (equiangular frame) or gram, not both")
        A = validate_gram(p["gram"])
        if A.shape[0] != k:
            raise SpecError("gram", p["gram"], f"a {k} x {k} matrix (k = {k})")
        gram = tuple(tuple(float(x) for x in row) for row in A)
    else:
        beta = _number("beta", p["beta"] if p["beta"] is not None else 0.0)
        if not 0.0 <= beta < 1.0:
            raise SpecError("beta", beta, "a number in [0, 1) (0 is the orthogonal frame)")
        A = equiangular_gram(k, beta)

    init = _choice("init", p["init"], INITS)
    if init == "uncollected" and k < 2:
        raise SpecError("init", init, "'uncollected' needs k >= 2 (there is one index vector)")
    method = _choice("method", p["method"], METHODS)
    lr = None
    if method == "gd":
        lr = _number("lr", p["lr"] if p["lr"] is not None else DEFAULT_LR)
        if lr <= 0:
            raise SpecError("lr", lr, "a number > 0 (learning rate of method gd)")
    backend = _choice("backend", p["backend"], BACKENDS)
    if backend == "full" and d > FULL_D_MAX:
        raise SpecError("d", d, f"d <= {FULL_D_MAX} with backend 'full' (explicit d-vectors)",
                        hint="use backend = 'reduced', which is exact for any d")

    threshold = _number("escape_threshold", p["escape_threshold"])
    reach = max_overlap_norm(A)
    if not 0 < threshold < reach:
        raise SpecError("escape_threshold", threshold,
                        f"a number in (0, {reach:.6g}) (||u||_2 <= sqrt(lambda_max(A)))")
    t_max = _number("t_max", p["t_max"])
    if t_max <= 0:
        raise SpecError("t_max", t_max, "a number > 0")
    rtol = _number("rtol", p["rtol"])
    if not 0 < rtol <= 1e-2:
        raise SpecError("rtol", rtol, "a number in (0, 0.01]")
    atol = _number("atol", p["atol"])
    if atol <= 0:
        raise SpecError("atol", atol, "a number > 0")
    gtol = _number("gtol", p["gtol"])
    if gtol <= 0:
        raise SpecError("gtol", gtol, "a number > 0")
    if method == "flow" and gtol < GTOL_OVER_RTOL * rtol:
        raise SpecError(
            "gtol", gtol,
            f"gtol >= {GTOL_OVER_RTOL:g} x rtol = {GTOL_OVER_RTOL * rtol:.3g} (rtol = {rtol:g})",
            hint="the converged state jitters at the integrator's accuracy, so a smaller gtol "
                 "is never reached: raise gtol or lower rtol",
        )
    max_steps = _number("max_steps", p["max_steps"], integer=True)
    if not 1 <= max_steps <= MAX_STEPS_MAX:
        raise SpecError("max_steps", max_steps, f"an integer >= 1 and <= {MAX_STEPS_MAX:g}")
    return Point(
        loss=loss, teacher=teacher, student=student, d=d, k=k, n=n, beta=beta, gram=gram,
        init=init, method=method, lr=lr, backend=backend, degree=degree,
        escape_threshold=threshold, t_max=t_max, rtol=rtol, atol=atol, gtol=gtol,
        max_steps=max_steps, gamma=gamma,
    )
