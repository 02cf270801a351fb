"""Test hooks read by :func:`pipeline.worker.run_unit` on the workers (tests only).

Fault-tolerance tests run real ``dask worker`` processes, so they cannot monkeypatch the
code a block runs; they set environment variables in the workers instead (at start, or with
``client.run(set_env, {...})``). Unset, every hook is a no-op costing one environment lookup
per block.

``MIMFLOW_TEST_GATE=<path>``
    While the file ``<path>`` exists, a block that has written its data waits before writing
    its ledger marker, after recording ``<path>-held/<block id>`` (holding the worker's pid).
    A test thus knows which worker is in the most delicate moment of a block (chunks
    written, completion not recorded) and can kill it, or kill the driver, there; deleting
    the file lets every held block go on. If the file holds a number N, the first N blocks
    to arrive pass (each takes a ticket ``<path>-tickets/<i>``, created exclusively), so a
    test can let exactly N blocks finish. No timing is involved.
``MIMFLOW_TEST_FAIL_BLOCKS=<block id>[:<n>],...``
    Make the listed blocks raise ``RuntimeError`` before computing: on their first ``n``
    attempts, or on every attempt without ``:n``. Attempts are counted with one file per
    attempt in ``MIMFLOW_TEST_ATTEMPTS_DIR`` (required for ``:n``; optional otherwise),
    which also lets a test see how many times Dask ran the block.
``MIMFLOW_TEST_REMOVE_DELAY=<seconds>``
    The driver waits this long after deleting each file of a store it replaces
    (``--overwrite``), so that a test can interrupt it halfway through, without timing luck.
"""

from __future__ import annotations

import os
import time

GATE = "MIMFLOW_TEST_GATE"
FAIL = "MIMFLOW_TEST_FAIL_BLOCKS"
ATTEMPTS = "MIMFLOW_TEST_ATTEMPTS_DIR"
REMOVE_DELAY = "MIMFLOW_TEST_REMOVE_DELAY"
#: A held block gives up waiting after this long (a test that forgot its gate).
MAX_HOLD = 600.0


def set_env(values: dict[str, str | None]) -> None:
    """Set (or, for ``None``, unset) environment variables in this process; for
    ``client.run(set_env, {...})`` on workers."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _claim(path: str) -> bool:
    """Create ``path`` exclusively: True for the one process (of any) that created it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def _count_attempt(folder: str, block_id: str) -> int:
    """Record one more attempt of ``block_id``; returns its number (1, 2, ...)."""
    os.makedirs(folder, exist_ok=True)
    n = 1
    # O_EXCL: concurrent attempts on two workers get different numbers
    while not _claim(os.path.join(folder, f"{block_id}.{n}")):
        n += 1
    return n


def before_block(block_id: str) -> None:
    """Raise for a block listed in ``MIMFLOW_TEST_FAIL_BLOCKS`` (see the module)."""
    wanted = os.environ.get(FAIL)
    if not wanted:
        return
    for item in wanted.split(","):
        name, _, times = item.strip().partition(":")
        if name != block_id:
            continue
        folder = os.environ.get(ATTEMPTS)
        attempt = _count_attempt(folder, block_id) if folder else 0
        if not times or attempt <= int(times):
            raise RuntimeError(f"test hook {FAIL}: block {block_id} fails "
                               f"(attempt {attempt or '?'})")


def after_write(block_id: str) -> None:
    """Wait at the gate ``MIMFLOW_TEST_GATE`` while it is closed (see the module)."""
    gate = os.environ.get(GATE)
    if not gate or not os.path.exists(gate):
        return
    try:
        with open(gate) as fh:
            passes = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        passes = 0
    if passes:
        tickets = f"{gate}-tickets"
        os.makedirs(tickets, exist_ok=True)
        if any(_claim(os.path.join(tickets, str(i))) for i in range(1, passes + 1)):
            return  # one of the first N: pass
    held = f"{gate}-held"
    os.makedirs(held, exist_ok=True)
    tmp = os.path.join(held, f".{block_id}.{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(tmp, os.path.join(held, block_id))  # the test never reads half a pid
    deadline = time.monotonic() + MAX_HOLD
    while os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)


def after_remove() -> None:
    """Wait ``MIMFLOW_TEST_REMOVE_DELAY`` seconds (see the module); unset, nothing."""
    delay = os.environ.get(REMOVE_DELAY)
    if delay:
        time.sleep(float(delay))
