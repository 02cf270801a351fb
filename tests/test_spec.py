"""Sweep specs: parsing, value helpers, expansion into points and blocks, identity, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine.params import resolve_point
from pipeline.errors import SpecError
from sweeps.spec import load_spec, parse_spec
from sweeps.values import expand_helper

from conftest import tiny_spec

BASE = tiny_spec("t", observe=None)


def test_expansion_order_labels_and_blocks():
    spec = parse_spec(BASE, source="t.toml")
    assert spec.swept == ("d", "k", "gamma")
    assert [p.labels for p in spec.points] == [
        {"d": 100, "k": 2, "gamma": 1.0}, {"d": 100, "k": 3, "gamma": 1.5},
        {"d": 1000, "k": 2, "gamma": 1.0}, {"d": 1000, "k": 3, "gamma": 1.5}]
    # n = ceil(gamma k), resolved per point
    assert [p.point.n for p in spec.points] == [2, 5, 2, 5]
    assert (spec.n_max, spec.k_max) == (5, 3)
    # 10 seeds in blocks of 4: 0-3, 4-7, 8-9 (the last one is the array's edge chunk)
    ranges = [(b.start, b.stop) for b in spec.blocks if b.point_index == 0]
    assert ranges == [(0, 4), (4, 8), (8, 10)]
    assert len(spec.blocks) == 12 and len({b.id for b in spec.blocks}) == 12
    assert spec.n_trajectories == 40
    # the point is exactly what simulate() would resolve from the same parameters
    p = spec.points[1]
    assert p.point == resolve_point(p.params)
    assert p.point.hash == resolve_point({"teacher": "h3", "d": 100, "k": 3, "gamma": 1.5}).hash


def test_helpers_and_integer_rounding():
    assert expand_helper("grid.d", "d", {"logspace": [2, 3, 3]}) == [100, 316, 1000]
    assert expand_helper("grid.beta", "beta", {"linspace": [0, 0.5, 3]}) == [0.0, 0.25, 0.5]
    assert expand_helper("grid.k", "k", {"range": [1, 7, 2]}) == [1, 3, 5]
    vals = expand_helper("grid.lr", "lr", {"range": [0.1, 0.4, 0.1]})
    assert len(vals) == 3 and math.isclose(vals[-1], 0.3)
    spec = parse_spec(BASE.replace("d = [100, 1000]", "d = {logspace = [2, 3, 3]}"))
    assert sorted({p.labels["d"] for p in spec.points}) == [100, 316, 1000]
    assert all(isinstance(p.labels["d"], int) for p in spec.points)


def test_one_helper_may_give_as_many_values_as_a_sweep_has_points():
    values = expand_helper("grid.beta", "beta", {"linspace": [0, 0.5, 1_000_000]})
    assert len(values) == 1_000_000 and values[-1] == 0.5
    for helper in ({"linspace": [0, 0.5, 1_000_001]}, {"range": [0, 1, 1e-7]}):
        with pytest.raises(SpecError) as err:
            expand_helper("grid.beta", "beta", helper)
        assert err.value.field == "grid.beta" and "1000000" in str(err.value)


def test_single_point_observe_and_snapshots():
    spec = parse_spec("""
