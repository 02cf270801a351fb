"""Activations and their normalized Hermite expansions.

An activation is known to mimflow only through its coefficients ``a_p`` in the orthonormal
basis ``h_p = He_p / sqrt(p!)`` of L2(N(0, 1)), truncated at an explicit degree ``P``.
Closed forms are used where they exist (pure Hermite, ReLU, abs, erf); the others are
projected with Gauss-Hermite quadrature. The truncated tail energy
``||sigma||^2 - sum_{p<=P} a_p^2`` is recorded, and a :class:`TruncationWarning` is issued when it
is not negligible.

The paper's Assumptions 1.1-1.4 are checked by :func:`check_assumptions`, which says which
assumption a choice breaks instead of staying silent.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import integrate, special

from ..errors import AssumptionWarning, SpecError, TruncationWarning

#: Default truncation degree of every Hermite expansion.
DEFAULT_DEGREE = 16
#: Largest truncation degree accepted.
MAX_DEGREE = 64
#: Number of Gauss-Hermite nodes used for activations without a closed form.
QUADRATURE_NODES = 200
#: Relative tail energy above which a truncation is reported as not negligible.
TAIL_WARN = 1e-2
#: Coefficients below this magnitude are treated as zero (quadrature noise).
COEFFICIENT_ATOL = 1e-12


def hermite_table(x: np.ndarray, degree: int) -> np.ndarray:
    """Normalized probabilists' Hermite polynomials ``h_0..h_degree`` evaluated at ``x``.

    Returns an array of shape ``(degree + 1,) + x.shape``. Uses the stable three-term
    recurrence ``h_{p+1} = (x h_p - sqrt(p) h_{p-1}) / sqrt(p+1)``.
    """
    x = np.asarray(x, dtype=float)
    h = np.empty((degree + 1,) + x.shape)
    h[0] = 1.0
    if degree >= 1:
        h[1] = x
    for p in range(1, degree):
        h[p + 1] = (x * h[p] - math.sqrt(p) * h[p - 1]) / math.sqrt(p + 1)
    return h


def quadrature_coefficients(
    f: Callable[[np.ndarray], np.ndarray], degree: int, nodes: int = QUADRATURE_NODES
) -> tuple[np.ndarray, float]:
    """Project ``f`` on ``h_0..h_degree`` by Gauss-Hermite quadrature.

    Returns ``(a, norm2)`` with the coefficients and the quadrature estimate of ``E[f(x)^2]``.
    Exact for polynomials of degree below ``2 * nodes - degree``; for smooth activations the
    error is at round-off level (see ``tests/test_activations.py``).
    """
    x, w = hermegauss(nodes)
    w = w / math.sqrt(2.0 * math.pi)
    fx = np.asarray(f(x), dtype=float)
    a = hermite_table(x, degree) @ (w * fx)
    return a, float(w @ (fx * fx))


# ---------------------------------------------------------------------------------------------
# Closed forms. Each returns (coefficients up to `degree`, E[f^2]).


def _relu_closed(degree: int) -> tuple[np.ndarray, float]:
    # Gaussian integration by parts: E[relu He_p] = E[relu^(p)] = phi(0) He_{p-2}(0) for p >= 2,
    # with He_m(0) = (-1)^(m/2) (m-1)!! for even m and 0 for odd m.
    a = np.zeros(degree + 1)
    a[0] = 1.0 / math.sqrt(2.0 * math.pi)
    if degree >= 1:
        a[1] = 0.5
    for p in range(2, degree + 1, 2):
        m = p - 2
        he_m0 = (-1) ** (m // 2) * special.factorial2(m - 1, exact=True) if m > 0 else 1
        a[p] = he_m0 / math.sqrt(2.0 * math.pi * math.factorial(p))
    return a, 0.5


def _abs_closed(degree: int) -> tuple[np.ndarray, float]:
    # |x| = relu(x) + relu(-x) and h_p(-x) = (-1)^p h_p(x): odd coefficients cancel.
    r, _ = _relu_closed(degree)
    p = np.arange(degree + 1)
    return r * (1 + (-1.0) ** p), 1.0


def _erf_closed(degree: int) -> tuple[np.ndarray, float]:
    # E[erf He_p] = E[erf' He_{p-1}] with erf' = 2/sqrt(pi) exp(-x^2); the generating function
    # gives E[exp(-x^2) He_{2r}] = (2r)! (-1/3)^r / (r! sqrt(3)), and zero for odd indices.
    a = np.zeros(degree + 1)
    for p in range(1, degree + 1, 2):
        r = (p - 1) // 2
        moment = math.factorial(2 * r) * (-1.0 / 3.0) ** r / (math.factorial(r) * math.sqrt(3.0))
        a[p] = 2.0 / math.sqrt(math.pi) * moment / math.sqrt(math.factorial(p))
    return a, 2.0 / math.pi * math.asin(2.0 / 3.0)


_CLOSED: dict[str, Callable[[int], tuple[np.ndarray, float]]] = {
    "relu": _relu_closed,
    "abs": _abs_closed,
    "erf": _erf_closed,
}

_QUADRATURE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "sigmoid": special.expit,
    "gelu": lambda x: x * special.ndtr(x),
    "softplus": lambda x: np.logaddexp(0.0, x),
}

#: Names of the registered activations (besides ``h<p>`` and explicit mixtures).
NAMED_ACTIVATIONS = tuple(sorted(set(_CLOSED) | set(_QUADRATURE)))

_HERMITE_NAME = re.compile(r"^h(\d+)$")


@dataclass(frozen=True)
class Activation:
    """An activation described by its truncated normalized Hermite expansion.

    Attributes
    ----------
    name:
        Canonical name (``"h3"``, ``"relu"``, or ``"mix{3:1,5:0.5}"``).
    coefficients:
        ``a_0..a_P`` in the basis ``h_p``.
    degree:
        Truncation degree ``P``.
    norm2:
        ``E[sigma(x)^2]`` of the untruncated activation.
    method:
        ``"exact"`` (finite expansion), ``"closed form"`` or ``"quadrature"``.
    """

    name: str
    coefficients: np.ndarray = field(repr=False)
    degree: int
    norm2: float
    method: str

    @property
    def tail(self) -> float:
        """Energy dropped by the truncation, ``||sigma||^2 - sum_p a_p^2`` (>= 0)."""
        return max(self.norm2 - float(self.coefficients @ self.coefficients), 0.0)

    @property
    def relative_tail(self) -> float:
        """Dropped energy as a fraction of ``||sigma||^2``."""
        return self.tail / self.norm2 if self.norm2 > 0 else 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the truncated expansion ``sum_p a_p h_p(x)``."""
        return np.tensordot(self.coefficients, hermite_table(x, self.degree), axes=1)


