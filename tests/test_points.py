"""Points kept by column: every column against the point resolved from scratch, the spec's
identity against its one-string form, and what a big spec costs the driver."""

from __future__ import annotations

import itertools
import json
import tracemalloc

import numpy as np
import pytest

from pipeline.engine.params import content_hash, json_plain, resolve_point
from sweeps import points as points_mod
from sweeps.spec import parse_spec

MIXED = """
name = "mixed"
seeds = 3
[params]
d = 1000
[grid]
teacher = ["h3", "relu", {3 = 1.0, 5 = 0.2}]
k = [1, 2]
[[zip]]
beta = [0.0, 0.25]
escape_threshold = [0.5, 0.75]
[observe]
t_max = 50
"""


def _expected_points(fixed: dict, axes: list[tuple[tuple[str, ...], list[tuple]]]):
    """The grid expanded the way the spec documents it (first axis slowest), resolved."""
    for combo in itertools.product(*(rows for _, rows in axes)):
        params = dict(fixed)
        for (names, _), row in zip(axes, combo, strict=True):
            params.update(zip(names, row, strict=True))
        yield params, resolve_point(params)


@pytest.fixture
def small_blocks(monkeypatch):
    """Canonical texts compressed 5 points to a block: block edges fall inside the grid."""
    monkeypatch.setattr(points_mod, "CANON_BLOCK", 5)


def test_columns_match_points_resolved_from_scratch(small_blocks):
    spec = parse_spec(MIXED)
    axes = [(("teacher",), [("h3",), ("relu",), ({"3": 1.0, "5": 0.2},)]),  # TOML keys
            (("k",), [(1,), (2,)]),
            (("beta", "escape_threshold"), [(0.0, 0.5), (0.25, 0.75)])]
    expected = list(_expected_points({"d": 1000, "t_max": 50}, axes))
    pts = spec.points
    assert len(pts) == len(expected) == 12
    texts = [t for block in pts.canonical_texts() for t in block]
    assert len(texts) == 12
    for i, (params, point) in enumerate(expected):
        assert pts.params(i) == params
        assert pts.hash(i) == point.hash
        assert pts.label(i) == {name: getattr(point, name) for name in spec.swept}
        assert (pts.n[i], pts.k[i]) == (point.n, point.k)
        assert texts[i] == json.dumps(json_plain(point.canonical()), sort_keys=True)
        sp = pts[i]  # resolved on demand
        assert sp.point == point and sp.index == i and sp.params == params
    # int labels stay ints and floats floats (their JSON, hence the hashes, depend on it)
    assert pts.columns["k"].dtype == np.int64 and pts.columns["beta"].dtype == np.float64
    assert isinstance(pts.label(0)["k"], int) and isinstance(pts.label(0)["beta"], float)
    assert pts[-1].index == 11 and [p.index for p in pts[2:4]] == [2, 3]
    with pytest.raises(IndexError):
        pts[12]


def test_spec_hash_streamed_equals_the_hash_of_the_whole_identity():
    spec = parse_spec(MIXED)
    identity = {
        "name": spec.name, "seeds": spec.seeds, "root_seed": spec.root_seed,
        "block_seeds": spec.block_seeds, "swept": list(spec.swept), "snapshots": None,
        "points": [[json_plain(p.labels), p.point.hash] for p in spec.points],
    }
    assert spec.hash == content_hash(identity)


def test_profiles_hold_the_worst_case_of_each_kind():
    spec = parse_spec("""
name = "prof"
seeds = 2
[params]
teacher = "h3"
k = 2
[grid]
d = [100, 10000]
n = [1, 3]
t_max = [10, 1000]
""")
    profiles = {(p.point.n, p.point.k): p for p in spec.points.profiles}
    assert set(profiles) == {(1, 2), (3, 2)}
    for (n, _), prof in profiles.items():
        assert (prof.point.d, prof.point.t_max) == (10000, 1000)
        # the point named in messages is a real point of the profile with that d
        named = spec.points[prof.index].point
        assert (named.n, named.d) == (n, 10000)


def test_extended_points_are_the_grid_then_the_added_ones(small_blocks):
    spec = parse_spec(MIXED)
    added_params = [{**spec.points.params(3), "k": 3}, {**spec.points.params(0), "k": 4}]
    added = [(p, resolve_point(p)) for p in added_params]
    ext = spec.points.extended(added)
    assert len(ext) == 14
    for i in range(12):
        assert ext.label(i) == spec.points.label(i) and ext.hash(i) == spec.points.hash(i)
    for j, (params, point) in enumerate(added):
        assert ext.params(12 + j) == params and ext.hash(12 + j) == point.hash
        assert ext[12 + j].point == point
    texts = [t for block in ext.canonical_texts() for t in block]
    assert texts[12] == json.dumps(json_plain(added[0][1].canonical()), sort_keys=True)
    assert int(ext.k.max()) == 4 and {p.point.k for p in ext.profiles} == {1, 2, 3, 4}


def test_a_big_spec_costs_the_driver_little_per_point():
    """50,000 points: what the parsed spec keeps, and the parse's peak, per point (it was
    ~1.1 kB kept per point when every point kept its resolved parameters)."""
    text = """
name = "big"
seeds = 4
[params]
teacher = "h3"
k = 2
d = 100
[grid]
escape_threshold = {linspace = [0.5, 0.9, 500]}
t_max = {linspace = [1e-3, 2e-3, 100]}
"""
    tracemalloc.start()
    try:
        spec = parse_spec(text)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(spec.points) == 50_000
    assert kept / 50_000 < 200, kept
    assert peak / 50_000 < 600, peak
