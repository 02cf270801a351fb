"""Shared fixtures and helpers for mimflow's tests."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ortho_group

from pipeline.store import open_results


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed generator, so every statistical test is deterministic."""
    return np.random.default_rng(20251128)


def random_frame(gram: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    """An explicit d x k frame with Gram ``gram`` in a *random* orientation.

    Independent of mimflow's own choice of basis (index vectors in the first k coordinates),
    so tests built on it check the reduction, not a coincidence of coordinates.
    """
    k = gram.shape[0]
    Q = ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
    R = np.linalg.cholesky(gram).T
    return Q[:, :k] @ R


def uniform_sphere(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """n explicit points uniform on S^{d-1} (rows)."""
    g = rng.standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


#: A small store of layout 1 (one chunk per block, no shards), written by mimflow before
#: work units existed, and its spec: old stores must keep working.
LEGACY_SPEC = Path(__file__).parent / "data" / "legacy_v1.toml"
LEGACY_STORE = Path(__file__).parent / "data" / "legacy_v1.zarr"


def tiny_spec(name: str, *, seeds: int = 10, block_seeds: int = 4,
              description: str | None = None, observe: str | None = "t_max = 1e6") -> str:
    """The small sweep the pipeline tests share: h3, d in {100, 1000}, (k, gamma) zipped.

    Four points, cheap to simulate; tests edit it with ``str.replace`` on its lines.
    """
    text = f'\nname = "{name}"\n'
    if description is not None:
        text += f'description = "{description}"\n'
    text += (f"seeds = {seeds}\nblock_seeds = {block_seeds}\n"
             '[params]\nteacher = "h3"\n[grid]\nd = [100, 1000]\n'
             "[[zip]]\nk = [2, 3]\ngamma = [1.0, 1.5]\n")
    if observe is not None:
        text += f"[observe]\n{observe}\n"
    return text


def data_bytes(path: str | Path, storage_options: dict | None = None) -> dict[str, bytes]:
    """Every per-trajectory data variable of a store, as raw bytes (bit-identity)."""
    ds = open_results(str(path), storage_options=storage_options)
    out = {name: ds[name].values.tobytes() for name in ds.data_vars
           if ds[name].dims[:2] == ("point", "seed")}
    assert set(out) >= {"u0", "u", "escape_time", "status"}
    return out


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``mimflow argv`` in this process; returns (exit code, stdout, stderr)."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(list(argv), out=out, err=err)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def run_spec(root: Path, name: str, text: str, scheduler: str) -> tuple[Path, Path, str]:
    """Write spec ``text`` to ``root/<name>.toml`` and run it into ``root/<name>.zarr``
    through ``mimflow run`` on ``scheduler`` (asserting exit 0); returns (spec, store,
    stderr)."""
    spec, store = root / f"{name}.toml", root / f"{name}.zarr"
    spec.write_text(text)
    code, _, err = cli("run", str(spec), "--store", str(store), "--scheduler", scheduler)
    assert code == 0, err
    return spec, store, err


@pytest.fixture(scope="module")
def scheduler():
    """Address of a Dask scheduler with in-process workers (two threads), per test module."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


def interrupt_cli(argv: list[str], ready: Callable[[], bool], env: dict | None = None,
                  poll: float = 0.05, sig: int = signal.SIGINT) -> tuple[int, str]:
    """Start ``mimflow argv`` in a new process group, wait until ``ready()`` (or the process
    ends), then send SIGINT to the whole group as a terminal's Ctrl-C does (or ``sig``:
    SIGKILL kills the driver and its embedded cluster with no chance to clean up); returns
    (exit code, combined output)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})}
    # The child starts with SIGINT's default action, as a terminal's foreground job does:
    # a test run started in the background by a non-interactive shell ignores SIGINT, and an
    # ignored SIGINT is inherited (the driver then rightly ignored the Ctrl-C and exited 0).
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(poll)
        os.killpg(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out.decode()