#: Largest Hermite coefficient accepted in a table (see ``_parse_mixture``).
MAX_COEFFICIENT = 1e6


def _parse_mixture(spec: Mapping, degree: int, field_name: str) -> dict[int, float]:
    table: dict[int, float] = {}
    for key, value in spec.items():
        try:
            p = int(key)
        except (TypeError, ValueError):
            p = -1
        if p < 0 or str(key).strip() != str(p):
            raise SpecError(
                field_name, dict(spec), "a table {degree = coefficient} with integer degrees >= 0"
            )
        if p > degree:
            raise SpecError(
                field_name,
                dict(spec),
                f"Hermite degrees <= the truncation degree ({degree})",
                hint="raise `degree` or drop the high-degree term",
            )
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            raise SpecError(field_name, dict(spec), "finite numeric Hermite coefficients")
        if abs(value) > MAX_COEFFICIENT:
            # products of coefficients enter the flow's right-hand side squared and cubed:
            # beyond this they overflow float64 in the kernel instead of giving a trajectory
            raise SpecError(field_name, dict(spec),
                            f"Hermite coefficients of magnitude <= {MAX_COEFFICIENT:g}",
                            hint="scaling an activation by c only rescales time (by c^2 for "
                                 "teacher and student alike): scale t_max instead")
        table[p] = float(value)
    if not table or all(v == 0.0 for v in table.values()):
        raise SpecError(field_name, dict(spec), "a table with at least one non-zero coefficient")
    return table


