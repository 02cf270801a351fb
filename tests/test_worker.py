"""The worker side of a run: a work unit's task is small, carries exactly its points, and a
unit whose points resolve differently on the worker is refused, not stored."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from pipeline import ledger
from pipeline import store as zstore
from pipeline.execute import tasks_for
from pipeline.ledger import StoreRef
from pipeline.preflight import store_attrs
from pipeline.worker import BlockError, run_unit
from sweeps.spec import parse_spec

from conftest import data_bytes, tiny_spec

WIDE = """
name = "wide"
seeds = 2
unit_points = 600
[params]
teacher = "h3"
k = 2
d = 100
[grid]
escape_threshold = {linspace = [0.5, 0.9, 1200]}
[observe]
t_max = 1e-3
"""


def test_a_unit_task_carries_its_points_in_a_few_bytes_each():
    spec = parse_spec(WIDE)
    layout = zstore.Layout.for_spec(spec)
    tasks = list(tasks_for(spec, StoreRef.parse("/nowhere"), layout, "run"))
    assert [(t.unit.p0, t.unit.p1) for t in tasks] == [(0, 600), (600, 1200)]
    for task in tasks:
        for row in (0, 1, 599):
            assert task.points.params(row) == spec.points.params(task.unit.p0 + row)
        # one float and a little per point; per-point dictionaries took ~130 bytes each
        assert len(pickle.dumps(task)) < 20 * 600, len(pickle.dumps(task))
    assert tasks[1].points.first == spec.describe_point(600)
    assert tasks[1].points.first_hash == spec.points.hash(600)


def test_a_unit_whose_points_resolve_to_other_hashes_is_refused(tmp_path):
    spec = parse_spec(tiny_spec("w", seeds=4, block_seeds=4))
    ref = StoreRef.parse(str(tmp_path / "w.zarr"))
    layout = zstore.create(ref, spec, store_attrs(spec))
    task = next(tasks_for(spec, ref, layout, "run"))
    forged = dataclasses.replace(task, points=dataclasses.replace(task.points,
                                                                  digest="0" * 16))
    with pytest.raises(BlockError, match="other content hashes"):
        run_unit(forged)
    assert ledger.get_json(ref, ledger.marker(task.id)) is None  # nothing recorded
    record = run_unit(task)  # the true points: computed and recorded
    assert record["point_hash"] == spec.points.hash(task.unit.p0)
    assert ledger.get_json(ref, ledger.marker(task.id)) is not None
    assert data_bytes(tmp_path / "w.zarr")  # readable
