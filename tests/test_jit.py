"""The compiled-kernel cache policy (``pipeline/engine/_jit.py``)."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.engine import _jit

ENGINE = Path(_jit.__file__).parent


def test_every_module_with_compiled_functions_keys_the_cache():
    """numba's cache is invalidated only by the decorated function's own file; a kernel that
    calls another module's compiled functions keeps stale machine code after that module is
    edited unless the module is in ``KERNEL_MODULES`` (the digest of the cache folder). An
    experiment's new module, left out, ran with an old constant baked in until this list
    had it."""
    compiled = {
        path.name for path in ENGINE.glob("*.py")
        if path.name != "_jit.py" and re.search(
            r"from \._jit import|import numba|from numba import", path.read_text())
    }
    uses_jit = {name for name in compiled
                if re.search(r"@njit|@jit|njit\(|by_model", (ENGINE / name).read_text())}
    assert uses_jit <= set(_jit.KERNEL_MODULES), sorted(uses_jit - set(_jit.KERNEL_MODULES))
    assert all((ENGINE / name).exists() for name in _jit.KERNEL_MODULES)