name = "one"
seeds = 3
[params]
teacher = "h4"
d = 50
k = 2
n = 3
[observe]
t_max = 1e5
rtol = 1e-9
snapshots = {logspace = [-2, 5, 8]}
""")
    assert spec.swept == () and len(spec.points) == 1 and spec.block_seeds == 3
    assert spec.points[0].point.t_max == 1e5 and spec.points[0].point.rtol == 1e-9
    np.testing.assert_array_equal(spec.snapshots, np.logspace(-2, 5, 8))
    spec = parse_spec(BASE + "[observe]\nsnapshots = true\n")
    assert spec.snapshots is not None and spec.snapshots[-1] == pytest.approx(1e12)


def test_spec_hash_is_the_computation_not_the_text():
    a = parse_spec(BASE)
    b = parse_spec('# a comment\ndescription = "other words"\n' + BASE)
    assert a.hash == b.hash
    assert parse_spec(BASE.replace("block_seeds = 4", "block_seeds = 5")).hash != a.hash
    assert parse_spec(BASE.replace('teacher = "h3"', 'teacher = "h5"')).hash != a.hash
    assert parse_spec("root_seed = 1\n" + BASE).hash != a.hash


def test_warnings_are_reported_once_with_their_points():
    spec = parse_spec(BASE.replace('teacher = "h3"', 'teacher = "relu"'))
    assumption = [w for w in spec.warnings if "Assumption 1.1" in w.message]
    assert len(assumption) == 1 and assumption[0].points == (0, 1, 2, 3)


def test_example_spec_is_valid():
    spec = load_spec(Path(__file__).parents[1] / "sweeps" / "example.toml")
    assert len(spec.points) == 20 and len(spec.blocks) == 40


@pytest.mark.parametrize(("text", "field"), [
    (BASE.replace("[[zip]]", "[zip]\nx = 1\n[[zip]]"), "TOML syntax"),
    (BASE.replace("seeds = 10", "seeds = 10.0"), "seeds"),
    (BASE.replace("d = [100, 1000]", "d = [100, 1000]\nbeta = [0.0, 1.5]"), "grid.beta"),
    (BASE.replace("d = [100, 1000]", "d = [2]\nk2 = 1"), "grid.k2"),
    (BASE.replace('teacher = "h3"', 'teacher = "h3"\nd = 5'), "grid.d"),
    (BASE.replace("gamma = [1.0, 1.5]", "gamma = [1.0]"), "zip[0]"),
    (BASE.replace("d = [100, 1000]", "d = [2, 1000]"), "grid.d"),
    (BASE.replace("d = [100, 1000]", "d = {logspace = [0, 0.01, 3]}"), "grid.d"),
])
def test_errors_name_the_field_and_the_file(text, field):
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="bad.toml")
    err = info.value
    assert err.field == field and err.source == "bad.toml"
    assert str(err).startswith("bad.toml: invalid " + field)


def test_point_errors_say_at_which_point():
    with pytest.raises(SpecError) as info:
        parse_spec(BASE.replace("d = [100, 1000]", "d = [2, 1000]"))
    assert "d=2" in str(info.value) and "k=3" in str(info.value)


def test_missing_file():
    with pytest.raises(SpecError) as info:
        load_spec("/nonexistent/spec.toml")
    assert info.value.field == "spec file"


def test_zip_columns_may_repeat_values_but_rows_may_not(tmp_path):
    path = tmp_path / "zip.toml"
    path.write_text('name = "z"\nseeds = 2\n[params]\nteacher = "h3"\nd = 100\n'
                    '[[zip]]\nk = [1, 4, 4]\nbeta = [0.0, 0.0, 0.2]\n')
    spec = load_spec(path)
    assert [(p.point.k, p.point.beta) for p in spec.points] == [(1, 0.0), (4, 0.0), (4, 0.2)]
    path.write_text('name = "z"\nseeds = 2\n[params]\nteacher = "h3"\nd = 100\n'
                    '[[zip]]\nk = [4, 4]\nbeta = [0.2, 0.2]\n')
    with pytest.raises(SpecError, match=r"zip\[0\].*distinct rows"):
        load_spec(path)


@pytest.mark.parametrize(("old", "new", "field", "allowed"), [
    ("gamma = [1.0, 1.5]", "gamma = [1e308, 1.5]", "zip[0].gamma", "n = ceil(gamma k)"),
    ("gamma = [1.0, 1.5]", "gamma = [1e300, 1.5]", "zip[0].gamma", "n = ceil(gamma k)"),
    ("gamma = [1.0, 1.5]", "n = [100000000000, 1]", "zip[0].n", "[1, 10^6]"),
    ('teacher = "h3"', 'teacher = "h3"\nmax_steps = 1e23', "params.max_steps", "10^15"),
    ('teacher = "h3"', "teacher = {3 = 1e100}", "params.teacher", "magnitude <= 1e+06"),
    ('name = "t"', 'name = "t\\n"', "name", "letters, digits"),
    ("[grid]", "[observe]\nsnapshots = [[1.0, 2.0], [3.0, 4.0]]\n[grid]",
     "observe.snapshots", "flat list"),
    ('teacher = "h3"', 'teacher = "h3"\ngram = [[true, false, false], [false, true, false], '
     "[false, false, true]]\nk = 3", "params.gram", "not booleans"),
])
def test_extreme_and_meaningless_values_are_refused_by_name(old, new, field, allowed):
    text = BASE.replace(old, new)
    if "\nk = 3" in new:  # a fixed k and gram: drop the zipped k
        text = text.replace("[[zip]]\nk = [2, 3]\ngamma = [1.0, 1.5]\n", "")
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="x.toml")
    assert info.value.field == field and allowed in str(info.value), str(info.value)
    assert str(info.value).startswith("x.toml: ")


def test_one_activation_under_two_spellings_is_one_point():
    text = BASE.replace('teacher = "h3"\n', "").replace(
        "d = [100, 1000]", 'd = [100, 1000]\nteacher = ["h3", {3 = 1.0}]')
    with pytest.raises(SpecError, match="same Hermite coefficients") as info:
        parse_spec(text, source="x.toml")
    assert info.value.field == "grid.teacher"


def test_ignored_settings_are_warned_about():
    spec = parse_spec(BASE.replace('teacher = "h3"', 'teacher = "h3"\nlr = 0.5'), source="x")
    assert any("lr is ignored with method 'flow'" in w.message for w in spec.warnings)
    gd = parse_spec(BASE.replace('teacher = "h3"', 'teacher = "h3"\nlr = 0.5\nmethod = "gd"'),
                    source="x")
    assert not any("ignored" in w.message for w in gd.warnings)
    late = parse_spec(BASE + "[observe]\nt_max = 100.0\nsnapshots = [1.0, 1000.0]\n",
                      source="x")
    (w,) = [w for w in late.warnings if "after t_max" in w.message]
    assert "1 of 2 snapshot times" in w.message and len(w.points) == 4


def test_block_counts_are_computed_not_enumerated():
    import time

    t0 = time.perf_counter()
    spec = parse_spec(BASE.replace("seeds = 10\nblock_seeds = 4",
                                   "seeds = 2147483648\nblock_seeds = 1"), source="x")
    assert spec.n_blocks == 4 * 2**31 and time.perf_counter() - t0 < 5
    assert "blocks" not in spec.__dict__  # never enumerated


@pytest.mark.parametrize("path", ["/dev/zero", "/"])
def test_a_spec_that_is_not_a_regular_file_is_refused(path):
    with pytest.raises(SpecError, match="a regular TOML file"):
        load_spec(path)


SGD_SPEC = """
name = "sgd"
seeds = 4
[params]
teacher = "h3"
k = 1
lr = {scale = 0.5, d_power = -1.5}
[grid]
d = [100, 1000]
method = %s
[observe]
max_samples = 1000
snapshots = %s
"""


def test_sgd_spec_power_law_lr_resolves_per_d_and_snapshots_count_samples():
    spec = parse_spec(SGD_SPEC % ('["sgd"]', "true"))
    assert [p.point.lr for p in spec.points] == pytest.approx([0.5 * 100**-1.5,
                                                               0.5 * 1000**-1.5])
    assert spec.snapshots[-1] == pytest.approx(1000)  # the default grid ends at the budget


def test_sgd_spec_refuses_snapshots_mixing_samples_and_times():
    with pytest.raises(SpecError) as err:
        parse_spec(SGD_SPEC % ('["flow", "sgd"]', "[1, 10]"))
    assert err.value.field == "method"
    # Without snapshots, flow and SGD points share a store (as sweeps/sgd/beta_f.toml).
    assert len(parse_spec(SGD_SPEC % ('["flow", "sgd"]', "false")).points) == 4


def test_work_unit_settings_are_optional_and_change_the_hash_only_when_set():
    from pipeline.store import Layout

    text = 'name = "u"\nseeds = 10\nblock_seeds = 4\n[params]\nteacher = "h3"\nk = 2\n' \
           '[grid]\nd = [100, 200, 300]\n'
    plain = parse_spec(text)
    assert plain.unit_points is None and plain.unit_seeds is None
    set_ = parse_spec(text.replace("block_seeds = 4\n",
                                   "block_seeds = 4\nunit_points = 2\nunit_seeds = 8\n"))
    assert (set_.unit_points, set_.unit_seeds) == (2, 8) and set_.hash != plain.hash
    layout = Layout.for_spec(set_)
    assert layout.grid == (2, 8) and layout.n_units == 2 * 2
    # all seeds in one unit: rounded up to whole blocks (the shard reaches past the edge)
    whole = Layout.for_spec(parse_spec(text.replace("block_seeds = 4\n",
                                                    "block_seeds = 4\nunit_seeds = 10\n")))
    assert whole.unit_seeds == 12 and whole.n_units == 3
