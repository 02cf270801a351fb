"""Point vocabulary: defaults, validation messages, canonical identity."""

from __future__ import annotations

import pytest

from pipeline.engine.params import resolve_point
from pipeline.errors import SpecError

BASE = {"teacher": "h3", "d": 100, "k": 2}

INVALID = [
    # (override, field named in the message, a fragment of what is allowed)
    ({"teacher": "swish"}, "teacher", "h<p>"),
    ({"student": "h3x"}, "student", "h<p>"),
    ({"k": 0}, "k", "[1, 4096]"),
    ({"k": 2.5}, "k", "integer"),
    ({"d": 1, "k": 2}, "d", ">= k"),
    ({"d": 316.2}, "d", "integer"),
    ({"beta": 1.0}, "beta", "[0, 1)"),
    ({"beta": -0.1}, "beta", "[0, 1)"),
    ({"gram": [[1.0, 1.2], [1.2, 1.0]]}, "gram", "positive definite"),
    ({"gram": [[1.0, 0.1], [0.2, 1.0]]}, "gram", "symmetric"),
    ({"gram": [[2.0, 0.0], [0.0, 1.0]]}, "gram", "unit diagonal"),
    ({"gram": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]}, "gram", "2 x 2"),
    ({"gram": [[1.0, 0.1], [0.1, 1.0]], "beta": 0.1}, "beta", "gram"),
    ({"n": 0}, "n", "[1, 10^6]"),
    ({"n": 3, "gamma": 2.0}, "n", "gamma"),
    ({"gamma": -1.0}, "gamma", "> 0"),
    ({"method": "gd", "lr": 0.0}, "lr", "> 0"),
    ({"method": "gd", "lr": -1.0}, "lr", "> 0"),
    ({"t_max": 0.0}, "t_max", "> 0"),
    ({"t_max": float("inf")}, "t_max", "finite"),
    ({"rtol": 0.5}, "rtol", "(0, 0.01]"),
    ({"atol": 0.0}, "atol", "> 0"),
    ({"gtol": 1e-9, "rtol": 1e-8}, "gtol", "rtol"),
    ({"max_steps": 0}, "max_steps", "[1, 10^15]"),
    ({"escape_threshold": 1.5}, "escape_threshold", "lambda_max"),
    ({"escape_threshold": 0.0}, "escape_threshold", "(0,"),
    ({"loss": "hinge"}, "loss", "'correlation'"),
    ({"method": "adam"}, "method", "'flow'"),
    ({"init": "orthant"}, "init", "'uniform'"),
    ({"init": "uncollected", "k": 1}, "init", "k >= 2"),
    ({"backend": "gpu"}, "backend", "'reduced'"),
    ({"backend": "full", "d": 10**7}, "d", "backend 'full'"),
    ({"degree": 0}, "degree", "[1, 64]"),
    ({"degree": 2, "teacher": "h5"}, "teacher", "degree"),
    ({"dimension": 3}, "dimension", "known parameter"),
    ({"d": None}, "d", "required"),
    ({"k": "two"}, "k", "integer"),
    ({"d": True}, "d", "integer"),
]


@pytest.mark.parametrize("override,field,allowed", INVALID)
def test_invalid_points_name_field_value_and_allowed(override, field, allowed):
    with pytest.raises(SpecError) as info:
        resolve_point({**BASE, **override}, source="spec.toml")
    err = info.value
    assert err.field == field
    msg = str(err)
    assert msg.startswith("spec.toml: invalid " + field)
    assert allowed in msg
    assert repr(err.value) in msg


def test_defaults_are_resolved_first():
    p = resolve_point(BASE)
    assert (p.loss, p.student, p.n, p.beta, p.init, p.method, p.backend) == (
        "correlation", "h3", 1, 0.0, "uniform", "flow", "reduced")
    assert p.lr is None
    assert resolve_point({**BASE, "method": "gd"}).lr == 0.1


def test_gamma_gives_n():
    assert resolve_point({**BASE, "k": 4, "gamma": 2.0}).n == 8
    assert resolve_point({**BASE, "k": 3, "gamma": 1.5}).n == 5  # ceil(4.5)
    assert resolve_point({**BASE, "k": 8, "gamma": 0.01}).n == 1


def test_canonical_identity():
    a = resolve_point({**BASE, "d": 100.0})
    b = resolve_point({**BASE, "d": 100, "student": "h3", "beta": 0.0})
    assert a.hash == b.hash  # equivalent spellings are the same point
    assert resolve_point({**BASE, "d": 101}).hash != a.hash
    # lr does not exist for the flow: it cannot split identical flow points.
    assert resolve_point({**BASE, "lr": 0.3}).hash == a.hash
    # Tolerances define the numbers of the flow, so they are part of its identity...
    assert resolve_point({**BASE, "rtol": 1e-9}).hash != a.hash
    # ...but not of its initial condition.
    assert resolve_point({**BASE, "rtol": 1e-9}).initial_key() == a.initial_key()


def test_explicit_gram_is_accepted():
    p = resolve_point({**BASE, "gram": [[1.0, 0.3], [0.3, 1.0]]})
    assert p.beta is None and p.gram_matrix[0, 1] == 0.3


def test_readme_parameter_table_is_the_generated_one():
    """The README's vocabulary is derived from the parameter table, not written by hand."""
    from pathlib import Path

    from pipeline.engine.params import PARAMETERS, describe_parameters

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- parameters:begin -->\n", 1)[1].split("<!-- parameters:end -->")[0]
    assert block == describe_parameters()
    assert all(f"| `{p.name}`" in block for p in PARAMETERS)


def test_table_derives_defaults_integers_and_sections():
    from pipeline.engine.params import DEFAULTS, INTEGER_PARAMS, OBSERVE_PARAMS, REQUIRED

    assert REQUIRED == ("teacher", "d", "k")
    assert INTEGER_PARAMS == {"d", "k", "n", "degree", "max_steps", "batch", "max_samples"}
    assert set(OBSERVE_PARAMS) == {"escape_threshold", "t_max", "rtol", "atol", "gtol",
                                   "max_steps", "max_samples"}
    point = resolve_point({"teacher": "h3", "d": 100, "k": 2})
    for name, default in DEFAULTS.items():
        if default is not None:
            assert getattr(point, name) == default, name


@pytest.mark.parametrize("point, digest", [
    ({"teacher": "h3", "d": 1000, "k": 2, "beta": 0.2}, "369ae4fcdf13966e"),
    ({"teacher": "h4", "d": 10**6, "k": 4, "method": "gd", "lr": 0.05, "init": "positive"},
     "4b07ef3e05b8f5bb"),
    ({"teacher": "relu", "d": 100, "k": 3, "loss": "mse", "n": 4}, "535be49fcada4fd6"),
    ({"teacher": "h3", "d": 100, "k": 2, "gram": [[1, 0.3], [0.3, 1]], "method": "gd"},
     "3fc2f07453a78e6c"),
])
def test_flow_gd_and_mse_hashes_are_those_of_existing_stores(point, digest):
    """Adding SGD parameters (batch, max_samples, lr laws) must not re-identify older points:
    these digests were computed before they existed."""
    assert resolve_point(point).hash == digest
