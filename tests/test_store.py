"""The zarr store: layout, shards owned by one work unit each, padding, ledger, labeled
opening."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import xarray as xr

import pipeline
from pipeline import ledger
from pipeline import store as zstore
from pipeline.errors import SpecError
from pipeline.execute import tasks_for
from pipeline.ledger import StoreRef
from pipeline.preflight import check_store, store_attrs
from pipeline.units import Unit, tile
from pipeline.worker import run_unit
from sweeps.spec import parse_spec

from conftest import data_bytes, tiny_spec

SPEC = tiny_spec("store-test", seeds=6, observe="t_max = 1e6\nsnapshots = [0.5, 5.0, 50.0]"
                 ).replace("block_seeds = 4\n", "block_seeds = 4\nunit_points = 2\n")


@pytest.fixture(scope="module")
def spec():
    return parse_spec(SPEC, source="store-test.toml")


def fill_store(ref: StoreRef, spec) -> zstore.Layout:
    """Create the store and run every work unit in this process, as workers would."""
    layout = zstore.create(ref, spec, store_attrs(spec))
    for task in tasks_for(spec, ref, layout, "test-run"):
        run_unit(task)
    zstore.consolidate(ref)
    return layout


@pytest.fixture(scope="module")
def filled(tmp_path_factory, spec):
    ref = StoreRef.parse(tmp_path_factory.mktemp("store") / "s.zarr")
    fill_store(ref, spec)
    return ref


def test_layout_chunks_dtypes_and_lossless_codecs(filled, spec):
    meta = {}
    for name in ("u0", "u", "escape_time", "t_final", "steps", "status", "loss", "u_t"):
        with open(os.path.join(filled.url, name, "zarr.json")) as fh:
            meta[name] = json.load(fh)
    # every data variable: one shard per work unit (2 points x all 6 seeds, in whole blocks
    # of 4), inner chunks of (2 points, one block of seeds), whole trailing axes
    def shapes(m):
        (shard,) = m["codecs"]
        assert shard["name"] == "sharding_indexed"
        return (m["chunk_grid"]["configuration"]["chunk_shape"],
                shard["configuration"]["chunk_shape"])

    assert shapes(meta["u"]) == ([2, 8, 5, 3], [2, 4, 5, 3])
    assert shapes(meta["u_t"]) == ([2, 8, 5, 3, 3], [2, 4, 5, 3, 3])
    assert shapes(meta["status"]) == ([2, 8, 5], [2, 4, 5])
    assert meta["u"]["dimension_names"] == ["point", "seed", "neuron", "index"]
    assert meta["u_t"]["dimension_names"] == ["point", "seed", "neuron", "time", "index"]
    assert {m["data_type"] for n, m in meta.items() if n not in ("steps", "status")} == \
        {"float64"}
    assert (meta["steps"]["data_type"], meta["status"]["data_type"]) == ("int64", "int8")
    for m in meta.values():  # nothing lossy between the numbers and the disk
        inner = m["codecs"][0]["configuration"]
        assert {c["name"] for c in inner["codecs"]} <= {"bytes", "zstd"}
        assert {c["name"] for c in inner["index_codecs"]} <= {"bytes", "crc32c"}


def test_round_trip_is_bit_identical_and_padded(filled, spec):
    ds = zstore.open_results(filled.url)
    assert ds.sizes == {"point": 4, "seed": 6, "neuron": 5, "index": 3, "time": 3}
    for sp in spec.points:
        direct = pipeline.simulate(sp.params, range(6), snapshots=spec.snapshots, threads=1)
        stored = ds.isel(point=sp.index)
        n, k = sp.point.n, sp.point.k
        for name in direct.data_vars:
            real = stored[name].isel({dim: slice(0, size) for dim, size in
                                      (("neuron", n), ("index", k)) if dim in direct[name].dims})
            assert real.dims == direct[name].dims and real.dtype == direct[name].dtype
            assert real.values.tobytes() == direct[name].values.tobytes(), name
        # padding: NaN for floats, -1 for integers, masks say what is real
        assert np.isnan(stored["u"].values[:, n:]).all()
        assert np.isnan(stored["u"].values[:, :, k:]).all()
        assert (stored["status"].values[:, n:] == -1).all()
        assert stored["neuron_mask"].values.sum() == n
        assert stored["index_mask"].values.sum() == k


def test_open_results_is_lazy_and_labeled(filled):
    ds = zstore.open_results(filled.url)
    assert ds["u"].chunks is not None  # dask-backed
    one = ds.sel(d=1000, k=2)
    assert one["u"].dims == ("seed", "neuron", "index")
    assert one["point_hash"].item() == ds["point_hash"].values[2]
    # a partial selection keeps the remaining level (xarray renames `point` after it)
    assert ds.sel(d=100)["k"].values.tolist() == [2, 3]
    assert list(ds["n"].values) == [2, 5, 2, 5]
    attrs = ds.attrs
    assert attrs["spec_text"] == SPEC and attrs["name"] == "store-test"
    assert json.loads(attrs["swept"]) == ["d", "k", "gamma"]
    assert json.loads(attrs["index"]) == ["d", "k"]  # gamma is zipped with k
    assert ds.sel(k=3)["gamma"].values.tolist() == [1.5, 1.5]
    assert {"numpy", "zarr", "xarray", "mimflow"} <= set(json.loads(attrs["versions"]))
    assert attrs["git_revision"] and attrs["created"]
    # consolidated metadata exists and plain xarray can read the store
    assert os.path.exists(os.path.join(filled.url, "zarr.json"))
    plain = xr.open_zarr(filled.url, consolidated=True)
    assert set(plain.data_vars) >= {"u", "status", "u_t"}


def test_two_tasks_can_never_write_one_shard(tmp_path, spec):
    """Units tile (point, seed) on the shards' own grid, read back from zarr's metadata: each
    unit covers exactly one shard of every variable, and no two units the same one. A region
    that would share a shard (half a unit, two units, a shifted one) is refused unwritten."""
    import zarr

    ref = StoreRef.parse(tmp_path / "s.zarr")
    layout = zstore.create(ref, spec, store_attrs(spec))
    arr = zarr.open_array(ref.url, path="u", mode="r")
    P, S = arr.shards[:2]
    owners: dict[tuple[int, int], list[Unit]] = {}
    for unit in tile(layout.points, layout.seeds, *layout.grid):
        shards = {(p // P, s // S) for p in range(unit.p0, unit.p1)
                  for s in range(unit.s0, unit.s1)}
        assert len(shards) == 1
        owners.setdefault(shards.pop(), []).append(unit)
    n_shards = -(-arr.shape[0] // P) * -(-arr.shape[1] // S)
    assert len(owners) == n_shards and all(len(u) == 1 for u in owners.values())
    good = Unit(0, 2, 0, 6)
    data = zstore.fill_unit(layout, good)
    for bad in (Unit(1, 3, 0, 6), Unit(0, 1, 0, 6), Unit(0, 4, 0, 6), Unit(0, 2, 0, 4),
                Unit(2, 4, 4, 6)):
        with pytest.raises(ValueError, match="not one whole work unit"):
            zstore.write_unit(ref, layout, bad, zstore.fill_unit(layout, bad))
    assert not os.path.exists(os.path.join(ref.url, "u", "c"))  # nothing was written
    zstore.write_unit(ref, layout, good, data)  # the unit itself is fine (all fill values)


def test_put_point_refuses_casts_and_unknown_variables(spec):
    layout = zstore.Layout.for_spec(spec)
    ds = pipeline.simulate(spec.points[0].params, range(6), threads=1,
                           snapshots=spec.snapshots)
    data = zstore.fill_unit(layout, Unit(0, 2, 0, 6))
    with pytest.raises(TypeError, match="refusing to cast"):
        zstore.put_point(layout, data, 0, ds.assign(u=ds["u"].astype(np.float32)))
    with pytest.raises(ValueError, match="does not declare"):
        zstore.put_point(layout, data, 0, ds.assign(extra=ds["loss"]))
    zstore.put_point(layout, data, 1, ds)
    assert data["u"][1, :, :2, :2].tobytes() == ds["u"].values.tobytes()
    assert np.isnan(data["u"][0]).all() and np.isnan(data["u"][1, :, 2:]).all()


def test_ledger_markers(tmp_path):
    ref = StoreRef.parse(tmp_path / "s.zarr")
    assert ledger.done_ids(ref) == set()
    ledger.mark_done(ref, "000001-0000000000", {"status_counts": {"converged": 3}})
    ledger.mark_done(ref, "000002-0000000000", {"status_counts": {}})
    # a writer killed mid-way leaves a temp file, which is not a marker
    (tmp_path / "s.zarr" / "_mimflow" / "ledger" / ".abc.tmp").write_text("{")
    assert ledger.done_ids(ref) == {"000001-0000000000", "000002-0000000000"}
    records = ledger.done_records(ref)
    assert records["000001-0000000000"]["status_counts"] == {"converged": 3}


def test_fsspec_url_store(spec):
    ref = StoreRef.parse("memory://mimflow-test/s.zarr")
    fill_store(ref, spec)
    assert ledger.done_ids(ref) == {"000000-0000000000", "000002-0000000000"}
    ds = zstore.open_results("memory://mimflow-test/s.zarr")
    assert ds.sel(d=1000, k=3)["status"].shape == (6, 5)
    assert check_store(spec, ref) == "resume"
    zstore.remove(ref)
    assert not ref.exists()


def test_check_store_decisions(tmp_path, spec, filled):
    assert check_store(spec, StoreRef.parse(tmp_path / "new.zarr")) == "create"
    assert check_store(spec, filled) == "resume"
    assert check_store(spec, filled, overwrite=True) == "create"
    other = parse_spec(SPEC.replace("seeds = 6", "seeds = 7"), source="other.toml")
    with pytest.raises(SpecError, match="--overwrite"):
        check_store(other, filled)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(SpecError, match="something else is there"):
        check_store(spec, StoreRef.parse(foreign), overwrite=True)
    xr.Dataset({"x": ("a", [1.0])}).to_zarr(tmp_path / "plain.zarr", zarr_format=3,
                                           consolidated=False)
    with pytest.raises(SpecError, match="not written by mimflow"):
        check_store(spec, StoreRef.parse(tmp_path / "plain.zarr"), overwrite=True)


def test_interrupted_creation_is_created_again(tmp_path, spec):
    ref = StoreRef.parse(tmp_path / "s.zarr")
    zstore.create(ref, spec, store_attrs(spec))
    os.remove(os.path.join(ref.url, ledger.INITIALIZED))
    assert check_store(spec, ref) == "create"


def test_parameter_named_like_a_variable_gets_another_coordinate_name(tmp_path):
    from pipeline.engine.params import RENAMED, VOCABULARY
    from pipeline.query import query

    variables = {v.name for v in zstore.VARIABLES} | {"neuron_mask", "index_mask"}
    assert set(VOCABULARY) & variables == set(RENAMED)
    try:
        pipeline.resolve_point({"teacher": "h3", "d": 10, "k": 2, "loss": "mse"})
    except SpecError:
        pytest.skip("the MSE engine is not available")
    spec = parse_spec(SPEC.replace("[grid]", '[grid]\nloss = ["correlation", "mse"]'))
    ref = StoreRef.parse(tmp_path / "s.zarr")
    zstore.create(ref, spec, store_attrs(spec))
    ds = zstore.open_results(ref.url)
    assert "loss" in ds.data_vars
    assert ds["loss_type"].values.tolist() == ["correlation"] * 4 + ["mse"] * 4
    assert {"q", "loss_t"} <= set(ds.data_vars)
    assert ds.sel(loss_type="mse", d=100, k=2)["q"].dims == ("seed", "neuron", "neuron2")
    rows = query(ds, where=[("loss", "mse")], by=["loss"], var="q", stat="count").rows
    assert rows == ({"loss_type": "mse", "points": 4, "count(q)": 0},)


def test_string_labels_select_and_group(tmp_path):
    from pipeline.query import query

    spec = parse_spec(SPEC.replace("[grid]", '[grid]\nteacher = ["h3", "h4"]')
                      .replace('teacher = "h3"\n', "", 1).replace("seeds = 6", "seeds = 4"))
    ref = StoreRef.parse(tmp_path / "s.zarr")
    fill_store(ref, spec)
    ds = zstore.open_results(ref.url)
    assert ds.sel(teacher="h4", d=100, k=2)["u"].shape == (4, 5, 3)
    rows = query(ds, where=[("teacher", "h4")], by=["teacher"], stat="count").rows
    expected = int(ds.sel(teacher="h4")["escape_time"].where(
        ds.sel(teacher="h4")["neuron_mask"]).count())
    assert rows == ({"teacher": "h4", "points": 4, "count(escape_time)": expected},)


def test_store_locations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert StoreRef.parse("x.zarr").url == str(tmp_path / "x.zarr")
    assert StoreRef.parse(f"file://{tmp_path}/y.zarr").url == str(tmp_path / "y.zarr")
    remote = StoreRef.parse("s3://bucket/sweep.zarr", {"anon": True})
    assert not remote.is_local and remote.storage_options == {"anon": True}


def test_a_store_grows_along_point_and_its_new_units_fill_it(tmp_path):
    """Appending points (adaptive refinement): the arrays grow, old shards stay, the new
    points are new work units, and the result is the store of the grown spec."""
    def spec_of(ds: list[int]):
        return parse_spec(f'name = "grow"\nseeds = 5\nblock_seeds = 2\nunit_points = 3\n'
                          f'[params]\nteacher = "h3"\nk = 2\nn = 1\n[grid]\nd = {ds}\n'
                          f'[observe]\nt_max = 1e3\n', source="grow.toml")

    small, big = spec_of([100, 200, 300, 400]), spec_of([100, 200, 300, 400, 500, 600, 700])
    ref = StoreRef.parse(tmp_path / "grown.zarr")
    fill_store(ref, small)
    first_shard = (tmp_path / "grown.zarr" / "u" / "c" / "0" / "0" / "0" / "0").read_bytes()
    with pytest.raises(SpecError, match="appended"):
        zstore.extend_points(ref, spec_of([100, 300, 200, 400, 500]))
    assert zstore.extend_points(ref, big)
    layout = zstore.Layout.for_store(big, zstore.read_attrs(ref))
    assert check_store(big, ref) == "resume" and layout.points == 7
    units = {u.id: u for u in layout.units()}
    done = {i for i, r in ledger.done_records(ref).items() if ledger.covers(r, units[i])}
    assert done == {"000000-0000000000"}  # the old edge unit (point 3) now holds 3 points
    for task in tasks_for(big, ref, layout, "grow", skip=done):
        run_unit(task)
    zstore.consolidate(ref)
    assert (tmp_path / "grown.zarr" / "u" / "c" / "0" / "0" / "0" / "0").read_bytes() == \
        first_shard
    fresh = StoreRef.parse(tmp_path / "fresh.zarr")
    fill_store(fresh, big)
    assert data_bytes(ref.url) == data_bytes(fresh.url)
    grown = zstore.open_results(ref.url)
    assert grown["d"].values.tolist() == [100, 200, 300, 400, 500, 600, 700]
