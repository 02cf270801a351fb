"""simulate(): the paper's theorems, determinism, and the dataset it returns."""

from __future__ import annotations

import numpy as np
import pytest

import pipeline
from pipeline.engine.simulate import simulate
from pipeline.engine.snapshots import default_snapshot_times
from pipeline.errors import SpecError

H3 = {"teacher": "h3", "d": 1000, "k": 4, "init": "positive"}


def test_dataset_layout():
    ds = pipeline.simulate({**H3, "n": 3}, [4, 7], snapshots=[0.0, 1.0, 10.0])
    assert dict(ds.sizes) == {"seed": 2, "neuron": 3, "index": 4, "time": 3}
    assert ds.seed.values.tolist() == [4, 7]
    for name, dims in {"u0": ("seed", "neuron", "index"), "u": ("seed", "neuron", "index"),
                       "escape_time": ("seed", "neuron"), "t_final": ("seed", "neuron"),
                       "steps": ("seed", "neuron"), "status": ("seed", "neuron"),
                       "loss": ("seed", "neuron"),
                       "u_t": ("seed", "neuron", "time", "index")}.items():
        assert ds[name].dims == dims, name
    assert ds.attrs["p_star"] == 3 and len(ds.attrs["point_hash"]) == 16
    np.testing.assert_array_equal(ds.u_t.isel(time=0), ds.u0)
    # Correlation loss with C = 0: -sum_j u_j^3 at convergence to one index vector is -1.
    np.testing.assert_allclose(ds.loss, -(ds.u**3).sum("index"))
    assert np.allclose(ds.loss, -1.0, atol=1e-6)


def test_seed_blocks_concatenate_bit_for_bit():
    point = {"teacher": {3: 1.0, 4: 0.5}, "d": 10**5, "k": 3, "beta": 0.2, "n": 2}
    whole = pipeline.simulate(point, range(0, 64), snapshots=True)
    parts = [pipeline.simulate(point, range(a, a + 32), snapshots=True) for a in (0, 32)]
    for name in whole.data_vars:
        cat = np.concatenate([p[name].values for p in parts])
        assert np.array_equal(whole[name].values, cat, equal_nan=True), name
    # Also independent of threads and of the order in which seeds are asked for.
    one = pipeline.simulate(point, list(range(63, -1, -1)), snapshots=True, threads=1)
    for name in whole.data_vars:
        assert np.array_equal(whole[name].values, one[name].values[::-1], equal_nan=True)


def test_common_random_numbers_across_methods_and_backends():
    base = {"teacher": "h3", "d": 500, "k": 2, "n": 2, "init": "positive"}
    flow = pipeline.simulate(base, 5)
    gd = pipeline.simulate({**base, "method": "gd", "lr": 0.1}, 5)
    other = pipeline.simulate({**base, "teacher": "h4", "rtol": 1e-9}, 5)
    assert np.array_equal(flow.u0, gd.u0) and np.array_equal(flow.u0, other.u0)
    full = pipeline.simulate({**base, "backend": "full"}, 5)
    np.testing.assert_allclose(full.u0, flow.u0, atol=1e-15)
    assert flow.attrs["point_hash"] != gd.attrs["point_hash"]
    # A different root seed is a different experiment.
    assert not np.array_equal(pipeline.simulate(base, 5, root_seed=1).u0, flow.u0)


def test_full_backend_agrees_through_simulate():
    point = {"teacher": {3: 1.0, 4: 0.4}, "d": 400, "k": 3, "beta": 0.25, "n": 2,
             "init": "positive", "rtol": 1e-10, "atol": 1e-14, "gtol": 1e-8}
    red = pipeline.simulate(point, 3, snapshots=True)
    full = pipeline.simulate({**point, "backend": "full"}, 3, snapshots=True)
    assert float(np.abs(red.u_t - full.u_t).max()) <= 1e-6
    np.testing.assert_allclose(red.escape_time, full.escape_time, rtol=1e-6)


def test_proposition_2_2_nearest_index_vector():
    """Orthogonal frame, h3, positive init: each neuron ends at its largest initial overlap."""
    ds = pipeline.simulate({**H3, "n": 10}, 100)  # 1,000 trajectories
    assert int((ds.status == 0).sum()) == 1000
    start = ds.u0.argmax("index")
    end = ds.u.argmax("index")
    assert bool((start == end).all())
    assert float(ds.u.max("index").min()) > 1 - 1e-6
    # ... and only there: the other overlaps vanish.
    second = np.sort(ds.u.values, axis=-1)[..., -2]
    assert np.max(np.abs(second)) < 1e-3


def _exponent(teacher: str, k: int, seeds: int = 200) -> tuple[float, np.ndarray]:
    ds_ = np.logspace(3, 7, 5).astype(int)
    med = np.array([
        float(pipeline.simulate({"teacher": teacher, "d": int(d), "k": k, "init": "positive",
                                 "rtol": 1e-7, "gtol": 1e-5}, seeds).escape_time.median())
        for d in ds_
    ])
    return np.polyfit(np.log(ds_), np.log(med), 1)[0], med


