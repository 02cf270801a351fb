"""The main job: run every paper sweep, then write tables, figures and ``report.md``.

``reproduce`` runs (or resumes) each spec of ``sweeps/paper/`` and of ``sweeps/sgd/`` (online
SGD beside the flow, beyond the paper) into ``OUT/stores/<name>.zarr``
on one Dask client, then hands the stores to :func:`analysis.report.write_outputs`, which
writes ``OUT/tables/*.csv``, ``OUT/figures/*.{png,pdf}`` and ``OUT/report.md``.
"""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path
from typing import TextIO

import xarray as xr

from .report import FIGURES, write_outputs
from .tables import analyze

__all__ = ["FIGURES", "analyze", "default_specs", "paper_specs", "reproduce", "sgd_specs",
           "spec_name", "write_outputs"]


def _specs(folder: str) -> list[Path]:
    root = resources.files("sweeps") / folder
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def paper_specs() -> list[Path]:
    """The spec files of ``sweeps/paper`` (installed with the package), in name order."""
    return _specs("paper")


def sgd_specs() -> list[Path]:
    """The spec files of ``sweeps/sgd``: online SGD beside the flow (beyond the paper)."""
    return _specs("sgd")


def default_specs() -> list[Path]:
    """What ``reproduce`` runs by default: the paper's sweeps, then the SGD ones."""
    return paper_specs() + sgd_specs()


def spec_name(ds: xr.Dataset) -> str:
    """The sweep name recorded in a store's attributes (empty if unknown)."""
    return str(ds.attrs.get("name", ""))


def reproduce(out: Path, *, scheduler: str | None = None, workers: int | None = None,
              specs: list[Path] | None = None, stream: TextIO | None = None) -> Path:
    """Run every paper sweep (resuming what exists) and write stores, tables, figures and
    ``report.md`` under ``out``. Returns the report's path. Raises ``RuntimeError`` naming
    the sweeps whose blocks are missing (after writing what could be written)."""
    from pipeline.cluster import open_client
    from pipeline.execute import run_sweep
    from pipeline.warmup import sweep_kinds, warm_cluster
    from sweeps.spec import load_spec

    from .refine import run_refined

    stream = stream if stream is not None else sys.stderr
    out = Path(out)
    (out / "stores").mkdir(parents=True, exist_ok=True)
    specs = specs if specs is not None else default_specs()
    loaded = [load_spec(p) for p in specs]  # every spec validated before anything runs
    timings: dict[str, float] = {}
    failed: list[str] = []
    t_start = time.perf_counter()
    with open_client(scheduler, workers, stream) as client:
        # Every kernel kind of the paper's sweeps compiled up front, the kinds split over the
        # workers of each host (pipeline.warmup): the MSE flow's compile then runs beside
        # the others' instead of in its own sweep's turn; each sweep's warm-up only loads.
        warm_cluster(client, sorted({k for s in loaded for k in sweep_kinds(s)}),
                     any(s.snapshots is not None for s in loaded), stream)
        for i, spec in enumerate(loaded, 1):
            stream.write(f"\n[{i}/{len(loaded)}] {spec.name}: {spec.description}\n")
            t0 = time.perf_counter()
            # A spec with [refine] runs in rounds (analysis.refine), each an ordinary run.
            run = run_sweep if spec.refine is None else run_refined
            report = run(spec, str(out / "stores" / f"{spec.name}.zarr"), client=client,
                         out=stream)
            timings[spec.name] = time.perf_counter() - t0
            if not report.ok:
                failed.append(spec.name)
    stream.write("\nmimflow: analysing stores and drawing figures\n")
    report_path = write_outputs(out, [s.name for s in loaded], timings=timings,
                                total=time.perf_counter() - t_start, stream=stream)
    if failed:
        raise RuntimeError("blocks are missing in " + ", ".join(failed)
                           + "; run `mimflow reproduce` again to resume them")
    return report_path
