"""The progress bar's remaining-time estimate: absent until it means something, then within
3x of the truth even when the first blocks pay a long warm-up (issue 13). A fake clock
replays block completion times, so nothing here depends on the machine's speed."""

from __future__ import annotations

import io

import pytest

from pipeline.progress import Progress, render


def _replay(finish_times: list[float], slots: int) -> list[tuple[float, float | None]]:
    """(time, estimate) after each finished block of a run whose blocks finish at
    ``finish_times`` (seconds from the start)."""
    now = [0.0]
    bar = Progress(len(finish_times), io.StringIO(), slots=slots, clock=lambda: now[0])
    out = []
    for t in finish_times:
        now[0] = t
        bar.advance()
        out.append((t, bar.left()))
    return out


def _schedule(total: int, workers: int, first: float, block: float) -> list[float]:
    """Finish times of ``total`` equal blocks on ``workers`` workers whose first block each
    takes ``first`` seconds (compilation), every later one ``block`` seconds."""
    free = [0.0] * workers
    times = []
    for i in range(total):
        w = min(range(workers), key=free.__getitem__)
        free[w] += first if i < workers else block
        times.append(free[w])
    return sorted(times)


@pytest.mark.parametrize("workers", [1, 2, 8])
@pytest.mark.parametrize("first", [0.5, 144.0])
def test_estimate_absent_or_within_3x_of_the_truth(workers, first):
    # The run: 888 blocks, a first block of 2:24 (compilation), then ~0.4 s blocks.
    times = _schedule(888, workers, first, 0.4)
    end = times[-1]
    shown = 0
    for t, left in _replay(times, workers):
        if left is None:
            continue
        shown += 1
        truth = end - t
        assert truth / 3 <= left <= 3 * truth + 1.0, (t, left, truth)
    assert shown > 800  # ... and it is shown for nearly the whole run


def test_no_estimate_while_only_warm_up_blocks_finished():
    times = _schedule(40, 2, 100.0, 1.0)
    seen = _replay(times, 2)
    # 2 warm-up blocks (one per worker), then 3 more to measure a rate on
    assert all(left is None for _, left in seen[:4])
    assert seen[4][1] is not None


def test_slow_first_block_then_uneven_blocks():
    # Blocks get slower later in the sweep (larger d): the estimate may be low, but not 3x.
    times, t = [], 0.0
    for i in range(60):
        t += 120.0 if i == 0 else (0.5 if i < 30 else 0.9)
        times.append(t)
    for t, left in _replay(times, 1):
        if left is not None:
            assert (times[-1] - t) / 3 <= left <= 3 * (times[-1] - t) + 1.0


def test_final_line_says_how_long_compilation_took():
    out = io.StringIO()
    now = [0.0]
    bar = Progress(3, out, slots=1, clock=lambda: now[0])
    bar.compile_seconds = 41.0
    for t in (50.0, 51.0, 52.0):
        now[0] = t
        bar.advance()
    bar.close()
    last = out.getvalue().splitlines()[-1]
    assert "3/3 blocks (100%), 0:52 elapsed (kernels compiled in 0:41, once per machine)" in last
    assert "left" not in out.getvalue()  # 3 blocks: never enough to estimate


def test_render_without_estimate():
    assert render(1, 888, elapsed=144.0) == (
        "[------------------------------] 1/888 blocks (0%), 2:24 elapsed")