@pytest.mark.parametrize("teacher,p_star", [("h3", 3), ("h4", 4)])
@pytest.mark.parametrize("k", [1, 3])
def test_theorem_2_1_escape_exponent(teacher, p_star, k):
    alpha, _ = _exponent(teacher, k)
    assert alpha == pytest.approx(p_star / 2 - 1, abs=0.05)


def test_theorem_2_1_logarithmic_for_p_star_2():
    with pytest.warns(pipeline.AssumptionWarning):
        alpha, med = _exponent("h2", 2)
    logd = np.log(np.logspace(3, 7, 5))
    slope, intercept = np.polyfit(logd, med, 1)
    resid = med - (slope * logd + intercept)
    assert np.max(np.abs(resid)) < 0.02 * np.ptp(med)  # linear in log d
    # For sigma = sigma* = h2, ||u||^2 grows like e^{4t}: T = log(d) / 4 + O(1).
    assert slope == pytest.approx(0.25, abs=0.02)
    assert alpha < 0.2  # and no power law


def test_d_is_free():
    """d = 10^12 runs at the cost of d = 100 and the early escape matches the theory."""
    for d in (100, 10**12):
        ds = pipeline.simulate({"teacher": "h3", "d": d, "k": 2, "init": "positive"}, 20)
        assert bool((ds.status == 0).all())
        assert float(ds.steps.max()) < 1000
    u0 = float(np.linalg.norm(ds.u0.values, axis=-1).mean())
    assert 1e-7 < u0 < 1e-5
    # Theorem 2.1 for p* = 3: T ~ d^(1/2) up to an O(1) constant.
    assert 1e4 < float(ds.escape_time.median()) < 1e7


def test_default_snapshot_grid_is_log_spaced():
    t = default_snapshot_times(1e6)
    assert t[0] == pytest.approx(1e-2) and t[-1] == pytest.approx(1e6)
    assert np.allclose(np.diff(np.log(t)), np.diff(np.log(t))[0])


@pytest.mark.parametrize("snapshots", [[3.0, 1.0], [-1.0], [np.nan], "soon", []])
def test_bad_snapshots_are_named(snapshots):
    with pytest.raises(pipeline.SpecError, match="snapshots"):
        pipeline.simulate(H3, 1, snapshots=snapshots)


@pytest.mark.parametrize("seeds,match", [([-1], "seeds"), ([1, 1], "distinct"), ([], "seeds"),
                                         ([0.5], "integer")])
def test_bad_seeds_are_named(seeds, match):
    with pytest.raises(pipeline.SpecError, match=match):
        pipeline.simulate(H3, seeds)


def test_bad_root_seed_is_named():
    with pytest.raises(pipeline.SpecError, match="root_seed"):
        pipeline.simulate(H3, 1, root_seed=-3)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"point": None}, "point"), ({"point": "h3"}, "point"),
    ({"seeds": 2**63}, "seeds"), ({"seeds": np.zeros((2, 2), dtype=int)}, "seeds"),
    ({"seeds": [2**63]}, "seeds"), ({"seeds": "3"}, "seeds"),
    ({"threads": -1}, "threads"), ({"threads": "2"}, "threads"),
    ({"snapshots": [[1.0, 2.0], [3.0, 4.0]]}, "snapshots"),
])
def test_bad_arguments_of_the_python_api_are_named(kwargs, field):
    args = {"point": {"teacher": "h3", "d": 100, "k": 2}, "seeds": 2, **kwargs}
    with pytest.raises(SpecError) as info:
        simulate(args.pop("point"), args.pop("seeds"), **args)
    assert info.value.field == field


def test_ignored_settings_warn_in_the_python_api():
    from pipeline.errors import IgnoredSettingWarning

    with pytest.warns(IgnoredSettingWarning, match="lr is ignored"):
        simulate({"teacher": "h3", "d": 100, "k": 2, "lr": 0.3, "t_max": 10.0}, 1)
    with pytest.warns(IgnoredSettingWarning, match="after t_max"):
        simulate({"teacher": "h3", "d": 100, "k": 2, "t_max": 10.0}, 1, snapshots=[1.0, 100.0])


def test_open_results_names_a_bad_path():
    from pipeline.store import open_results

    for bad in (None, 3):
        with pytest.raises(SpecError, match="store|path"):
            open_results(bad)


@pytest.mark.parametrize("point", [
    {"teacher": "h3", "d": 1000, "k": 2, "n": 3},
    {"teacher": "h4", "d": 400, "k": 2, "n": 3, "loss": "mse", "t_max": 50},
    {"teacher": "h3", "d": 200, "k": 1, "n": 2, "method": "gd", "lr": 0.05},
])
def test_compute_gives_simulate_numbers_as_plain_arrays(point):
    """What a sweep's worker stores (``compute``) is bit for bit what ``simulate`` labels."""
    from pipeline.engine.simulate import compute

    times = [0.5, 5.0]
    ds = pipeline.simulate(point, [3, 7], snapshots=times, threads=1)
    run = compute(point, [3, 7], snapshots=times, threads=1)
    assert run.point.hash == ds.attrs["point_hash"]
    assert sorted(run.data) == sorted(ds.data_vars)
    for name, (dims, values) in run.data.items():
        assert tuple(dims) == ds[name].dims
        np.testing.assert_array_equal(values, ds[name].values, strict=True)
    np.testing.assert_array_equal(run.times, ds["time"].values)
