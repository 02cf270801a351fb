"""The analysis commands of ``mimflow``: ``analyze``, ``figures`` and ``reproduce``.

Registered on the ``mimflow`` parser through the entry point ``mimflow.commands`` (see
``pyproject.toml`` and :mod:`pipeline.cli`); each handler returns an exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

import pandas as pd

from pipeline.cli import add_skip_damaged, add_storage_option, positive, storage_options

_ANALYZE_EXAMPLES = """\
examples:
  mimflow analyze results/stores/escape-scaling.zarr
  mimflow analyze coupon.zarr --out tables/
"""
_FIGURES_EXAMPLES = """\
examples:
  mimflow figures                                   # every store under results/stores
  mimflow figures --store results/stores/paper-fig2-bifurcation.zarr --out figs/
"""
_REPRODUCE_EXAMPLES = """\
examples:
  mimflow reproduce                                 # embedded LocalCluster, results/ here
  mimflow reproduce --out /scratch/mimflow --scheduler tcp://head:8786

Runs every sweep of sweeps/paper/ (resuming stores that exist), then writes
OUT/tables/*.csv, OUT/figures/*.png|pdf and OUT/report.md.
"""


def register(sub: argparse._SubParsersAction) -> dict:
    """Add the analysis subcommands to the ``mimflow`` subparsers ``sub``; returns their
    handlers by command name."""
    fmt = argparse.RawDescriptionHelpFormatter
    an = sub.add_parser("analyze", help="estimates from a store, as tables",
                        description="Run every estimator that applies to a store (escape-time "
                                    "scaling if d varies, beta_f if beta varies, coupon "
                                    "collector if n varies, ...) and print the tables; with "
                                    "--out also write them as CSV.",
                        epilog=_ANALYZE_EXAMPLES, formatter_class=fmt)
    an.add_argument("store", metavar="STORE", help="store path or fsspec URL")
    an.add_argument("--out", metavar="DIR", help="also write each table as DIR/<name>.csv")
    add_storage_option(an)
    add_skip_damaged(an)
    an.set_defaults(reads_data=True)

    fg = sub.add_parser("figures", help="draw the figures of existing stores",
                        description="Draw the paper's figures (and the extensions) from stores "
                                    "made by the sweeps of sweeps/paper/, recognised by their "
                                    "sweep name, plus the figures computed from the dynamics.",
                        epilog=_FIGURES_EXAMPLES, formatter_class=fmt)
    fg.add_argument("--store", metavar="PATH", nargs="+", action="extend", default=None,
                    help="stores to draw (default: every *.zarr under results/stores)")
    fg.add_argument("--out", metavar="DIR", default="results/figures",
                    help="output folder (default: results/figures)")
    add_storage_option(fg, "The same options serve every --store")
    add_skip_damaged(fg)
    fg.set_defaults(reads_data=True)

    rp = sub.add_parser("reproduce", help="the main job: every paper sweep, tables, figures, "
                                          "report",
                        description="Run every sweep of sweeps/paper/ (resuming what exists), "
                                    "then write tables, figures and report.md.",
                        epilog=_REPRODUCE_EXAMPLES, formatter_class=fmt)
    rp.add_argument("--out", metavar="DIR", default="results",
                    help="output folder (default: results)")
    rp.add_argument("--scheduler", metavar="ADDR",
                    help="address of a running Dask scheduler (default: an embedded "
                         "LocalCluster)")
    rp.add_argument("--workers", metavar="N", type=positive,
                    help="worker processes of the embedded cluster (default: CPU count)")
    # `run` itself is pipeline's command; a spec with [refine] needs the rounds of
    # analysis.refine, whose statistics come from the estimators here.
    return {"analyze": _analyze, "figures": _figures, "reproduce": _reproduce, "run": _run}


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``mimflow run``: a spec with ``[refine]`` runs its rounds, any other spec a sweep."""
    from pipeline import cli as pcli

    from .refine import run_refined

    spec = pcli.load(args.spec, err)
    if spec.refine is None:
        return pcli._run(args, out, err, spec)
    report = run_refined(spec, **pcli.run_options(args, spec), out=err)
    return pcli.run_exit_code(report)


def _reading(args: argparse.Namespace, err: TextIO) -> dict:
    """How a reading command opens stores: what to do with damaged blocks, where warnings go."""
    return {"damaged": "skip" if args.skip_damaged else "raise",
            "warn": lambda text: err.write(f"mimflow {args.command}: warning: {text}\n")}


def _analyze(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pipeline.store import open_results

    from .tables import analyze

    ds = open_results(args.store, storage_options=storage_options(args.storage_option),
                      **_reading(args, err)).load()
    tables = analyze(ds)
    with pd.option_context("display.width", 200, "display.max_columns", 30,
                           "display.max_rows", 500):
        for name, table in tables.items():
            out.write(f"\n== {name} ==\n{table.to_string(index=False)}\n")
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            table.to_csv(folder / f"{name}.csv", index=False)
        out.write(f"\nwrote {len(tables)} tables to {folder}\n")
    return 0


def _figures(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pipeline.store import open_results

    from . import figures as F
    from .report import FIGURES
    from .reproduce import spec_name

    options = storage_options(args.storage_option)
    paths = args.store or sorted(str(p) for p in Path("results/stores").glob("*.zarr"))
    folder = Path(args.out)
    written = []
    for path in paths:
        ds = open_results(path, storage_options=options, **_reading(args, err))
        name = spec_name(ds)
        if name not in FIGURES:
            out.write(f"{path}: sweep {name!r} has no figure builder (known: "
                      f"{', '.join(FIGURES)})\n")
            continue
        try:
            written += FIGURES[name](ds.load(), folder)
        except KeyError as e:  # the paper sweep's name, another sweep's parameters
            from pipeline.errors import SpecError

            raise SpecError("store", path, f"a store of the paper sweep {name!r} (sweeps/paper/"
                            f"{name}.toml), which has the parameter {e.args[0]!r}",
                            hint="this store's sweep has the name but not that parameter: "
                                 "rename its sweep, or draw it with `mimflow analyze`"
                            ) from None
    written += F.figure6(folder) + F.figure_hessian(folder)
    for p in written:
        out.write(f"{p}\n")
    return 0


def _reproduce(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .reproduce import reproduce

    try:
        report = reproduce(Path(args.out), scheduler=args.scheduler, workers=args.workers,
                           stream=err)
    except RuntimeError as e:
        err.write(f"mimflow reproduce: {e}\n")
        return 1
    err.write(f"\nmimflow reproduce: done; open {report}\n")
    return 0
