"""The parameter vocabulary: defaults, validation and canonical identity of a sweep point.

One name everywhere (spec files, the Python API, store coordinates). Resolution follows
xarray's zarr backend: defaults are filled in first, then each field is validated on its own,
then combinations are checked, and every error names the field, the value, what is allowed
and, for combinations, both values and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpecError
from .activations import DEFAULT_DEGREE, MAX_DEGREE, canonical_activation_name
from .frames import equiangular_gram, max_overlap_norm, validate_gram

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
#: leave this margin above rtol (see docs/design.md §2).
GTOL_OVER_RTOL = 10.0
DEFAULT_LR = 0.1
#: What a spec or simulate() says of an ``lr`` that the point's method does not use.
IGNORED_LR = "lr is ignored with method 'flow' (it is the step size of methods 'gd' and 'sgd')"
#: Default sample budget of method sgd.
DEFAULT_MAX_SAMPLES = 10**9


# ---------------------------------------------------------------------------------------------
# Constraints on single values, in the manner of scikit-learn's ``_parameter_constraints``:
# each says what it allows (for messages and docs) and turns a valid value into its canonical
# type. Rules that relate several fields stay in :func:`_resolve`.


def _kind_error(name: str, value: Any, kind: str, doc: str) -> SpecError:
    return SpecError(name, value, f"{kind} ({doc})")


@dataclass(frozen=True)
class Options:
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def check(self, name: str, value: Any, doc: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise SpecError(name, value, "one of " + ", ".join(repr(o) for o in self.choices))
        return value


@dataclass(frozen=True)
class Interval:
    """A finite number (``integer``: a whole one, returned as ``int``) in an interval."""

    low: float | None = None
    high: float | None = None
    closed: str = "both"  # which ends belong to the interval: both | left | right | neither
    integer: bool = False
    high_text: str | None = None  # how to print ``high`` (2^53 rather than 9007199254740992)
    note: str = ""  # added to the range in messages, e.g. "(0 is the orthogonal frame)"

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo_in = self.closed in ("both", "left")
        hi_in = self.closed in ("both", "right")
        high = self.high_text or (f"{self.high:g}" if self.high is not None else None)
        if self.low is not None and self.high is not None:
            text = (f"{kind} in {'[' if lo_in else '('}{self.low:g}, {high}"
                    f"{']' if hi_in else ')'}")
        elif self.low is not None:
            text = f"{kind} {'>=' if lo_in else '>'} {self.low:g}"
        elif self.high is not None:
            text = f"{kind} {'<=' if hi_in else '<'} {high}"
        else:
            text = kind
        return f"{text} {self.note}".rstrip()

    def check(self, name: str, value: Any, doc: str) -> float | int:
        number = (int, float, np.integer, np.floating)
        if isinstance(value, bool) or not isinstance(value, number):
            raise _kind_error(name, value, "an integer" if self.integer else "a number", doc)
        try:
            finite = math.isfinite(float(value))
        except OverflowError:  # an int beyond float range
            finite = False
        if not finite:
            raise _kind_error(name, value, "a finite number", doc)
        if self.integer:
            if float(value) != math.floor(float(value)):
                raise _kind_error(name, value, "an integer", doc)
            value = int(value)
        else:
            value = float(value)
        lo_in = self.closed in ("both", "left")
        hi_in = self.closed in ("both", "right")
        if (self.low is not None and (value < self.low or (value == self.low and not lo_in))) \
                or (self.high is not None
                    and (value > self.high or (value == self.high and not hi_in))):
            raise SpecError(name, value, self.describe())
        return value


@dataclass(frozen=True)
class Activation:
    """A named activation or a Hermite table ``{p = a_p}`` (checked with the degree)."""

    def describe(self) -> str:
        return ("h<p>, relu, abs, tanh, erf, sigmoid, gelu, softplus, or a Hermite table "
                "{p = a_p}")


@dataclass(frozen=True)
class Rate:
    """A step size: a number > 0, or a power law in d ``{scale = c, d_power = q}`` (c d^q).

    The power law is a single value (a table), so a spec can fix it while sweeping ``d``:
    each point resolves it to the number ``c d^q`` (see :func:`_resolve`).
    """

    def describe(self) -> str:
        return "a number > 0, or a power law {scale = c, d_power = q} meaning c d^q"

    def check(self, name: str, value: Any, doc: str) -> float | dict[str, float]:
        if isinstance(value, Mapping):
            if set(value) != {"scale", "d_power"}:
                raise SpecError(name, dict(value), self.describe())
            scale = Interval(0, None, closed="neither").check(f"{name}.scale",
                                                              value["scale"], doc)
            power = Interval().check(f"{name}.d_power", value["d_power"], doc)
            return {"scale": scale, "d_power": power}
        return Interval(0, None, closed="neither").check(name, value, doc)


@dataclass(frozen=True)
class Matrix:
    """A symmetric positive definite matrix with unit diagonal (checked against k)."""

    def describe(self) -> str:
        return "a k x k Gram matrix (list of rows)"


#: Marks a parameter that has no default.
REQUIRED_VALUE = object()


@dataclass(frozen=True)
class Param:
    """One parameter of a sweep point: everything mimflow knows about it, in one place."""

    name: str
    constraint: Options | Interval | Activation | Matrix | Rate
    default: Any
    doc: str
    #: Where a spec file may set it: ``model`` ([params], [grid], [[zip]]) or ``observe``
    #: (also [observe], the integration and observation settings).
    section: str = "model"
    #: Its name as a store coordinate, where the parameter's own name is taken.
    store_name: str | None = None
    #: How the default is worked out when it depends on other fields (``default`` is None).
    derived: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED_VALUE

    @property
    def integer(self) -> bool:
        return isinstance(self.constraint, Interval) and self.constraint.integer

    def check(self, value: Any) -> Any:
        """``value`` validated on its own and in canonical type (:class:`SpecError` if not)."""
        return self.constraint.check(self.name, value, self.doc)


#: The parameter table. Defaults, the vocabulary (messages, ``mimflow parameters``, the
#: README), integer rounding of value helpers, spec sections and store names derive from it.
PARAMETERS: tuple[Param, ...] = (
    Param("loss", Options(("correlation", "mse")), "correlation",
          "correlation (the neurons decouple) or mse (the neurons interact)",
          store_name="loss_type"),  # `loss` is the data variable of the final loss
    Param("teacher", Activation(), REQUIRED_VALUE,
          "target activation"),
    Param("student", Activation(), None, "student activation", derived="the teacher"),
    Param("d", Interval(1, D_MAX, integer=True, high_text="2^53"), REQUIRED_VALUE,
          "ambient dimension (at least k)"),
    Param("k", Interval(1, K_MAX, integer=True), REQUIRED_VALUE,
          "number of index vectors"),
    Param("n", Interval(1, N_MAX, integer=True, high_text="10^6"), None,
          "number of student neurons",
          derived="ceil(gamma k) with gamma, else 1"),
    Param("gamma", Interval(0, None, closed="neither", note="(n = ceil(gamma k))"), None,
          "alternative to n: n = ceil(gamma k)"),
    Param("beta", Interval(0.0, 1.0, closed="left", note="(0 is the orthogonal frame)"), None,
          "dot product of the equiangular index vectors", derived="0 unless gram is given"),
    Param("gram", Matrix(), None,
          "explicit k x k Gram matrix of the index vectors (instead of beta)"),
    Param("init", Options(("uniform", "positive", "uncollected")), "uniform",
          "initial law: uniform on the sphere, positive overlaps, or v_k collected by none"),
    Param("method", Options(("flow", "gd", "sgd")), "flow",
          "flow (gradient flow), gd (projected gradient descent) or sgd (online SGD)"),
    Param("lr", Rate(), None, "learning rate of methods gd and sgd",
          derived=f"{DEFAULT_LR} with method gd; required with sgd"),
    # A step costs O(batch k): beyond 10^6 samples a step, use method gd (the batch limit).
    Param("batch", Interval(1, 10**6, integer=True, high_text="10^6"), 1,
          "fresh samples per step of method sgd"),
    Param("backend", Options(("reduced", "full")), "reduced",
          "reduced (exact, any d) or full (explicit d-vectors, for validation)"),
    Param("degree", Interval(1, MAX_DEGREE, integer=True), DEFAULT_DEGREE,
          "Hermite truncation degree of both activations"),
    # Its upper end, sqrt(lambda_max(A)), depends on the frame: checked in _resolve.
    Param("escape_threshold", Interval(note="in (0, sqrt(lambda_max(A)))"), 0.5,
          "escape when ‖u‖₂ first reaches this value", section="observe"),
    Param("t_max", Interval(0, None, closed="neither"), 1e12, "time limit",
          section="observe"),
    Param("rtol", Interval(0, 1e-2, closed="right"), 1e-8,
          "relative tolerance of the integrator", section="observe"),
    Param("atol", Interval(0, None, closed="neither"), 1e-12,
          "absolute tolerance of the integrator; the reduced overlaps': min(atol, rtol / sqrt(d))",
          section="observe"),
    Param("gtol", Interval(0, None, closed="neither"), 1e-6,
          "convergence when the spherical gradient norm falls below this, after escape",
          section="observe"),
    Param("max_steps", Interval(1, MAX_STEPS_MAX, integer=True, high_text="10^15"), 1_000_000,
          "limit on accepted steps", section="observe"),
    Param("max_samples", Interval(1, MAX_STEPS_MAX, integer=True, high_text="10^15"),
          DEFAULT_MAX_SAMPLES,
          "sample budget of method sgd (status 1 when reached; replaces t_max)",
          section="observe"),
)

#: Parameters by name.
PARAMS: dict[str, Param] = {p.name: p for p in PARAMETERS}
#: Defaults, filled in before anything is validated (``None``: derived from other fields).
DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMETERS if not p.required}
REQUIRED = tuple(p.name for p in PARAMETERS if p.required)
#: Every parameter a point may carry, with a one-line description (messages and docs).
VOCABULARY: dict[str, str] = {p.name: p.doc for p in PARAMETERS}
#: Parameters whose values are integers (value helpers round to them).
INTEGER_PARAMS = frozenset(p.name for p in PARAMETERS if p.integer)
#: Parameters whose single value is itself a list (a list of them is not a sweep).
MATRIX_PARAMS = frozenset(p.name for p in PARAMETERS if isinstance(p.constraint, Matrix))
#: Parameters whose single value may be a table (a Hermite mixture such as {3 = 1.0}).
TABLE_PARAMS = frozenset(p.name for p in PARAMETERS
                         if isinstance(p.constraint, Activation | Rate))
#: Parameters a spec may also set in [observe].
OBSERVE_PARAMS = tuple(p.name for p in PARAMETERS if p.section == "observe")
#: Store coordinate names that differ from the parameter's name.
RENAMED = {p.name: p.store_name for p in PARAMETERS if p.store_name}
LOSSES = PARAMS["loss"].constraint.choices
METHODS = PARAMS["method"].constraint.choices
BACKENDS = PARAMS["backend"].constraint.choices


def describe_parameters() -> str:
    """The parameter table as Markdown: name, default, what is allowed, meaning (README)."""
    rows = ["| parameter | default | allowed | meaning |", "|---|---|---|---|"]
    for p in PARAMETERS:
        default = ("required" if p.required else p.derived or "none" if p.default is None
                   else f"`{p.default:g}`" if isinstance(p.default, float) else f"`{p.default}`")
        where = " (also in [observe])" if p.section == "observe" else ""
        rows.append(f"| `{p.name}`{where} | {default} | {p.constraint.describe()} | {p.doc} |")
    return "\n".join(rows) + "\n"


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
    batch: int = 1
    max_samples: int = DEFAULT_MAX_SAMPLES
    #: The power law ``{scale, d_power}`` that ``lr`` was resolved from (None: a number).
    lr_law: dict | None = None
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
        if self.method == "sgd":
            # A chain counts samples: no time limit, no step limit, no tolerances. (Only SGD
            # points carry these keys, so the hashes of flow and GD points are unchanged.)
            del out["t_max"], out["max_steps"]
            out["lr"], out["batch"], out["max_samples"] = self.lr, self.batch, self.max_samples
            if self.lr_law is not None:  # groups points of one law across d (analysis)
                out["lr_law"] = dict(self.lr_law)
        elif self.method == "gd":
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
    return hash_text([json_text(obj)])


def json_text(obj: Any) -> str:
    """The JSON text :func:`content_hash` digests (sorted keys, no spaces, repr floats)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def hash_text(pieces: Iterable[str]) -> str:
    """:func:`content_hash`'s digest of the text ``"".join(pieces)``, fed piece by piece
    (an identity of 10^6 points is never held as one string)."""
    h = hashlib.blake2b(digest_size=8)
    for piece in pieces:
        h.update(piece.encode())
    return h.hexdigest()


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
    unknown = sorted(set(raw) - set(PARAMS))
    if unknown:
        raise SpecError(unknown[0], raw[unknown[0]],
                        "a known parameter name: " + ", ".join(sorted(PARAMS)))
    for name in REQUIRED:
        if raw.get(name) is None:
            raise SpecError(name, None, f"a value: {name} is required ({VOCABULARY[name]})")
    # Defaults first, then every value on its own (the table), then the combinations.
    p = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    v = {name: _checked(name, value) for name, value in p.items()
         if value is not None and name in _CHECKED_ALONE}

    degree = v["degree"]
    teacher = _activation_name(p["teacher"], "teacher", degree)
    student = _activation_name(p["student"] if p["student"] is not None else p["teacher"],
                               "student", degree)

    k, d = v["k"], v["d"]
    if d < k:
        raise SpecError("d", d, f"an integer >= k = {k} (k index vectors must fit in R^d)",
                        hint="raise d or lower k")

    if p["n"] is not None and p["gamma"] is not None:
        raise SpecError("n", p["n"], f"either n or gamma, not both (gamma = {p['gamma']!r})",
                        hint="drop one of them: n = ceil(gamma k)")
    gamma = v.get("gamma")
    if gamma is not None and gamma * k > N_MAX:
        raise SpecError("gamma", gamma, f"a number > 0 and <= {N_MAX:g} / k (n = "
                        f"ceil(gamma k) <= {N_MAX:g}; k = {k})")
    n = max(1, math.ceil(gamma * k - 1e-9)) if gamma is not None else v.get("n", 1)

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
        beta = v.get("beta", 0.0)
        A = None

    init, method, backend = v["init"], v["method"], v["backend"]
    if init == "uncollected" and k < 2:
        raise SpecError("init", init, "'uncollected' needs k >= 2 (there is one index vector)")
    lr = _learning_rate(v.get("lr"), method, d)
    if backend == "full" and d > FULL_D_MAX:
        raise SpecError("d", d, f"d <= {FULL_D_MAX} with backend 'full' (explicit d-vectors)",
                        hint="use backend = 'reduced', which is exact for any d")

    threshold = v["escape_threshold"]
    reach = _equiangular_reach(k, beta) if A is None else max_overlap_norm(A)
    if not 0 < threshold < reach:
        raise SpecError("escape_threshold", threshold,
                        f"a number in (0, {reach:.6g}) (||u||_2 <= sqrt(lambda_max(A)))")
    rtol, gtol = v["rtol"], v["gtol"]
    if method == "flow" and gtol < GTOL_OVER_RTOL * rtol:
        raise SpecError(
            "gtol", gtol,
            f"gtol >= {GTOL_OVER_RTOL:g} x rtol = {GTOL_OVER_RTOL * rtol:.3g} (rtol = {rtol:g})",
            hint="the converged state jitters at the integrator's accuracy, so a smaller gtol "
                 "is never reached: raise gtol or lower rtol",
        )
    return Point(
        loss=v["loss"], teacher=teacher, student=student, d=d, k=k, n=n, beta=beta, gram=gram,
        init=init, method=method, lr=lr, backend=backend, degree=degree,
        escape_threshold=threshold, t_max=v["t_max"], rtol=rtol, atol=v["atol"], gtol=gtol,
        max_steps=v["max_steps"], gamma=gamma, batch=v["batch"], max_samples=v["max_samples"],
        lr_law=v.get("lr") if method == "sgd" and isinstance(v.get("lr"), dict) else None,
    )