def canonical_activation_name(
    spec: str | Mapping, field_name: str = "activation", degree: int = MAX_DEGREE
) -> str | dict:
    """Canonical, hashable-friendly form of an activation spec (validated, not expanded).

    Hermite terms above the truncation ``degree`` are refused here, before any work starts.
    """
    if isinstance(spec, Mapping):
        table = _parse_mixture(spec, degree, field_name)
        return {str(p): table[p] for p in sorted(table)}
    if isinstance(spec, str):
        name = spec.strip().lower()
        if (m := _HERMITE_NAME.match(name)) and int(m.group(1)) > degree:
            raise SpecError(
                field_name, spec, f"h<p> with p <= the truncation degree ({degree})",
                hint="raise `degree`",
            )
        if _HERMITE_NAME.match(name) or name in NAMED_ACTIVATIONS:
            return name
    raise SpecError(
        field_name,
        spec,
        "h<p> (e.g. h3), one of " + ", ".join(NAMED_ACTIVATIONS)
        + ", or a Hermite table such as {3 = 1.0, 5 = 0.5}",
    )


def get_activation(
    spec: str | Mapping, degree: int = DEFAULT_DEGREE, *, field_name: str = "activation"
) -> Activation:
    """Resolve an activation spec into its truncated Hermite expansion.

    ``spec`` is ``"h<p>"``, a registered name (see :data:`NAMED_ACTIVATIONS`) or a mapping
    ``{p: a_p}``. Warns (:class:`TruncationWarning`) when the dropped tail exceeds
    :data:`TAIL_WARN` of the activation's energy.
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= MAX_DEGREE:
        raise SpecError("degree", degree, f"an integer in [1, {MAX_DEGREE}]")
    canon = canonical_activation_name(spec, field_name, degree)
    a = np.zeros(degree + 1)
    if isinstance(canon, dict):
        table = _parse_mixture(canon, degree, field_name)
        for p, v in table.items():
            a[p] = v
        terms = ",".join(f"{p}:{v:g}" for p, v in sorted(table.items()))
        act = Activation(f"mix{{{terms}}}", a, degree, float(a @ a), "exact")
    elif m := _HERMITE_NAME.match(canon):
        p = int(m.group(1))
        a[p] = 1.0
        act = Activation(canon, a, degree, 1.0, "exact")
    elif canon in _CLOSED:
        coeffs, norm2 = _CLOSED[canon](degree)
        act = Activation(canon, coeffs, degree, norm2, "closed form")
    else:
        f = _QUADRATURE[canon]
        coeffs, _ = quadrature_coefficients(f, degree)
        # The tail estimate is a small difference of two O(1) numbers, so the energy comes
        # from adaptive quadrature, accurate to ~1e-13, rather than from the same nodes.
        norm2 = integrate.quad(lambda x: f(x) ** 2 * math.exp(-0.5 * x * x), -np.inf, np.inf,
                               epsabs=1e-14, epsrel=1e-13, limit=200)[0] / math.sqrt(2 * math.pi)
        coeffs[np.abs(coeffs) < COEFFICIENT_ATOL] = 0.0
        act = Activation(canon, coeffs, degree, norm2, "quadrature")
    if act.relative_tail > TAIL_WARN:
        warnings.warn(
            f"{field_name} {act.name}: the Hermite expansion truncated at degree {degree} drops "
            f"{100 * act.relative_tail:.2g}% of its energy; raise `degree` for a faithful model",
            TruncationWarning,
            stacklevel=2,
        )
    return act


def information_exponent(b: np.ndarray, atol: float = COEFFICIENT_ATOL) -> int | None:
    """``p* = min{p >= 1 : b_p != 0}``, or ``None`` if the expansion has no such term."""
    nz = np.flatnonzero(np.abs(np.asarray(b)[1:]) > atol)
    return int(nz[0]) + 1 if nz.size else None


def dual_coefficients(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Coefficients ``c_p = a_p b_p`` of the dual activation ``g(rho) = sum_p c_p rho^p``."""
    n = min(len(a), len(b))
    return np.asarray(a[:n]) * np.asarray(b[:n])


