"""The ``mimflow`` command: ``run``, ``validate``, ``status``, ``verify``, ``query`` and
``parameters``, plus the commands that other packages register under the entry-point group
``mimflow.commands`` (``analyze``, ``figures`` and ``reproduce`` from ``analysis/cli.py``).

A plugin is a function ``register(subparsers) -> {command: handler}``; it adds its
sub-parsers and returns a handler ``(args, out, err) -> exit code`` for each. This module
imports no plugin by name, so the dependency runs one way (``analysis`` uses the helpers
here, as Dask's CLI plugins do with ``dask_cli``).

Exit codes: 0 success; 1 a run ended with blocks missing (failures: re-run to resume), the
store could not be written, or ``verify`` found damage;
2 bad input (an invalid spec, a store that may not be used, a bad argument), with nothing
created or modified; 3 the store is being written by another live run (refused, nothing
touched); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import TextIO

from .errors import SpecError
from .lock import StoreLocked

EXIT_OK, EXIT_MISSING, EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a process ended by SIGPIPE

_RUN_EXAMPLES = """\
examples:
  mimflow run sweeps/example.toml
  mimflow run sweeps/example.toml --store results/example.zarr --workers 8
  mimflow run sweeps/example.toml --store s3://bucket/example.zarr --scheduler tcp://head:8786
  mimflow run sweeps/example.toml --scheduler tls://head:8786 \\
      --tls-ca-file certs/ca.pem --tls-cert certs/client.pem --tls-key certs/client-key.pem
  mimflow run sweeps/example.toml --cluster cluster/slurm.yaml --store /shared/example.zarr
  mimflow run sweeps/example.toml --store s3://bucket/example.zarr \\
      --storage-option endpoint_url=http://127.0.0.1:9000
  mimflow run sweeps/example.toml --overwrite      # discard the store and start afresh

Re-running the same command resumes: blocks already in the store are skipped. One run at a
time per store: a second one is refused (exit 3) while the first is alive. See
cluster/README.md for SLURM, Kubernetes, TLS and shared storage.
"""
_VALIDATE_EXAMPLES = """\
examples:
  mimflow validate sweeps/example.toml
  mimflow validate sweeps/example.toml --memory-limit 4GiB   # memory of one worker
  mimflow validate sweeps/example.toml --cluster cluster/slurm.yaml
"""
_STATUS_EXAMPLES = """\
examples:
  mimflow status example.zarr
  mimflow status s3://bucket/example.zarr --storage-option endpoint_url=http://127.0.0.1:9000
"""
_VERIFY_EXAMPLES = """\
examples:
  mimflow verify example.zarr              # every chunk of every done block, by checksum
  mimflow verify example.zarr --repair     # set damaged blocks aside, then re-run the spec

Exit codes: 0 healthy (or repaired), 1 damage found (nothing changed without --repair),
2 not a store or cannot be repaired, 3 the store is being written by another live run.
"""
_QUERY_EXAMPLES = """\
examples:
  mimflow query example.zarr                              # median escape time per point
  mimflow query example.zarr --where k=2 --by d --stat mean
  mimflow query example.zarr --var status --stat count --format csv
  mimflow query example.zarr --where d=1000 --stat quantile:0.9 --format json
