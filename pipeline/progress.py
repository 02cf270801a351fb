"""A text progress bar for long runs, written to a stream (stderr by default).

On a terminal the bar is redrawn in place; elsewhere (a log file, a test) one line is written
per tenth of the work, so logs stay short and readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def render(done: int, total: int, failed: int = 0, elapsed: float = 0.0, width: int = 30) -> str:
    """``[######------] 12/40 blocks (30%), 1 failed, 0:12 elapsed, ~0:28 left``."""
    frac = done / total if total else 1.0
    fill = int(round(width * frac))
    text = f"[{'#' * fill}{'-' * (width - fill)}] {done}/{total} blocks ({100 * frac:.0f}%)"
    if failed:
        text += f", {failed} failed"
    text += f", {_clock(elapsed)} elapsed"
    finished = done + failed
    if 0 < finished < total:
        text += f", ~{_clock(elapsed * (total - finished) / finished)} left"
    return text


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished and failed blocks and shows them as a bar on ``stream``."""

    def __init__(self, total: int, stream: TextIO | None = None, *, interval: float = 0.2):
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def advance(self, *, failed: bool = False) -> None:
        """Count one more finished block (or failed one) and redraw when due."""
        if failed:
            self.failed += 1
        else:
            self.done += 1
        self._draw()

    def note(self, line: str) -> None:
        """Print a message on its own line without garbling the bar."""
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(line.rstrip("\n") + "\n")
        self._draw(force=self.tty)

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw(force=True, final=True)

    def _draw(self, *, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        line = render(self.done, self.total, self.failed, now - self.start)
        if self.tty:
            if force or final or now - self._last_draw >= self.interval:
                self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
                self._last_draw = now
        else:
            finished = self.done + self.failed
            decile = 10 * finished // self.total if self.total else 10
            if (final and self._last_decile < 10) or (not final and decile > self._last_decile):
                self.stream.write(line + "\n")
                self._last_decile = 10 if final else decile
        self.stream.flush()
