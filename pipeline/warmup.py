"""Compile the kernels a sweep needs once per machine, before its blocks are dispatched.

Without this every worker process compiles the same numba kernels at the same time in its first
block (two workers: twice the CPU for the same minute of compilation; a laptop with 8 workers:
eight times). :func:`warm_cluster` instead runs :func:`pipeline.engine.warm.warm` on the
workers of each host for exactly the kernel kinds ``(loss, method, backend)`` of the sweep's
points, each kind on one of them (the kinds split by their compile times, ``warm.split_kinds``;
the reduced MSE flow as two units, its explicit kernel and its stage: on 2 cores the stage's
~55 s compile runs beside the explicit kernel's ~17 s and the other kinds' ~33 s, where the
whole MSE flow's ~72 s ran beside the others'), and waits for it; numba writes the compiled
code to the machine's cache (``pipeline/engine/_jit.py``), from which every other worker
process on that host loads it in its first block. Kinds share some small functions, which the
workers that compile different kinds then both compile. Workers on other machines (SLURM,
Kubernetes) are warmed the same way, each host with its own cache; the Kubernetes image
compiles at build time (``cluster/Dockerfile``), so its warm-up only loads. The driver itself
compiles nothing (it may run on a login node without the workers' CPU).

A warm-up that fails is reported and the run goes on: each block then compiles what it
needs, as before. A worker that joins later (an adaptive cluster, a new host) compiles in
its first block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TextIO

from .progress import _clock

if TYPE_CHECKING:
    from sweeps.spec import Spec


def sweep_kinds(spec: Spec) -> list[tuple[str, str, str]]:
    """The kernel kinds ``(loss, method, backend)`` the points of ``spec`` use."""
    from .engine.warm import kernel_kind

    return sorted({kernel_kind(pr.point) for pr in spec.points.profiles})


def _warm_here(kinds: list[tuple[str, str, str]], snapshots: bool) -> dict[str, Any]:
    """The warm-up task: one worker of a host compiles ``kinds``."""
    import socket

    from .engine.warm import warm

    return {**warm(kinds, snapshots), "host": socket.gethostname()}


def workers_by_host(client: Any) -> dict[str, list[str]]:
    """The worker addresses of each host of the cluster (empty while no worker is up)."""
    hosts: dict[str, list[str]] = {}
    for addr, info in sorted(client.scheduler_info().get("workers", {}).items()):
        hosts.setdefault(str(info.get("host", addr)), []).append(addr)
    return hosts


def slots(client: Any) -> int:
    """How many blocks the cluster runs at once (its worker threads; at least 1)."""
    workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


#: Longest wait for the warm-up before the blocks are dispatched anyway.
WARM_TIMEOUT = 900.0


def warm_cluster(client: Any, kinds: list[tuple[str, str, str]], snapshots: bool,
                 out: TextIO, timeout: float = WARM_TIMEOUT) -> float | None:
    """Warm the kernels of ``kinds``, split over the workers of each host (see the module),
    and say so on ``out``. Returns the seconds spent when something was compiled, else ``None``."""
    import time

    from distributed import wait

    from .engine.warm import split_kinds

    hosts = workers_by_host(client)
    if not hosts or not kinds:
        return None
    tasks = []
    for addrs in hosts.values():
        groups = split_kinds(kinds, len(addrs))
        tasks += zip(addrs[:len(groups)], groups, strict=True)
    names = ", ".join("/".join(k) for k in kinds)
    out.write(f"mimflow: compiling kernels (once per machine, {len(hosts)} "
              f"machine{'s' if len(hosts) != 1 else ''}): {names}\n")
    out.flush()
    t0 = time.perf_counter()
    # Loose restrictions: a warm-up whose worker is lost (restarted by its nanny, say) runs
    # elsewhere instead of waiting for a worker that will never come back.
    futures = [client.submit(_warm_here, group, snapshots, workers=[a],
                             allow_other_workers=True, pure=False,
                             key=f"mimflow-warm-{a}-{time.time_ns()}") for a, group in tasks]
    try:
        # as_current: distributed.wait runs on the default client, which need not be ``client``
        # in a process holding several (see pipeline.execute._execute).
        with client.as_current():
            wait(futures, timeout=timeout)
    except TimeoutError:
        pass  # the blocks compile for themselves (reported below)
    seconds = time.perf_counter() - t0
    compiled, failed = 0, []
    for fut in futures:
        if fut.status == "pending":
            client.cancel(fut)
            failed.append(f"not finished after {_clock(timeout)}")
        elif fut.status == "finished":
            compiled += fut.result()["compiled"]
        else:
            failed.append(f"{type(fut.exception()).__name__}: {fut.exception()}")
        fut.release()
    if failed:
        out.write(f"mimflow: warning: compiling the kernels ahead of the blocks failed "
                  f"({failed[0]}); each worker compiles what its blocks need\n")
    if compiled:
        out.write(f"mimflow: kernels compiled in {_clock(seconds)}; workers load them from "
                  "the cache\n")
        return seconds
    out.write(f"mimflow: kernels loaded from the cache in {_clock(seconds)}\n")
    return None
