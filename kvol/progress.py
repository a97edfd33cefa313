"""Progress bars for long transfers, drawn on stderr.

A bar appears when asked for, or by default when stderr is a terminal and the transfer
is large enough to be worth watching; otherwise nothing is drawn, so scripts and pipes
see clean output. Sizes and rates are in binary units (KiB, MiB, GiB), as everywhere
in kvol's output. The finished bar stays on its line, so what was moved stays visible.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

#: Transfers smaller than this finish too fast for a bar to help.
MIN_BYTES = 8 * 1024 * 1024

#: Callback that reports bytes moved.
Advance = Callable[[int], None]

_forced: bool | None = None


def configure(enabled: bool | None) -> None:
    """True always draws bars, False never does, None decides by terminal (the default)."""
    global _forced
    _forced = enabled


def wanted(total: int | None) -> bool:
    if _forced is not None:
        return _forced
    if total is not None and total < MIN_BYTES:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _nothing(_n: int) -> None:
    return None


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': binary units, one decimal above a KiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


#: Seconds between redraws: often enough to look alive, rarely enough to cost nothing.
REDRAW_SECONDS = 0.1
#: Cells of the bar itself.
BAR_CELLS = 24


class Bar:
    """One progress line: ``upload  42% |██████      | 420.0 MiB/1.0 GiB 120.3 MiB/s 0:05``."""

    def __init__(self, total: int | None, description: str, stream: TextIO) -> None:
        self.total = total
        self.description = description
        self.done = 0
        self._stream = stream
        self._lock = threading.Lock()  # uploads report from several threads
        self._started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._drawn >= REDRAW_SECONDS:
                self._drawn = now
                self._draw(now)

    def close(self) -> None:
        with self._lock:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-6)
        rate = self.done / elapsed
        moved = format_bytes(self.done)
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * BAR_CELLS)
            left = (self.total - self.done) / rate if rate > 0 else None
            eta = f" {_clock(left)} left" if left is not None and fraction < 1 else ""
            return (
                f"{self.description} {fraction * 100:3.0f}% "
                f"|{'█' * filled}{' ' * (BAR_CELLS - filled)}| "
                f"{moved}/{format_bytes(self.total)} {format_bytes(rate)}/s{eta}"
            )
        return f"{self.description} {moved} {format_bytes(rate)}/s {_clock(elapsed)}"

    def _draw(self, now: float) -> None:
        text = self.line(now)
        columns = shutil.get_terminal_size((80, 24)).columns
        text = text[: max(columns - 1, 10)]
        # Pad over what a longer previous line left behind.
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@contextmanager
def bar(total: int | None, description: str) -> Iterator[Advance]:
    """Yield a callback to report bytes moved; a bar is drawn only when :func:`wanted`."""
    if not wanted(total):
        yield _nothing
        return
    drawn = Bar(total, description, sys.stderr)
    try:
        yield drawn.advance
    finally:
        drawn.close()
