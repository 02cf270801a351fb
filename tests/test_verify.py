"""Store integrity: damaged stores are detected, reported by block, repaired by re-running,
and nothing stored is deleted without --overwrite.

One tiny store is made once (through ``mimflow run``); every case damages its own copy.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import xarray as xr

from pipeline import ledger, verify
from pipeline.ledger import StoreRef
from pipeline.lock import LOCK, RunLock
from pipeline.preflight import check_store
from pipeline.store import open_results
from sweeps.spec import load_spec

from conftest import cli, interrupt_cli, run_spec, tiny_spec

#: Work units of one block each (12), so that a test damages one unit's shards and no other.
SPEC = tiny_spec("verify-test").replace("block_seeds = 4\n",
                                        "block_seeds = 4\nunit_points = 1\nunit_seeds = 4\n")
#: A unit whose escape_time shard is stored (some neuron escaped) in the tiny sweep.
BLOCK = "000000-0000000004"
BLOCK_LABEL = "unit 000000-0000000004 (point d=100, k=2, gamma=1.0; seeds 4..7)"


call = cli


def files(path: Path) -> dict[str, bytes]:
    """Every file of a store but the bookkeeping folder, with its bytes."""
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            p = Path(root) / name
            rel = str(p.relative_to(path))
            if not rel.startswith(ledger.BOOK):
                out[rel] = p.read_bytes()
    return out


def chunks(path: Path) -> dict[str, bytes]:
    """The data chunks of a store (the blocks' own bytes)."""
    return {k: v for k, v in files(path).items() if "/c/" in k and
            k.split("/")[0] in {"u0", "u", "escape_time", "t_final", "steps", "status", "loss"}}


@pytest.fixture(scope="module")
def original(tmp_path_factory, scheduler):
    """(spec file, store): a complete, healthy store, never modified by a test."""
    spec, store, _ = run_spec(tmp_path_factory.mktemp("verify"), "original", SPEC, scheduler)
    return spec, store


@pytest.fixture
def store(original, tmp_path):
    """A copy of the original store, for one test to damage."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(original[1], copy)
    return copy


def run(original, store, scheduler, *extra: str) -> tuple[int, str, str]:
    return call("run", str(original[0]), "--store", str(store), "--scheduler", scheduler,
                *extra)


def test_the_block_under_test_stores_an_escape_time_chunk(original):
    assert (original[1] / "escape_time/c/0/1/0").is_file()
    record = ledger.done_records(StoreRef.parse(original[1]))[BLOCK]
    size, digest = record["chunks"]["escape_time"]
    assert size == (original[1] / "escape_time/c/0/1/0").stat().st_size and len(digest) == 64


def test_a_healthy_store_verifies(original):
    code, out, err = call("verify", str(original[1]))
    assert code == 0, out + err
    assert "checked:   12 done units of 12" in out and "result:    healthy" in out


def test_a_deleted_chunk_is_reported_skipped_on_request_and_restored_by_rerunning(
        original, store, scheduler):
    os.remove(store / "escape_time/c/0/1/0")
    code, out, _ = call("status", str(store))
    assert code == 0 and "11 of 12 done" in out and f"DAMAGED:   {BLOCK_LABEL}" in out
    assert "escape_time/c/0/1/0 is missing" in out
    code, out, _ = call("verify", str(store))
    assert code == 1 and BLOCK_LABEL in out and "is missing" in out
    # reading refuses, naming the block, instead of reading NaN as "never escaped"
    code, _, err = call("query", str(store), "--stat", "count")
    assert code == 2 and BLOCK_LABEL in err and "--skip-damaged" in err
    code, _, err = call("analyze", str(store))
    assert code == 2 and BLOCK_LABEL in err
    code, out, err = call("query", str(store), "--stat", "count", "--skip-damaged")
    assert code == 0 and "damaged blocks are left out" in err and BLOCK_LABEL in err
    code, _, err = run(original, store, scheduler)
    assert code == 0, err
    assert f"warning: {BLOCK_LABEL} is computed again" in err
    assert "11 of 12 work units already done" in err and "computed 1 work units" in err
    assert files(store) == files(original[1])  # byte-identical to the undamaged run
    assert call("verify", str(store))[0] == 0


def test_a_truncated_chunk_is_named_not_a_codec_traceback_and_rerunning_repairs(
        original, store, scheduler):
    path = store / "u/c/0/1/0/0"
    path.write_bytes(path.read_bytes()[:20])
    for argv in (("query", str(store)), ("analyze", str(store)),
                 ("figures", "--store", str(store), "--out", str(store.parent / "f"))):
        code, out, err = call(*argv)
        assert code == 2, (argv, err)
        assert BLOCK_LABEL in err and "u/c/0/1/0/0 has 20 bytes" in err
        assert "Traceback" not in err
    code, _, err = run(original, store, scheduler)
    assert code == 0 and "computed 1 work units" in err, err
    assert files(store) == files(original[1])


def test_a_valid_but_wrong_chunk_is_caught_by_checksum_and_repaired(original, store,
                                                                   scheduler):
    # the chunk of another block: decodes fine, same size class, other numbers
    other = (store / "status/c/1/1/0").read_bytes()
    mine = store / "status/c/0/1/0"
    if len(other) != len(mine.read_bytes()):  # same size, so a listing cannot see it
        other = mine.read_bytes()[:-1] + bytes([mine.read_bytes()[-1] ^ 1])
    mine.write_bytes(other)
    code, out, _ = call("verify", str(store))
    assert code == 1 and BLOCK_LABEL in out and "checksum mismatch" in out
    code, out, _ = call("verify", str(store), "--repair")
    assert code == 0 and "marker moved to _mimflow/damaged/" in out and "mimflow run" in out
    assert (store / ledger.SET_ASIDE).is_dir()  # set aside, not deleted
    code, out, _ = call("status", str(store))
    assert "11 of 12 done" in out and "DAMAGED" not in out
    code, _, err = run(original, store, scheduler)
    assert code == 0 and "computed 1 work units" in err, err
    assert files(store) == files(original[1])


def test_a_marker_without_its_data_is_not_believed(original, store, scheduler):
    for var in ("u0", "u", "escape_time", "t_final", "steps", "status", "loss"):
        shutil.rmtree(store / f"{var}/c/0/1")  # the whole seed range of point 0
    code, out, _ = call("status", str(store))
    assert "11 of 12 done" in out and BLOCK_LABEL in out
    code, _, err = run(original, store, scheduler)
    assert code == 0 and "computed 1 work units" in err, err
    assert files(store) == files(original[1])


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b"{\"block\": 1", b"\xff\xfe"])
def test_a_damaged_marker_makes_status_and_run_agree(original, store, scheduler, content):
    (store / ledger.marker(BLOCK)).write_bytes(content)
    code, out, err = call("status", str(store))
    assert code == 0, err
    assert "11 of 12 done" in out and "ledger marker" in out and BLOCK in out
    code, _, err = run(original, store, scheduler)
    assert code == 0, err
    assert "11 of 12 work units already done" in err and "computed 1 work units" in err
    assert "its ledger marker" in err and ledger.marker(BLOCK) in err
    assert "12 of 12 done" in call("status", str(store))[1]
    assert files(store) == files(original[1])


def test_a_store_without_initialized_json_is_refused_and_can_be_adopted(original, store,
                                                                        scheduler):
    (store / ledger.INITIALIZED).unlink()
    before = files(store)
    code, _, err = run(original, store, scheduler)
    assert code == 2 and "initialized.json" in err and "--repair" in err, err
    assert "--overwrite" in err and "data chunks" in err
    assert files(store) == before  # nothing deleted
    code, out, _ = call("status", str(store))
    assert "0 of 12 done" in out and "initialized.json is missing" in out
    code, out, _ = call("verify", str(store), "--repair")
    assert code == 0 and "initialized.json again" in out, out
    code, _, err = run(original, store, scheduler)
    assert code == 0 and "nothing to do" in err, err
    assert files(store) == files(original[1])


@pytest.mark.parametrize("content", [b"[]", b"", b"{\"spec_hash\": 3}"])
def test_a_damaged_initialized_json_is_named(original, store, scheduler, content):
    (store / ledger.INITIALIZED).write_bytes(content)
    before = files(store)
    code, _, err = run(original, store, scheduler)
    assert code == 2 and str(store / ledger.INITIALIZED) in err or "initialized.json" in err
    assert "Traceback" not in err and files(store) == before
    code, out, err = call("status", str(store))
    assert code == 0 and "initialized.json" in out and "DAMAGED" in out, err


def test_a_damaged_run_record_is_named_and_ignored(store):
    (record,) = (store / ledger.RUNS).glob("*.json")
    record.write_text("[")
    code, out, err = call("status", str(store))
    assert code == 0 and f"run record {record} is not valid JSON" in out, out + err
    assert "12 of 12 done" in out


def test_an_xarray_copy_is_refused_not_wiped(original, tmp_path, scheduler):
    copy = tmp_path / "xcopy.zarr"
    with open_results(str(original[1])) as ds:
        xr.open_zarr(original[1], consolidated=None).to_zarr(copy, zarr_format=3,
                                                             consolidated=False)
        del ds
    before = files(copy)
    code, _, err = run(original, copy, scheduler)
    assert code == 2 and "initialized.json" in err and "data chunks" in err, err
    assert files(copy) == before
    assert call("query", str(copy), "--stat", "count")[0] == 0  # still readable
    # adopted by verify --repair (its arrays match the spec), then every block is computed
    # again, to the same numbers: nothing said which blocks were complete
    code, out, _ = call("verify", str(copy), "--repair")
    assert code == 0 and "initialized.json again" in out, out
    code, _, err = run(original, copy, scheduler)
    assert code == 0 and "computed 12 work units" in err, err
    original_data = open_results(str(original[1]))
    adopted = open_results(str(copy))
    for name in ("u0", "u", "escape_time", "status", "steps"):
        assert adopted[name].values.tobytes() == original_data[name].values.tobytes(), name


def test_no_path_through_run_deletes_a_block_without_overwrite(original, store, scheduler):
    """Whatever bookkeeping is damaged, every chunk that was stored survives a run without
    --overwrite: refused, or recomputed to the same bytes."""
    stored = chunks(store)
    damage = [
        lambda: (store / ledger.INITIALIZED).unlink(),
        lambda: (store / ledger.INITIALIZED).write_text("[]"),
        lambda: shutil.rmtree(store / ledger.LEDGER),
        lambda: (store / ledger.marker(BLOCK)).write_text(""),
        lambda: (store / "zarr.json").unlink(),
    ]
    for i, hurt in enumerate(damage):
        hurt()
        code, _, err = run(original, store, scheduler)
        assert code in (0, 2), (i, err)
        assert chunks(store) == stored, i
        shutil.rmtree(store)
        shutil.copytree(original[1], store)


def test_interrupted_overwrite_is_recognized_and_finished(original, store, scheduler,
                                                          monkeypatch):
    from pipeline import store as zstore

    real = os.unlink
    count = {"n": 0}

    def unlink(path, *a, **k):  # Ctrl-C halfway through deleting the old store
        count["n"] += 1
        if count["n"] == 20:
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(zstore.os, "unlink", unlink)
    code, _, err = run(original, store, scheduler, "--overwrite")
    monkeypatch.undo()
    assert code == 130, err
    code, out, _ = call("status", str(store))
    assert "0 of 12 done" in out and "interrupted" in out
    code, _, err = call("query", str(store))
    assert code == 2 and "interrupted" in err
    # the original spec again, without --overwrite: the creation is finished, not resumed
    code, _, err = run(original, store, scheduler)
    assert code == 0 and "creating" in err and "computed 12 work units" in err, err
    created = {k: v for k, v in files(store).items() if k != "zarr.json"}  # a new time
    assert created == {k: v for k, v in files(original[1]).items() if k != "zarr.json"}


def test_temporary_files_of_killed_writers_are_removed(original, store, scheduler):
    old = time.time() - 3600
    partial = store / "u/c/0/0/0.0123abcd.partial"
    tmp = store / ledger.LEDGER / ".0123abcd.tmp"
    for p in (partial, tmp):
        p.write_bytes(b"half")
        os.utime(p, (old, old))
    code, out, _ = call("status", str(store))
    assert "temporary: 2 files" in out
    code, _, err = run(original, store, scheduler)
    assert code == 0 and "removed 2 temporary files" in err, err
    assert not partial.exists() and not tmp.exists()
    partial.write_bytes(b"half")
    code, out, _ = call("verify", str(store), "--repair")
    assert code == 0 and "removed temporary file" in out and not partial.exists()


def test_a_lock_record_with_nonsense_fields_is_judged_without_a_traceback(original, store,
                                                                         scheduler):
    record = {"run": "x", "token": "t", "host": "elsewhere", "pid": "p", "heartbeat": time.time(),
              "ttl": "soon", "pid_started": "then"}
    (store / LOCK).write_text(json.dumps(record))
    code, _, err = run(original, store, scheduler)
    assert code == 3 and "another mimflow run" in err, err
    assert RunLock(StoreRef.parse(store), "me").is_dead(record) is False
    (store / LOCK).write_text(json.dumps({**record, "heartbeat": "noon"}))
    assert RunLock(StoreRef.parse(store), "me").is_dead(json.loads((store / LOCK).read_text()))
    code, _, err = run(original, store, scheduler)
    assert code == 0 and "took over the lock" in err, err


def test_verify_refuses_while_a_run_holds_the_store(original, store):
    with RunLock(StoreRef.parse(store), "someone"):
        code, _, err = call("verify", str(store), "--repair")
    assert code == 3 and "another mimflow run" in err
    assert not (store / ledger.SET_ASIDE).exists()


def test_legacy_markers_without_checksums_are_checked_by_decoding(original, store):
    ref = StoreRef.parse(store)
    for block_id, record in ledger.done_records(ref).items():
        record.pop("chunks")
        ledger.put_json(ref, ledger.marker(block_id), record)
    assert call("verify", str(store))[0] == 0
    path = store / "u/c/0/1/0/0"
    path.write_bytes(path.read_bytes()[:20])
    code, out, _ = call("verify", str(store))
    assert code == 1 and BLOCK_LABEL in out and "cannot be decoded" in out
    # a reading command: the codec error is traced back to its block
    code, _, err = call("query", str(store), "--var", "u", "--stat", "mean")
    assert code == 2 and BLOCK_LABEL in err and "Traceback" not in err, err
    (store / "status/c/0/0/0").unlink()
    code, out, _ = call("status", str(store))
    assert "unit 000000-0000000000" in out and "status/c/0/0/0 is missing" in out


def test_a_creation_marker_means_the_store_is_created_again(original, store):
    spec = load_spec(original[0])
    ref = StoreRef.parse(store)
    assert check_store(spec, ref) == "resume"
    ledger.put_json(ref, ledger.CREATING, {"spec_hash": "x"})
    assert check_store(spec, ref) == "create"  # an interrupted creation: given up already


def test_verify_time_is_reported(original):
    code, out, _ = call("verify", str(original[1]))
    assert code == 0 and " s (checksums" in out
    health = verify.inspect(StoreRef.parse(original[1]),
                            dict(xr.open_zarr(original[1], consolidated=None).attrs),
                            full=True)
    assert health.healthy and len(health.done) == 12


def test_ctrl_c_during_an_overwrite_of_a_real_run(original, store, scheduler, tmp_path):
    """`mimflow run --overwrite` interrupted (SIGINT to its process group) while deleting the
    old store: the half-deleted store is reported as such, never as complete, and the original
    spec run again creates it anew, identical to an uninterrupted run."""
    before = len(files(store))
    code, text = interrupt_cli(
        ["run", str(original[0]), "--store", str(store), "--overwrite", "--workers", "1"],
        lambda: len(files(store)) < before - 10,  # deleting, file by file
        env={"MIMFLOW_TEST_REMOVE_DELAY": "0.05"})
    assert code == 130, text
    assert "Traceback" not in text
    code, out, _ = call("status", str(store))
    assert "0 of 12 done" in out and "interrupted" in out, out
    code, _, err = run(original, store, scheduler)
    assert code == 0 and "creating" in err and "computed 12 work units" in err, err
    created = {k: v for k, v in files(store).items() if k != "zarr.json"}
    assert created == {k: v for k, v in files(original[1]).items() if k != "zarr.json"}
