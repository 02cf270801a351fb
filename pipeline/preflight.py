"""Before a run writes: what a store location holds, and whether a spec may use it.

:func:`check_store` decides, touching nothing, whether a run creates the store or resumes it,
and refuses what it must not touch (another spec's store without ``--overwrite``, foreign
data ever, a store whose bookkeeping is lost); :func:`store_attrs` is what a new store
records about its spec and provenance.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import ledger
from . import store as zstore
from .engine.integrate import convergence_rule
from .errors import DamagedFile, SpecError
from .ledger import StoreRef
from .provenance import git_revision, utc_now, versions

if TYPE_CHECKING:
    from sweeps.spec import Spec


def check_store(spec: Spec, ref: StoreRef, *, overwrite: bool = False) -> str:
    """Decide what to do with the location ``ref`` for ``spec``, touching nothing.

    Returns ``"create"`` (nothing there, an interrupted creation, or ``overwrite``) or
    ``"resume"`` (a store of this very spec). Raises :class:`SpecError` for a store of
    another spec (unless ``overwrite``) and, always, for anything that is not a mimflow
    store: ``--overwrite`` never deletes data mimflow did not write.

    Without ``overwrite`` nothing that holds data is ever replaced: a store whose
    ``initialized.json`` is missing or damaged (copied with another tool, or damaged) is
    refused when it holds any block chunk or ledger marker, with the ways out. Only a
    creation that mimflow itself interrupted (``creating.json``, written before it deletes
    anything) or one that left metadata and nothing else is created again.
    """
    creating = _has(ref, ledger.CREATING)
    attrs = zstore.read_attrs(ref)
    if attrs is None:
        if creating or not ref.exists() or _is_empty_dir(ref):
            return "create"
        raise SpecError("store", ref.url, "a new location or an existing mimflow store",
                        hint="something else is there; choose another --store")
    if "mimflow_layout" not in attrs:
        raise SpecError("store", ref.url, "a new location or an existing mimflow store",
                        hint="a zarr store not written by mimflow is there; choose another "
                             "--store (--overwrite does not delete foreign data)")
    if overwrite or creating:
        return "create"  # asked for, or a creation (maybe an --overwrite) was interrupted
    if attrs.get("spec_hash") != spec.hash:
        raise SpecError(
            "store", ref.url,
            f"a store of this spec ({spec.name!r}, spec hash {spec.hash})",
            hint=f"it holds sweep {attrs.get('name')!r} (spec hash {attrs.get('spec_hash')}, "
                 f"created {attrs.get('created')}); pass --overwrite to replace it or "
                 "--store to write elsewhere")
    ways_out = (f"run `mimflow verify {ref.url} --repair` to check it and adopt it, pass "
                "--overwrite to discard it, or --store to write elsewhere")
    try:
        init = ledger.read_json(ref, ledger.INITIALIZED)
    except DamagedFile as e:
        raise SpecError("store", ref.url, "a healthy mimflow store of this spec",
                        hint=f"its bookkeeping file {e.path} {e.problem}; {ways_out}"
                        ) from None
    if init is None:
        held = _held_data(ref)
        if not held:
            return "create"  # creation was interrupted before the metadata was complete
        raise SpecError("store", ref.url, "a healthy mimflow store of this spec",
                        hint=f"it holds {held} but no {ledger.INITIALIZED} (a copy made "
                             "without mimflow's _mimflow folder, or a damaged store), so "
                             f"nothing says which of its blocks are complete; {ways_out}")
    if init.get("spec_hash") != spec.hash:
        raise SpecError("store", ref.url, "a healthy mimflow store of this spec",
                        hint=f"its {ledger.INITIALIZED} names spec hash "
                             f"{init.get('spec_hash')!r}, its attributes {spec.hash!r}; "
                             f"{ways_out}")
    return "resume"


def _has(ref: StoreRef, key: str) -> bool:
    fs, root = ref.fs()
    try:
        return fs.exists(ref.path(key, root))
    except OSError:
        return False


def _held_data(ref: StoreRef) -> str:
    """What a store holds that a re-creation would delete (``"12 chunks of u0, ... and 8
    ledger markers"``), or ``""`` when it holds only metadata."""
    from .verify import chunk_sizes

    names = [v.name for v in zstore.VARIABLES]
    chunks = chunk_sizes(ref, names)
    markers = ledger.done_ids(ref)
    parts = []
    if chunks:
        parts.append(f"{len(chunks)} data chunks")
    if markers:
        parts.append(f"{len(markers)} ledger markers")
    return " and ".join(parts)


def _is_empty_dir(ref: StoreRef) -> bool:
    """True for an empty folder, or one holding only mimflow's own bookkeeping folder (the
    run lock, or what a run killed before it created the store left there)."""
    fs, root = ref.fs()
    try:
        if not fs.isdir(root):
            return False
        names = {n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)}
    except FileNotFoundError:
        return True
    return names <= {ledger.BOOK}


def convergence_rules(spec: Spec) -> dict[str, str]:
    """``{"loss/method": rule}`` for every (loss, method) the sweep's points use."""
    return {f"{pr.point.loss}/{pr.point.method}": convergence_rule(pr.point.loss, pr.point.method)
            for pr in spec.points.profiles}


def store_attrs(spec: Spec) -> dict[str, Any]:
    """The store's root attributes: the spec (text and identity) and provenance."""
    return {
        "mimflow_layout": zstore.LAYOUT_VERSION,
        "name": spec.name,
        "description": spec.description,
        "spec_file": spec.source,
        "spec_text": spec.text,
        "spec_hash": spec.hash,
        "seeds": spec.seeds,
        "root_seed": spec.root_seed,
        "block_seeds": spec.block_seeds,
        "points": len(spec.points),
        "blocks": spec.n_blocks,
        # coordinate names (a parameter that is also a data variable is renamed: loss_type)
        "swept": json.dumps([zstore.coord_name(n) for n in spec.swept]),
        "index": json.dumps([zstore.coord_name(n) for n in spec.index]),
        "fixed_params": json.dumps(spec.fixed, sort_keys=True, default=str),
        "warnings": json.dumps([f"{w.category}: {w.message} ({len(w.points)} of "
                                f"{len(spec.points)} points)" for w in spec.warnings]),
        # Which rule decided status 0 (per loss and method), so a store reads on its own.
        "convergence_rules": json.dumps(convergence_rules(spec), sort_keys=True),
        "versions": json.dumps(versions(), sort_keys=True),
        "git_revision": git_revision(),
        "created": utc_now(),
    }