#: The parameters a value of which is checked on its own (the others need the combination).
_CHECKED_ALONE = frozenset(name for name, par in PARAMS.items()
                           if isinstance(par.constraint, Options | Interval | Rate))


# A sweep of 10^6 points repeats a few hundred distinct values per parameter: checking each
# once made resolving a point ~2x faster. typed: 1, 1.0 and True are different inputs.
@functools.lru_cache(maxsize=65_536, typed=True)
def _checked_once(name: str, value: Any) -> Any:
    return PARAMS[name].check(value)


def _checked(name: str, value: Any) -> Any:
    """``PARAMS[name].check(value)``, remembered for hashable values other than zeros
    (0.0 == -0.0 would share one entry, and their canonical forms differ)."""
    if isinstance(value, Mapping | list | np.ndarray) or value == 0:
        return PARAMS[name].check(value)
    try:
        return _checked_once(name, value)
    except TypeError:  # unhashable
        return PARAMS[name].check(value)


@functools.lru_cache(maxsize=4096, typed=True)
def _named_activation(name: str, role: str, degree: int) -> str | dict:
    return canonical_activation_name(name, role, degree)


def _activation_name(spec: str | Mapping, role: str, degree: int) -> str | dict:
    """:func:`canonical_activation_name`, remembered for names (tables are checked anew)."""
    if isinstance(spec, str):
        return _named_activation(spec, role, degree)
    return canonical_activation_name(spec, role, degree)


@functools.lru_cache(maxsize=4096, typed=True)
def _equiangular_reach(k: int, beta: float) -> float:
    """``sqrt(lambda_max(A))`` of the equiangular frame (validated by its construction)."""
    return max_overlap_norm(equiangular_gram(k, beta))


def _learning_rate(lr: float | dict | None, method: str, d: int) -> float | None:
    """The number a point's ``lr`` stands for (``c d^q`` for a power law); None for flow."""
    if method == "flow":
        return None
    if lr is None:
        if method == "sgd":
            raise SpecError("lr", None, "a value with method 'sgd': a number or a power law "
                            "{scale = c, d_power = q}", hint="e.g. lr = {scale = 0.5, "
                            "d_power = -1.5} for a step size 0.5 d^-1.5")
        return DEFAULT_LR
    if isinstance(lr, dict):
        value = lr["scale"] * float(d) ** lr["d_power"]
        if not (math.isfinite(value) and value > 0):
            raise SpecError("lr", lr, f"a power law with c d^q finite and > 0 at d = {d}")
        return value
    return lr
