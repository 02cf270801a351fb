"""The ``mimflow`` command: help, validate, bad input (exit 2, nothing touched), status, query."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import open_results

from conftest import cli, interrupt_cli, run_spec, tiny_spec

SPEC = tiny_spec("cli-test", description="tiny sweep for the CLI tests")


call = cli


def snapshot(path: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``path`` with its modification time and content digest."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            out[str(p.relative_to(path))] = (p.stat().st_mtime_ns,
                                             hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory, scheduler):
    """A complete store of SPEC, written through `mimflow run`."""
    root = tmp_path_factory.mktemp("cli")
    spec, store, err = run_spec(root, "cli", SPEC, scheduler)
    assert "4 of 4 work units in" in err
    (root / "scheduler.txt").write_text(scheduler)
    return spec, store


def test_help_on_every_command_has_examples(capsys):
    for argv in ([], ["run"], ["validate"], ["status"], ["query"]):
        assert call(*argv, "--help")[0] == 0
        assert "examples:" in capsys.readouterr().out, argv
    # the console script itself
    exe = shutil.which("mimflow")
    cmd = [exe] if exe else [sys.executable, "-m", "pipeline.cli"]
    result = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "exit codes" in result.stdout


def test_validate_reports_the_plan_without_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SPEC.replace('teacher = "h3"', 'teacher = "relu"'))
    code, out, _ = call("validate", "s.toml")
    assert code == 0
    assert "points:        4 (swept: d, k, gamma)" in out
    assert "trajectories:  40 (4 points x 10 seeds; 140 neuron paths)" in out
    assert "blocks:        12 (3 per point, 4 seeds each)" in out
    assert "memory/block:" in out and "store size:" in out
    # a broken assumption is reported once, with the number of points it concerns
    assert out.count("Assumption 1.1") == 1 and "4 of 4 points" in out
    assert sorted(os.listdir(tmp_path)) == ["s.toml"]


VALID = SPEC
INVALID = [  # (what is changed, replacement, field the message must name)
    ("seeds = 10", "", "seeds"),
    ("seeds = 10", "seeds = 0", "seeds"),
    ("seeds = 10", "seeds = 2.5", "seeds"),
    ("block_seeds = 4", "block_seeds = -1", "block_seeds"),
    ("block_seeds = 4", "blok_seeds = 4", "blok_seeds"),
    ("block_seeds = 4", "block_seeds = 4\nunit_seeds = 6", "unit_seeds"),
    ("block_seeds = 4", "block_seeds = 4\nunit_points = 0", "unit_points"),
    ("block_seeds = 4", "block_seeds = 4\nunit_points = 1.5", "unit_points"),
    ('name = "cli-test"', 'name = "my sweep!"', "name"),
    ('teacher = "h3"', 'teacher = "h3x"', "params.teacher"),
    ('teacher = "h3"', 'teacher = "h3"\ntemperature = 1.0', "params.temperature"),
    ('teacher = "h3"', 'teacher = "h3"\nd = 50', "grid.d"),
    ('teacher = "h3"', 'teacher = "h3"\nloss = "hinge"', "params.loss"),
    ('teacher = "h3"', 'teacher = "h0"', "params.teacher"),
    ("d = [100, 1000]", "d = 100", "grid.d"),
    ("d = [100, 1000]", "d = [100, 100]", "grid.d"),
    ("d = [100, 1000]", "d = [2, 1000]", "grid.d"),
    ("d = [100, 1000]", "d = {logspace = [2, 3]}", "grid.d"),
    ("d = [100, 1000]", "d = {logspase = [2, 3, 3]}", "grid.d"),
    ("d = [100, 1000]", "d = [100, 1000]\nbeta = [0.0, 1.5]", "grid.beta"),
    ("gamma = [1.0, 1.5]", "gamma = [1.0]", "zip[0]"),
    ("gamma = [1.0, 1.5]", "gamma = [1.0, 1.5]\nn = [1, 2]", "zip[0].n"),
    ("t_max = 1e6", "t_max = -1.0", "observe.t_max"),
    ("t_max = 1e6", "t_max = 1e6\ndt = 0.1", "observe.dt"),
    ("t_max = 1e6", "t_max = 1e6\nsnapshots = [3.0, 1.0]", "observe.snapshots"),
    ("t_max = 1e6", "t_max = 1e6\nrtol = 1e-4\ngtol = 1e-5", "observe.gtol"),
    ("t_max = 1e6", "t_max = 1e6\nescape_threshold = 2.0", "observe.escape_threshold"),
    ("[observe]", "[observe\n", "TOML syntax"),
]


@pytest.mark.parametrize(("old", "new", "field"), INVALID, ids=[f for _, _, f in INVALID])
def test_invalid_spec_exits_2_names_the_field_and_touches_nothing(tmp_path, made, old, new,
                                                                  field):
    assert old in VALID
    spec = tmp_path / "bad.toml"
    spec.write_text(VALID.replace(old, new, 1))
    _, existing = made
    before = snapshot(existing)
    for store in (tmp_path / "new.zarr", existing):
        code, _, err = call("run", str(spec), "--store", str(store))
        assert code == 2, err
        assert f"invalid {field}" in err and str(spec) in err, err
    assert not (tmp_path / "new.zarr").exists()
    assert snapshot(existing) == before
    code, _, err = call("validate", str(spec))
    assert code == 2 and f"invalid {field}" in err


def test_a_different_spec_is_refused_unless_overwrite(tmp_path, made, scheduler):
    spec, original = made
    store = tmp_path / "copy.zarr"
    shutil.copytree(original, store)
    other = tmp_path / "other.toml"
    other.write_text(SPEC.replace("seeds = 10", "seeds = 8"))
    before = snapshot(store)
    code, _, err = call("run", str(other), "--store", str(store), "--scheduler", scheduler)
    assert code == 2 and "--overwrite" in err and "cli-test" in err
    assert snapshot(store) == before
    code, _, err = call("run", str(other), "--store", str(store), "--scheduler", scheduler,
                        "--overwrite")
    assert code == 0, err
    assert open_results(str(store)).sizes["seed"] == 8


def test_bad_arguments_exit_2(made, tmp_path):
    spec, store = made
    assert call("run", str(spec), "--workers", "0")[0] == 2
    assert call("run", str(spec), "--workers", "2", "--scheduler", "tcp://x:1")[0] == 2
    assert call("status", str(tmp_path / "nothing.zarr"))[0] == 2
    assert call("query", str(store), "--stat", "quantile:2")[0] == 2
    assert call("query", str(store), "--stat", "mode")[0] == 2
    assert call("query", str(store), "--var", "nope")[0] == 2
    assert call("query", str(store), "--where", "temperature=1")[0] == 2
    assert call("query", str(store), "--where", "d")[0] == 2
    assert call("query", str(store), "--where", "d=big")[0] == 2
    assert call("query", str(store), "--by", "seed")[0] == 2
    assert call("query", str(store), "--format", "xml")[0] == 2
    assert call("frobnicate")[0] == 2
    # the reading commands name what is wrong with the store or its options
    for command in ("status", "query", "analyze"):
        code, _, err = call(command, str(tmp_path / "nothing.zarr"))
        assert code == 2 and "store" in err and "nothing.zarr" in err, (command, err)
        code, _, err = call(command, str(store), "--storage-option", "endpoint_url")
        assert code == 2 and "--storage-option = 'endpoint_url'" in err, (command, err)
        assert "KEY=VALUE" in err
    code, _, err = call("figures", "--store", str(store), "--storage-option", "x",
                        "--out", str(tmp_path / "figs"))
    assert code == 2 and "--storage-option" in err and not (tmp_path / "figs").exists()
    shutil.copytree(store, tmp_path / "foreign.zarr")
    (tmp_path / "foreign.zarr" / "zarr.json").write_text(
        '{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    code, _, err = call("analyze", str(tmp_path / "foreign.zarr"))
    assert code == 2 and "not written by mimflow" in err, err


def test_status(made, tmp_path):
    _, store = made
    code, out, _ = call("status", str(store))
    assert code == 0
    assert "units:     4 of 4 done (100%)" in out
    counts = dict(part.rsplit(" ", 1) for part in
                  out.split("status:    ")[1].split(" (neurons")[0].split(", "))
    assert sum(int(v) for v in counts.values()) == 10 * (2 + 5 + 2 + 5)
    assert "git " in out and "xarray" in out and "cli-test" in out
    partial = tmp_path / "partial.zarr"
    shutil.copytree(store, partial)
    os.remove(partial / "_mimflow" / "ledger" / "000002-0000000000.json")
    code, out, _ = call("status", str(partial))
    assert "3 of 4 done" in out and "missing:   1 units, e.g. 000002-0000000000" in out


def _rows(text: str, fmt: str) -> list[dict]:
    if fmt == "json":
        return json.loads(text)
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def test_query_equals_xarray_on_the_store(made):
    _, store = made
    ds = open_results(str(store))

    # one row per point: median escape time of the real (unpadded) neurons
    code, out, _ = call("query", str(store), "--format", "json")
    assert code == 0
    rows = _rows(out, "json")
    assert len(rows) == 4
    for row in rows:
        at = ds.sel(d=row["d"], k=row["k"])
        # (dask has no median over all axes: load, as query does)
        expected = at["escape_time"].where(at["neuron_mask"]).compute().median().item()
        assert row["median(escape_time)"] == expected and row["gamma"] == at["gamma"].item()

    # pooled over the points with k = 2, grouped by d, several statistics
    for stat in ("mean", "min", "max", "quantile:0.9", "count"):
        code, out, _ = call("query", str(store), "--where", "k=2", "--by", "d", "--var",
                            "t_final", "--stat", stat, "--format", "csv")
        assert code == 0
        rows = _rows(out, "csv")
        assert [r["d"] for r in rows] == [100, 1000]
        for row in rows:
            at = ds.sel(d=int(row["d"]), k=2)
            values = at["t_final"].where(at["neuron_mask"]).compute()
            expected = (values.quantile(0.9) if stat.startswith("quantile")
                        else getattr(values, stat)()).item()
            assert row[f"{stat}(t_final)"] == expected, stat

    # integer variable: padding (-1) is not counted; vector variable: index padding masked
    code, out, _ = call("query", str(store), "--var", "status", "--stat", "count", "--by", "k",
                        "--format", "json")
    assert {r["k"]: r["count(status)"] for r in _rows(out, "json")} == {2: 2 * 10 * 2,
                                                                         3: 2 * 10 * 5}
    code, out, _ = call("query", str(store), "--var", "u0", "--stat", "min", "--where", "d=1000",
                        "--format", "json")
    for row in _rows(out, "json"):
        at = ds.sel(d=1000, k=row["k"])
        mask = at["neuron_mask"] & at["index_mask"]
        assert row["min(u0)"] == float(at["u0"].where(mask).min())  # lazy, computed by dask
        assert not np.isnan(row["min(u0)"])


def test_query_on_fixed_parameters_and_table_output(made):
    _, store = made
    code, out, err = call("query", str(store), "--where", "teacher=h3", "--by", "k")
    assert code == 0 and out.splitlines()[0].split() == ["k", "points", "median(escape_time)"]
    assert len(out.splitlines()) == 3
    code, out, err = call("query", str(store), "--where", "teacher=h4")
    assert code == 0 and "no point matches" in err


def test_bad_stores_sizes_and_files_exit_2_without_a_traceback(made, tmp_path):
    spec, store = made
    for url, words in (("foo://x", "'foo' is not one"), ("memory://x", "memory:// lives")):
        code, _, err = call("run", str(spec), "--store", url)
        assert code == 2 and "--store" in err or "store" in err, err
        assert words in err and "Traceback" not in err
    code, _, err = call("validate", "/dev/zero")
    assert code == 2 and "/dev/zero" in err and "regular TOML file" in err
    code, _, err = call("validate", str(spec), "--memory-limit", "1e400")
    assert code == 2
    # seeds at their maximum in blocks of one: counted, refused for run, never enumerated
    big = tmp_path / "big.toml"
    big.write_text(SPEC.replace("seeds = 10\nblock_seeds = 4",
                                "seeds = 2147483648\nblock_seeds = 1"))
    for command in ("validate", "run"):
        code, _, err = call(command, str(big), "--store", str(tmp_path / "big.zarr")) \
            if command == "run" else call(command, str(big))
        assert code == 2 and "block_seeds = 1" in err and "8589934592" in err, err
    assert not (tmp_path / "big.zarr").exists()
    # a point whose one seed exceeds a worker's memory: refused before work starts
    huge = tmp_path / "huge.toml"
    huge.write_text(SPEC.replace("gamma = [1.0, 1.5]", "n = [1000000, 1]")
                    .replace('teacher = "h3"', 'teacher = "h3"\nloss = "mse"'))
    code, _, err = call("validate", str(huge), "--memory-limit", "4GiB")
    assert code == 2 and "block_seeds" in err and "even one seed needs" in err, err
    code, _, err = call("run", str(huge), "--store", str(tmp_path / "huge.zarr"),
                        "--scheduler", made_scheduler(made))
    assert code == 2 and "even one seed needs" in err, err
    assert not (tmp_path / "huge.zarr").exists()


def made_scheduler(made) -> str:
    """The scheduler the `made` store was written with (kept on the spec file's folder)."""
    return (made[0].parent / "scheduler.txt").read_text()


def test_figures_on_a_store_named_like_a_paper_sweep_without_its_parameters(made, tmp_path):
    spec, store = made
    renamed = tmp_path / "paper-fig1-gd.toml"
    renamed.write_text(SPEC.replace('name = "cli-test"', 'name = "paper-fig1-gd"'))
    target = tmp_path / "fig2.zarr"
    code, _, err = call("run", str(renamed), "--store", str(target), "--scheduler",
                        made_scheduler(made))
    assert code == 0, err
    code, _, err = call("figures", "--store", str(target), "--out", str(tmp_path / "figs"))
    assert code == 2 and "paper-fig1-gd" in err and "Traceback" not in err, err


def test_ctrl_c_stops_the_run_and_the_workers_quietly(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: exit 130, and no worker
    prints a KeyboardInterrupt traceback."""
    spec = tmp_path / "long.toml"
    spec.write_text(tiny_spec("long", seeds=400, block_seeds=2))
    store = tmp_path / "long.zarr"
    ledger_dir = store / "_mimflow" / "ledger"
    # Two of the four work units pass the gate (pipeline/_testhooks.py), the other two are
    # held after writing their data: the signal lands mid-run whatever the machine's speed
    # (the last two units took ~1 s after the second marker). The gate opens a second after
    # the signal, so the held units end as in a real Ctrl-C.
    gate = tmp_path / "gate"
    gate.write_text("2")

    def ready() -> bool:
        if ledger_dir.is_dir() and len(list(ledger_dir.glob("*.json"))) >= 2:
            threading.Timer(1.0, gate.unlink).start()
            return True
        return False

    code, text = interrupt_cli(["run", str(spec), "--store", str(store), "--workers", "2"],
                               ready, env={"MIMFLOW_TEST_GATE": str(gate)})
    assert code == 130, text
    assert "interrupted" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def test_validate_says_how_far_the_checking_of_a_big_spec_has_got(tmp_path, monkeypatch):
    import sweeps.spec

    monkeypatch.setattr(sweeps.spec, "PROGRESS_EVERY", 2)  # as for 10^5 of 10^6 points
    spec = tmp_path / "t.toml"
    spec.write_text(tiny_spec("t"))
    code, out, err = cli("validate", str(spec))
    assert code == 0, err
    assert f"mimflow: checked 2 of 4 points of {spec}" in err
    assert "points:        4" in out
