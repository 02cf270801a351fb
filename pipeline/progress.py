"""A text progress bar for long runs, written to a stream (stderr by default).

On a terminal the bar is redrawn in place; elsewhere (a log file, a test) one line is written
per tenth of the work, so logs stay short and readable.

**The remaining-time estimate is shown only when it means something.** The first blocks of a
run pay one-off costs (numba compiling or loading the kernels, imports, a worker starting),
often far more than a block itself: the rate of the first blocks would promise a 35-hour run
that then takes minutes. The estimate therefore counts only blocks finished after the
*warm-up*, which ends when ``slots`` blocks have finished (one per worker that can run
blocks at once: each worker's first block is one-off work), and it stays hidden until
``min_blocks`` blocks have finished after that. It is then ``remaining blocks / rate`` with
the rate measured since the warm-up ended. The compilation phase itself (see
:mod:`pipeline.warmup`) is reported on its own line by the driver, and the final line says
how long it took (:attr:`Progress.compile_seconds`).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Blocks that must finish after the warm-up before a remaining time is shown.
MIN_BLOCKS = 3


def render(done: int, total: int, failed: int = 0, elapsed: float = 0.0, width: int = 30,
           *, left: float | None = None, compile_seconds: float | None = None,
           what: str = "blocks") -> str:
    """``[######------] 12/40 blocks (30%), 1 failed, 0:12 elapsed, ~0:28 left``.

    ``left`` is the estimate (``None``: not shown); ``compile_seconds`` is appended as
    ``(kernels compiled in 0:41)``, for the final line; ``what`` names the things counted.
    """
    frac = done / total if total else 1.0
    fill = int(round(width * frac))
    text = f"[{'#' * fill}{'-' * (width - fill)}] {done}/{total} {what} ({100 * frac:.0f}%)"
    if failed:
        text += f", {failed} failed"
    text += f", {_clock(elapsed)} elapsed"
    if left is not None and 0 < done + failed < total:
        text += f", ~{_clock(left)} left"
    if compile_seconds is not None:
        text += f" (kernels compiled in {_clock(compile_seconds)}, once per machine)"
    return text


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Estimator:
    """Remaining time from the rate of blocks finished after the warm-up (see the module).

    ``finished(now)`` records one finished (or failed) block at time ``now``;
    ``left(now)`` is the estimate in seconds, or ``None`` while it would mean nothing.
    """

    def __init__(self, total: int, slots: int = 1, min_blocks: int = MIN_BLOCKS):
        self.total = total
        self.slots = max(1, min(int(slots), total)) if total else 1
        self.min_blocks = max(1, int(min_blocks))
        self.count = 0
        self.warm_at: float | None = None  # when the warm-up ended (the slots-th block)

    def finished(self, now: float) -> None:
        self.count += 1
        if self.count == self.slots:
            self.warm_at = now

    def left(self, now: float) -> float | None:
        if self.warm_at is None or self.count >= self.total:
            return None
        after = self.count - self.slots
        span = now - self.warm_at
        if after < self.min_blocks or span <= 0:
            return None
        return (self.total - self.count) * span / after


class Progress:
    """Counts finished and failed blocks and shows them as a bar on ``stream``.

    ``slots``: how many blocks can run at once (the cluster's worker threads), which is how
    many first blocks the warm-up may make slow (see the module).
    """

    def __init__(self, total: int, stream: TextIO | None = None, *, interval: float = 0.2,
                 slots: int = 1, min_blocks: int = MIN_BLOCKS,
                 clock=time.monotonic):
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self.estimator = Estimator(total, slots, min_blocks)
        #: Seconds the kernels took to compile before the blocks ran (``None``: not measured
        #: or nothing compiled); shown on the final line.
        self.compile_seconds: float | None = None
        self._last_draw = 0.0
        self._last_decile = -1
        #: What is counted (``"blocks"``, ``"work units"``).
        self.what = "blocks"

    def advance(self, *, failed: bool = False) -> None:
        """Count one more finished block (or failed one) and redraw when due."""
        if failed:
            self.failed += 1
        else:
            self.done += 1
        self.estimator.finished(self.clock())
        self._draw()

    def left(self) -> float | None:
        """The remaining-time estimate in seconds, or ``None`` while it is not shown."""
        return self.estimator.left(self.clock())

    def note(self, line: str) -> None:
        """Print a message on its own line without garbling the bar."""
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(line.rstrip("\n") + "\n")
        self._draw(force=self.tty)

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw(force=True, final=True)

    def line(self, *, final: bool = False) -> str:
        """The bar as it would be drawn now."""
        now = self.clock()
        return render(self.done, self.total, self.failed, now - self.start,
                      left=None if final else self.estimator.left(now),
                      compile_seconds=self.compile_seconds if final else None,
                      what=self.what)

    def _draw(self, *, force: bool = False, final: bool = False) -> None:
        now = self.clock()
        line = self.line(final=final)
        if self.tty:
            if force or final or now - self._last_draw >= self.interval:
                self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
                self._last_draw = now
        else:
            finished = self.done + self.failed
            decile = 10 * finished // self.total if self.total else 10
            # The final line once more when it has news: how long compilation took.
            closing = final and (self._last_decile < 10 or self.compile_seconds is not None)
            if closing or (not final and decile > self._last_decile):
                self.stream.write(line + "\n")
                self._last_decile = 10 if final else decile
        self.stream.flush()
