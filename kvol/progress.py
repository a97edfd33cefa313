"""Progress bars for long transfers, drawn on stderr.

A bar appears when asked for, or by default when stderr is a terminal and the transfer
is large enough to be worth watching; otherwise nothing is drawn and nothing is imported
(tqdm loads lazily), so scripts and pipes see clean output.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


@contextmanager
def bar(total: int | None, description: str) -> Iterator[Advance]:
    """Yield a callback to report bytes moved; a bar is drawn only when :func:`wanted`."""
    if not wanted(total):
        yield _nothing
        return
    from tqdm import tqdm

    lock = threading.Lock()  # uploads report from several threads
    progress: Any = tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )

    def advance(n: int) -> None:
        with lock:
            progress.update(n)

    try:
        yield advance
    finally:
        progress.close()
