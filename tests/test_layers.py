"""The architecture's one-way arrows (docs/design.md, "Architecture"), checked on the source.

engine <- sweeps <- pipeline (orchestration) <- analysis: a module may import from its own
layer and the layers to its left, never to its right; ``pipeline.errors`` is the shared
vocabulary every layer may use.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each layer may import from the project (prefixes of module names).
ALLOWED = {
    "pipeline.engine": ("pipeline.engine", "pipeline.errors"),
    "sweeps": ("sweeps", "pipeline.engine", "pipeline.errors"),
    "pipeline": ("pipeline", "sweeps"),
    "analysis": ("analysis", "pipeline", "sweeps"),
}
#: Heavy third-party packages the engine must not pull in.
ENGINE_FORBIDDEN = ("dask", "distributed", "zarr", "fsspec")


def _layer(module: str) -> str:
    return "pipeline.engine" if module.startswith("pipeline.engine") else module.split(".")[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _sources(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


@pytest.mark.parametrize("path", _sources("pipeline", "sweeps", "analysis"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    layer = _layer(module)
    for line, name in _imports(path):
        if name.split(".")[0] not in ("pipeline", "sweeps", "analysis"):
            if layer == "pipeline.engine":
                assert name.split(".")[0] not in ENGINE_FORBIDDEN, f"{path}:{line} imports {name}"
            continue
        assert name.startswith(ALLOWED[layer]), (
            f"{path.relative_to(ROOT)}:{line} imports {name}: layer {layer} may import only "
            f"from {', '.join(ALLOWED[layer])}")


def test_the_checker_sees_a_violation(tmp_path):
    """The rule above can fail: an engine module importing the store is caught."""
    bad = ROOT / "pipeline" / "engine" / "_layers_probe.py"
    bad.write_text("from ..store import open_results\n")
    try:
        names = [name for _, name in _imports(bad)]
        assert names == ["pipeline.store"]
        assert not names[0].startswith(ALLOWED["pipeline.engine"])
    finally:
        bad.unlink()


@pytest.mark.parametrize("module", ["sweeps.spec", "pipeline.errors", "pipeline"])
def test_light_imports_do_not_load_the_kernels(module):
    """Parsing a spec or catching a SpecError loads neither numba nor Dask nor zarr."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('numba', 'dask', 'distributed', 'zarr') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "[]", f"import {module} loaded {out}"


def test_lazy_package_attributes_resolve():
    import pipeline

    assert callable(pipeline.simulate) and callable(pipeline.open_results)
    assert pipeline.SpecError.__module__ == "pipeline.errors"
    with pytest.raises(AttributeError):
        pipeline.no_such_name  # noqa: B018