def dual_activation(a: np.ndarray, b: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The dual activation ``g(rho) = E[sigma(w.x) sigma*(v.x)]`` for ``rho = w.v``."""
    c = dual_coefficients(a, b)
    return lambda rho: np.polynomial.polynomial.polyval(np.asarray(rho, dtype=float), c)


@dataclass(frozen=True)
class AssumptionIssue:
    """One broken assumption: which, how badly (``"warning"`` or ``"error"``) and why."""

    assumption: str
    severity: str
    message: str


def check_assumptions(
    a: np.ndarray, b: np.ndarray, gram: np.ndarray | None = None
) -> list[AssumptionIssue]:
    """Check Assumptions 1.1-1.4 of the paper for student ``a``, teacher ``b`` and Gram ``A``.

    Returns the list of broken assumptions (empty if all hold). A choice with no dynamics at
    all (every ``c_p`` with ``p >= 1`` zero) is an ``"error"``; the others are warnings, since
    the simulation is still well defined, only outside the paper's theorems.
    """
    issues: list[AssumptionIssue] = []
    c = dual_coefficients(a, b)
    nonzero = np.flatnonzero(np.abs(c[1:]) > COEFFICIENT_ATOL) + 1
    if nonzero.size == 0:
        issues.append(AssumptionIssue(
            "1.1", "error",
            "every c_p = a_p b_p with p >= 1 is zero: the correlation loss is constant "
            "on the sphere and there are no dynamics",
        ))
        return issues
    p_star = information_exponent(b)
    if p_star == 1:
        issues.append(AssumptionIssue(
            "1.1", "warning",
            "p* = 1 (the teacher has a linear component): u = 0 is not a saddle, there is no "
            "escape phase and Theorem 2.1 does not apply",
        ))
    elif p_star == 2 and not np.any(np.abs(c[3:]) > COEFFICIENT_ATOL):
        issues.append(AssumptionIssue(
            "1.1", "warning",
            "p* = 2 with no c_p != 0 for p >= 3: the loss is rotationally symmetric in "
            "span(V) and neurons converge to a combination of index vectors",
        ))
    if p_star is not None and abs(c[p_star]) <= COEFFICIENT_ATOL:
        issues.append(AssumptionIssue(
            "1.1", "warning",
            f"c_p* = a_{p_star} b_{p_star} = 0: the student has no component at the teacher's "
            "information exponent, so the escape is driven by a higher-order term",
        ))
    start = p_star if p_star is not None else 1
    negative = [p for p in range(start, len(c)) if c[p] < -COEFFICIENT_ATOL]
    if negative:
        issues.append(AssumptionIssue(
            "1.2", "warning",
            f"c_p = a_p b_p < 0 for p in {negative}: student and teacher coefficients differ "
            "in sign",
        ))
    if gram is not None:
        off = np.asarray(gram) - np.diag(np.diag(gram))
        if np.any(off < 0):
            issues.append(AssumptionIssue(
                "1.4", "warning",
                f"the index vectors have negative dot products (min {off.min():.3g})",
            ))
    return issues


def warn_assumptions(issues: list[AssumptionIssue], *, stacklevel: int = 2) -> None:
    """Raise the first error among ``issues`` as a :class:`SpecError`, warn about the rest."""
    for issue in issues:
        if issue.severity == "error":
            raise SpecError(
                "teacher/student", issue.message,
                f"activations satisfying Assumption {issue.assumption}",
            )
    for issue in issues:
        warnings.warn(
            f"Assumption {issue.assumption} broken: {issue.message}",
            AssumptionWarning,
            stacklevel=stacklevel + 1,
        )
