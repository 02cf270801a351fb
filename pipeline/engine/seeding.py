"""Random streams: one per (root seed, initial-condition key, seed index).

Streams come from :class:`numpy.random.SeedSequence` with the seed index as spawn key, so a
trajectory's draws never depend on which other seeds are simulated with it, in what batch,
on which worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import SpecError

#: Sub-stream of a seed: the initial condition in k dimensions, and the explicit direction of
#: the part orthogonal to span(V) that only the full-d backend needs.
STREAM_INITIAL, STREAM_FULL = 0, 1
#: Sub-stream of the MSE loss's extra draw: the Bartlett factor of the neurons' perp parts.
STREAM_ORTHOGONAL = 2
#: Sub-stream of online SGD's samples (``sgd.chain_states``), one per neuron.
STREAM_SGD = 3


def validate_root_seed(root_seed: int) -> int:
    """Check that ``root_seed`` is a non-negative integer."""
    if isinstance(root_seed, bool) or not isinstance(root_seed, int | np.integer) \
            or root_seed < 0:
        raise SpecError("root_seed", root_seed, "an integer >= 0")
    return int(root_seed)


#: Largest seed index + 1 (and largest seed count) accepted: 2^31, as in sweep specs.
SEED_LIMIT = 2**31


def validate_seeds(seeds: Iterable[int] | int) -> np.ndarray:
    """Seed indices as an int64 array (an int ``m`` means ``range(m)``); distinct, in
    ``[0, 2^31)``, one-dimensional. Anything else raises :class:`SpecError` naming ``seeds``."""
    allowed = "a count in [1, 2^31] or a 1-d list of distinct integer indices in [0, 2^31)"
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        if not 1 <= int(seeds) <= SEED_LIMIT:
            raise SpecError("seeds", seeds, allowed)
        seeds = range(int(seeds))
    if isinstance(seeds, str | bytes | bool | float) or seeds is None:
        raise SpecError("seeds", seeds, allowed)
    try:
        arr = seeds if isinstance(seeds, np.ndarray) else np.asarray(list(seeds))
    except (TypeError, ValueError, OverflowError):
        raise SpecError("seeds", seeds, allowed) from None
    if arr.ndim != 1:
        raise SpecError("seeds", f"an array of shape {arr.shape}", allowed)
    if arr.size == 0:
        raise SpecError("seeds", list(arr), "at least one seed index")
    if arr.dtype.kind not in "iu" or np.any(arr < 0) or np.any(arr >= SEED_LIMIT):
        raise SpecError("seeds", arr.tolist()[:8], allowed)
    if np.unique(arr).size != arr.size:
        raise SpecError("seeds", arr.tolist()[:8], "distinct seed indices")
    return arr.astype(np.int64)


def seed_rng(root_seed: int, key: str, seed: int, stream: int = STREAM_INITIAL
             ) -> np.random.Generator:
    """The generator of one seed: ``key`` is a hex content hash, ``stream`` a sub-stream."""
    ss = np.random.SeedSequence(entropy=[root_seed, int(key, 16)], spawn_key=(int(seed), stream))
    return np.random.Generator(np.random.PCG64(ss))


class SeedStreams(Sequence):
    """Lazy sequence of the generators of several seeds (same streams as :func:`seed_rng`).

    Generators are made on access, so iterating over a million seeds holds one at a time.
    """

    def __init__(self, root_seed: int, key: str, seeds: Iterable[int],
                 stream: int = STREAM_INITIAL) -> None:
        self._root_seed, self._key = root_seed, key
        self._seeds = [int(s) for s in seeds]
        self._stream = stream

    def __len__(self) -> int:
        return len(self._seeds)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("SeedStreams does not support slicing")
        return seed_rng(self._root_seed, self._key, self._seeds[i], self._stream)


def seed_rngs(root_seed: int, key: str, seeds: Iterable[int], stream: int = STREAM_INITIAL
              ) -> SeedStreams:
    """Generators of several seeds, made lazily (see :class:`SeedStreams`)."""
    return SeedStreams(root_seed, key, seeds, stream)