"""


def _parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser of every command, and each command's handler."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mimflow", formatter_class=fmt,
        description="Sweeps of gradient-flow simulations of two-layer networks on Gaussian "
                    "multi-index models, run on Dask into labeled zarr stores.",
        epilog="examples:\n  mimflow validate sweeps/example.toml\n"
               "  mimflow run sweeps/example.toml --workers 2\n"
               "  mimflow status example.zarr\n"
               "  mimflow query example.zarr --by d --stat median\n\n"
               "exit codes: 0 ok, 1 blocks missing after a run, 2 bad input, 3 store in "
               "use by another run, 130 interrupted")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run (or resume) a sweep into a store",
                         description="Run a sweep spec on Dask into a zarr store, or resume "
                                     "it.", epilog=_RUN_EXAMPLES, formatter_class=fmt)
    run.add_argument("spec", metavar="SPEC", help="sweep spec (TOML)")
    run.add_argument("--store", metavar="PATH",
                     help="store path or fsspec URL (default: ./<spec name>.zarr)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDR",
                       help="address of a running Dask scheduler, tcp://host:port or "
                            "tls://host:port (default: an embedded LocalCluster on "
                            "127.0.0.1)")
    where.add_argument("--cluster", metavar="FILE",
                       help="start the workers from a cluster configuration file (YAML "
                            "data, e.g. cluster/slurm.yaml; needs mimflow[slurm])")
    run.add_argument("--workers", metavar="N", type=positive,
                     help="worker processes of the embedded cluster (default: CPU count)")
    run.add_argument("--tls-ca-file", metavar="PEM",
                     help="CA certificate that signed the scheduler's certificate "
                          "(with tls://)")
    run.add_argument("--tls-cert", metavar="PEM", help="this client's certificate (with tls://)")
    run.add_argument("--tls-key", metavar="PEM", help="this client's private key (with tls://)")
    run.add_argument("--retries", metavar="N", type=_count, default=None,
                     help="re-run a block that raised up to N times before reporting it "
                          "(default: 2)")
    add_storage_option(run, "Options travel to the workers with each block: keep secrets "
                            "in the environment or credential files instead")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing mimflow store at PATH instead of refusing a "
                          "different spec (or resuming the same one)")

    val = sub.add_parser("validate", help="check a spec and show what a run would do",
                         description="Validate a sweep spec without running it: points, "
                                     "trajectories, blocks, memory per block, store size.",
                         epilog=_VALIDATE_EXAMPLES, formatter_class=fmt)
    val.add_argument("spec", metavar="SPEC", help="sweep spec (TOML)")
    mem = val.add_mutually_exclusive_group()
    mem.add_argument("--memory-limit", metavar="SIZE", type=_size,
                     help="memory limit of one worker (e.g. 4GiB) to check a block "
                          "against (default: the embedded cluster's: this machine's memory "
                          "over --workers)")
    mem.add_argument("--cluster", metavar="FILE",
                     help="check against the workers of this cluster configuration file")
    val.add_argument("--workers", metavar="N", type=positive,
                     help="worker processes of the embedded cluster (default: CPU count)")

    st = sub.add_parser("status", help="progress and provenance of a store",
                        description="Blocks done out of total, status counts, provenance.",
                        epilog=_STATUS_EXAMPLES, formatter_class=fmt)
    st.add_argument("store", metavar="STORE", help="store path or fsspec URL")
    add_storage_option(st)

    vf = sub.add_parser("verify", help="check every block of a store, optionally repair",
                        description="Check a store: every chunk of every block marked done "
                                    "against the checksum the block recorded (stores written "
                                    "before checksums: that every chunk decodes), ledger "
                                    "markers, bookkeeping files and temporary files left by "
                                    "killed writers. Lists damaged blocks by point and seed "
                                    "range. With --repair, their markers are set aside (kept "
                                    "under _mimflow/damaged/) so that re-running the spec "
                                    "computes exactly those blocks again; nothing else is "
                                    "deleted but temporary files.",
                        epilog=_VERIFY_EXAMPLES, formatter_class=fmt)
    vf.add_argument("store", metavar="STORE", help="store path or fsspec URL")
    vf.add_argument("--repair", action="store_true",
                    help="set damaged blocks aside for the next run, remove temporary files, "
                         "write a missing initialized.json again when the arrays match")
    add_storage_option(vf)

    q = sub.add_parser("query", help="summary statistics from a store",
                       description="Reduce one variable over seeds and neurons, per point "
                                   "or per group of points. Padding, missing blocks and NaN "
                                   "(e.g. an escape that never happened) are skipped; "
                                   "'count' counts the values that remain.",
                       epilog=_QUERY_EXAMPLES, formatter_class=fmt)
    q.add_argument("store", metavar="STORE", help="store path or fsspec URL")
    add_storage_option(q)
    q.add_argument("--where", metavar="PARAM=VALUE", nargs="+", action="extend", default=[],
                   help="keep points with this parameter value (repeatable)")
    q.add_argument("--var", default="escape_time", metavar="NAME",
                   help="data variable (default: escape_time)")
    q.add_argument("--stat", default="median", metavar="STAT",
                   help="median | mean | min | max | count | quantile:Q (default: median)")
    q.add_argument("--by", metavar="PARAM", nargs="+", action="extend", default=None,
                   help="group by these parameters (default: every swept parameter)")
    q.add_argument("--format", default="table", choices=("table", "csv", "json"),
                   help="output format (default: table)")
    add_skip_damaged(q)
    q.set_defaults(reads_data=True)

    sub.add_parser("parameters", help="the parameters a sweep point takes",
                   description="Every parameter of a sweep point: default, what is allowed, "
                               "meaning (Markdown).", formatter_class=fmt)

    handlers = {"run": _run, "validate": _validate, "status": _status, "verify": _verify,
                "query": _query,
                "parameters": _parameters}
    for plugin in _plugins():
        handlers.update(plugin(sub))
    return parser, handlers


#: Entry-point group of the commands other packages add to ``mimflow``.
PLUGIN_GROUP = "mimflow.commands"


def _plugins() -> list:
    """The ``register`` functions of the installed command plugins, in name order."""
    from importlib.metadata import entry_points

    found = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        try:
            found.append(ep.load())
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break mimflow
            sys.stderr.write(f"mimflow: warning: command plugin {ep.name!r} ({ep.value}) "
                             f"could not be loaded: {type(e).__name__}: {e}\n")
    if not found:  # e.g. the source is used without installing it: say where they went
        sys.stderr.write("mimflow: note: no command plugins are installed, so analyze, "
                         "figures and reproduce are missing; install mimflow (pip install -e "
                         ".) to register them\n")
    return found


def add_storage_option(parser: argparse.ArgumentParser, note: str = "") -> None:
    """Add the repeatable ``--storage-option KEY=VALUE`` flag (read by
    :func:`storage_options`) to a command that opens a store."""
    parser.add_argument("--storage-option", metavar="KEY=VALUE", action="append", default=[],
                        help="fsspec option of the store, e.g. endpoint_url=http://host:9000 "
                             "(repeatable; VALUE is JSON or text; a.b=v sets a nested key)"
                             + (f". {note}" if note else ""))


def add_skip_damaged(parser: argparse.ArgumentParser) -> None:
    """Add ``--skip-damaged`` to a command that reads a store's data (whose codec errors
    :func:`main` then explains by naming the damaged block)."""
    parser.add_argument("--skip-damaged", action="store_true",
                        help="read a store with damaged blocks (see `mimflow verify`) as if "
                             "they were never computed, with a warning naming them (default: "
                             "refuse, exit 2)")


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid N = {text!r}: allowed is an integer >= 1")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid N = {text!r}: allowed is an integer >= 0")
    return value


def _size(text: str) -> int:
    from dask.utils import parse_bytes

    try:
        value = int(parse_bytes(text))
    except (ValueError, TypeError, OverflowError):  # 1e400 is inf bytes
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid SIZE = {text!r}: allowed is a memory "
                                         "size such as 4GiB, 512MB or 2e9")
    return value


def storage_options(items: list[str]) -> dict:
    """``["endpoint_url=http://h:9000", "client_kwargs.region_name=eu"]`` as fsspec storage
    options (values are JSON where they parse as JSON, text otherwise)."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError("--storage-option", item, "KEY=VALUE (e.g. "
                            "endpoint_url=http://127.0.0.1:9000)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, last = key.strip().split(".")
        target = out
        for name in parents:
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise SpecError("--storage-option", item, "keys that are either a value "
                                "or a table, not both")
        target[last] = value
    return out


def main(argv: list[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Entry point of the ``mimflow`` console script; returns the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser, handlers = _parser()
    args = parser.parse_args(argv)
    try:
        try:
            return handlers[args.command](args, out, err)
        except (SpecError, StoreLocked, OSError, KeyboardInterrupt):
            raise
        except Exception as e:  # a damaged chunk fails in a codec that names no chunk
            if not getattr(args, "reads_data", False):
                raise
            from .verify import explain_read_error

            paths = [args.store] if isinstance(args.store, str) else (args.store or [])
            explain_read_error(paths, storage_options(args.storage_option), e)
            raise
    except SpecError as e:
        err.write(f"mimflow {args.command}: error: {e}\n")
        return EXIT_BAD_INPUT
    except StoreLocked as e:
        err.write(f"mimflow {args.command}: refused: {e}\n")
        return EXIT_LOCKED
    except BrokenPipeError:  # the reader went away (`mimflow query ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as e:  # an unwritable store, a full disk: say so, without a traceback
        err.write(f"mimflow {args.command}: error: {type(e).__name__}: {e}\n")
        return EXIT_MISSING
    except KeyboardInterrupt:
        err.write("mimflow: interrupted\n")
        return EXIT_INTERRUPTED


def load(path: str, err: TextIO):
    """The spec at ``path`` (:func:`sweeps.spec.load_spec`), saying on ``err`` how far the
    checking of its points has got when it has many."""
    import time

    from sweeps.spec import load_spec

    from .progress import _clock

    t0 = time.monotonic()

    def progress(done: int, total: int) -> None:
        elapsed = time.monotonic() - t0
        left = elapsed * (total - done) / done
        err.write(f"mimflow: checked {done} of {total} points of {path} "
                  f"({_clock(elapsed)} elapsed, ~{_clock(left)} left)\n")
        err.flush()

    return load_spec(path, progress=progress)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO, spec=None) -> int:
    """``mimflow run`` of a spec without ``[refine]`` (``spec``: already loaded)."""
    from .execute import run_sweep

    spec = spec if spec is not None else load(args.spec, err)
    if spec.refine is not None:  # the analysis plugin takes `run` over for these
        raise SpecError("refine", args.spec, "a spec without [refine] when the analysis "
                        "command plugin is not installed (it runs the refinement rounds)",
                        hint="install mimflow (pip install -e .)")
    report = run_sweep(spec, **run_options(args, spec), out=err)
    return run_exit_code(report)


def run_options(args: argparse.Namespace, spec) -> dict:
    """The keyword arguments of ``run_sweep`` that ``mimflow run``'s options give (checked:
    a bad combination raises :class:`SpecError`)."""
    from .cluster import tls_security
    from .execute import DEFAULT_RETRIES

    if (args.scheduler or args.cluster) and args.workers:
        raise SpecError("--workers", args.workers, "unset with --scheduler or --cluster (that "
                        "cluster has its own workers)")
    tls = (args.tls_ca_file, args.tls_cert, args.tls_key)
    security = None
    if any(tls):
        if not args.scheduler:
            raise SpecError("--tls-ca-file", args.tls_ca_file, "used with --scheduler "
                            "tls://... (the embedded cluster listens on 127.0.0.1 only; "
                            "a cluster file configures its own security)")
        security = tls_security(*tls)
    if (args.store or "").startswith("memory://"):
        raise SpecError("--store", args.store, "a location the workers can reach (a path or "
                        "an object-store URL)", hint="memory:// lives inside one process; "
                        "the workers, separate processes, would each see an empty one")
    return {"store": args.store or f"{spec.name}.zarr", "scheduler": args.scheduler,
            "cluster": args.cluster, "security": security, "workers": args.workers,
            "retries": DEFAULT_RETRIES if args.retries is None else args.retries,
            "overwrite": args.overwrite,
            "storage_options": storage_options(args.storage_option)}


def run_exit_code(report) -> int:
    """The exit code of ``mimflow run`` after a run with this ``RunReport``."""
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_MISSING


def describe(spec, layout) -> str:
    """What ``mimflow validate`` prints for a valid spec (``layout``: its store layout)."""
    from dask.utils import format_bytes

    from .resources import block_memory_bytes, unit_memory_bytes

    per_point = -(-spec.seeds // spec.block_seeds)
    lines = [f"spec {spec.source}: sweep {spec.name!r} is valid"]
    if spec.description:
        lines.append(f"  description: {spec.description}")
    swept = ", ".join(spec.swept) or "nothing (a single point)"
    lines += [
        f"  points:        {len(spec.points)} (swept: {swept})",
        f"  trajectories:  {spec.n_trajectories} ({len(spec.points)} points x {spec.seeds} "
        f"seeds; {spec.n_neuron_trajectories} neuron paths)",
        f"  blocks:        {spec.n_blocks} ({per_point} per point, {spec.block_seeds} "
        f"seeds each)",
        f"  memory/block:  ~{format_bytes(block_memory_bytes(spec, layout))} on a worker "
        f"(results {format_bytes(layout.block_nbytes())})",
        f"  work units:    {layout.n_units} ({layout.unit_points} points x "
        f"{layout.unit_seeds} seeds each: one task, one shard per variable; memory "
        f"~{format_bytes(unit_memory_bytes(spec, layout))})",
        f"  store size:    <= {format_bytes(layout.store_nbytes())} uncompressed "
        f"(n padded to {layout.n_max}, k to {layout.k_max}"
        + (f", {len(layout.times)} snapshot times" if layout.times is not None else "")
        + ")",
        "  variables:     " + ", ".join(v.name for v in layout.variables),
        "  fixed:         " + (", ".join(f"{k}={v}" for k, v in spec.fixed.items()) or "-"),
    ]
    if spec.refine is not None:
        r = spec.refine
        lines.append(f"  refine:        {r.rule.describe()}; the grid first with {r.seeds} "
                     f"seeds per point ({len(spec.points) * r.seeds} trajectories), then "
                     f"rounds (at most {r.max_rounds}) of new points, and of more seeds (up "
                     f"to {r.max_seeds}) where a point is undecided")
    for w in spec.warnings:
        lines.append(f"  warning ({w.category}, {len(w.points)} of {len(spec.points)} points): "
                     f"{w.message}")
    return "\n".join(lines) + "\n"


def memory_check(spec, layout, args: argparse.Namespace) -> str:
    """The ``worker memory`` line of ``mimflow validate`` and, when a block does not fit, a
    warning with the largest ``block_seeds`` that does."""
    from dask.utils import format_bytes

    from .cluster import default_worker_memory, embedded_workers
    from .resources import memory_advice, memory_refusal

    if args.memory_limit:
        limit, where = args.memory_limit, "--memory-limit"
    elif args.cluster:
        from .cluster import load_cluster_config

        config = load_cluster_config(args.cluster)
        limit, where = config.worker_memory(), f"from {args.cluster}"
        if limit is None:
            return (f"  worker memory: not set in {args.cluster} (its memory: option); "
                    "not checked\n")
    else:
        n = embedded_workers(args.workers)
        limit = default_worker_memory(n)
        where = f"embedded cluster: this machine's memory over {n} workers"
    refusal = memory_refusal(spec, layout, limit, where)
    if refusal is not None:
        raise refusal
    line = f"  worker memory: {format_bytes(limit)} ({where})\n"
    advice = memory_advice(spec, layout, limit, where)
    if advice:
        line += f"  warning (memory): {advice}\n"
    return line


def _validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .resources import check_block_count, check_unit_count
    from .store import Layout

    spec = load(args.spec, err)
    check_block_count(spec)  # computed, never enumerated: 2^31 blocks fit in no memory
    layout = Layout.for_spec(spec)
    check_unit_count(spec, layout)  # computed, never enumerated
    out.write(describe(spec, layout))
    out.write(memory_check(spec, layout, args))
    return EXIT_OK


def status_text(path: str, options: dict | None = None) -> str:
    """What ``mimflow status`` prints: blocks done/total, status counts, provenance, and
    what a quick look finds damaged (``options``: fsspec storage options of the store)."""
    from . import ledger
    from .store import STATUS_FLAGS, open_store
    from .verify import inspect

    ref, attrs = open_store(path, options)
    health = inspect(ref, attrs)
    points, seeds, size = attrs["points"], attrs["seeds"], attrs["block_seeds"]
    word = "unit" if "unit_points" in attrs else "block"
    ids = health.block_ids
    missing = health.missing
    plan = refine_plan(ref)
    if plan is not None:  # an adaptive sweep runs only the planned seed blocks
        planned = set(plan.block_ids(size))
        ids = [i for i in ids if i in planned]
        missing = [i for i in missing if i in planned]
    done = [i for i in ids if i in health.done] if not health.initialized else []
    counts: Counter = Counter()
    for i in done:
        counts.update(health.done[i].get("status_counts", {}))
    order = [STATUS_FLAGS[k] for k in sorted(STATUS_FLAGS) if k >= 0]
    try:
        versions = json.loads(attrs.get("versions", "{}"))
        versions = versions if isinstance(versions, dict) else {}
    except (json.JSONDecodeError, TypeError):
        versions = {}
    lines = [
        f"store:     {ref.url}",
        f"sweep:     {attrs.get('name')!r}"
        + (f" - {attrs['description']}" if attrs.get("description") else ""),
        f"spec:      {attrs.get('spec_file')} (spec hash {attrs.get('spec_hash')})",
        f"points:    {points} (swept: {', '.join(json.loads(attrs.get('swept', '[]'))) or '-'})"
        f", {seeds} seeds, {size} seeds per block"
        + (f", work units of {attrs['unit_points']} points x {attrs['unit_seeds']} seeds"
           if "unit_points" in attrs else " (layout 1: one chunk per block)"),
        f"{word + 's:':<10} {len(done)} of {len(ids)} done "
        f"({100 * len(done) / max(len(ids), 1):.0f}%)"
        + (" (planned by the refinement)" if plan is not None else ""),
        "status:    " + ", ".join(f"{name} {counts.get(name, 0)}" for name in order)
        + f" (neurons in done {word}s)",
        f"created:   {attrs.get('created')}, git {attrs.get('git_revision')}",
        "versions:  " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    runs, bad_runs = ledger.read_runs(ref)
    if runs:
        last = runs[-1]
        lines.append(f"runs:      {len(runs)} (last {last.get('run')}: computed "
                     f"{len(last.get('computed', []))}, failed {len(last.get('failed', []))})")
    if missing:
        lines.append(f"missing:   {len(missing)} {word}s, e.g. " + ", ".join(missing[:5]))
    for problem in health.problems(limit=10):
        lines.append(f"DAMAGED:   {problem}")
    if not health.healthy:
        lines.append(f"           (run `mimflow verify {ref.url} --repair`, then the spec "
                     "again)")
    for problem in bad_runs:
        lines.append(f"warning:   run record {problem} (ignored: it is history, not data)")
    if health.temporaries:
        lines.append(f"temporary: {len(health.temporaries)} files left by killed writers "
                     "(removed by the next run or `mimflow verify --repair`)")
    for w in json.loads(attrs.get("warnings", "[]")):
        lines.append(f"warning:   {w}")
    return "\n".join(lines) + "\n" + refine_text(ref)


def refine_plan(ref):
    """The refinement plan (``sweeps.refine.Plan``) of an adaptive sweep's store, or
    ``None`` for any other store."""
    from sweeps.refine import Plan

    from . import ledger

    record = ledger.get_json(ref, ledger.REFINE)
    return None if record is None else Plan.from_json(record)


def refine_text(ref) -> str:
    """The ``refine:`` lines of ``mimflow status`` for an adaptive sweep's store (rounds,
    points added, per group the bracket and its status); empty for any other store."""
    from sweeps.refine import summary_text

    plan = refine_plan(ref)
    return "" if plan is None else summary_text(plan)


def _status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    out.write(status_text(args.store, storage_options(args.storage_option)))
    return EXIT_OK


def _parameters(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .engine.params import describe_parameters

    out.write(describe_parameters())
    return EXIT_OK


def _verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import time

    from .execute import new_run_id
    from .lock import RunLock
    from .store import open_store
    from .verify import inspect, repair

    ref, attrs = open_store(args.store, storage_options(args.storage_option))
    t0 = time.perf_counter()
    if not args.repair:
        health = inspect(ref, attrs, full=True)
    else:  # under the run lock: no run writes while markers are set aside
        with RunLock(ref, f"verify-{new_run_id()}"):
            health = inspect(ref, attrs, full=True)
            actions = repair(ref, health) if not health.healthy or health.temporaries else []
    seconds = time.perf_counter() - t0
    word = "units" if "unit_points" in attrs else "blocks"
    out.write(f"store:     {ref.url}\n"
              f"checked:   {len(health.done) + len(health.damaged)} done {word} of "
              f"{len(health.block_ids)} in {seconds:.1f} s (checksums; stores written before "
              "checksums: decoding)\n")
    if health.missing:
        out.write(f"missing:   {len(health.missing)} {word} never completed (a run computes "
                  "them)\n")
    for problem in health.problems():
        out.write(f"DAMAGED:   {problem}\n")
    for path in health.temporaries if not args.repair else []:
        out.write(f"temporary: {path}\n")
    if args.repair:
        for line in actions:
            out.write(f"repaired:  {line}\n")
        if actions and not health.healthy:
            out.write(f"next:      mimflow run {attrs.get('spec_file')} --store {ref.url}   "
                      "# computes the blocks set aside\n")
        out.write("result:    " + ("healthy\n" if health.healthy else "repaired\n"))
        return EXIT_OK
    if health.healthy and not health.temporaries:
        out.write("result:    healthy\n")
        return EXIT_OK
    out.write(f"result:    damaged; `mimflow verify {ref.url} --repair` sets the damaged "
              "blocks aside for the next run\n")
    return EXIT_MISSING


def _query(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .query import format_result, parse_stat, parse_where, query
    from .store import open_results

    where = parse_where(args.where)
    parse_stat(args.stat)  # bad input fails before the store is opened
    options = storage_options(args.storage_option)
    ds = open_results(args.store, storage_options=options,
                      damaged="skip" if args.skip_damaged else "raise",
                      warn=lambda text: err.write(f"mimflow query: warning: {text}\n"))
    result = query(ds, where=where,
                   var=args.var, stat=args.stat, by=args.by)
    if not result.rows:
        err.write("mimflow query: no point matches the conditions\n")
    out.write(format_result(result, args.format))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
