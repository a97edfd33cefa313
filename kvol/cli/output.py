"""What every command prints: tables, JSON, sizes, times, and confirmation prompts."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from kvol.errors import InvalidArgument, KvolError
from kvol.progress import format_bytes

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def say(text: str = "") -> None:
    print(text, file=sys.stdout)


def warn(text: str) -> None:
    """One line on stderr that does not stop the command."""
    print(f"kvol: warning: {' '.join(text.split())}", file=sys.stderr)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
    """Columns padded to their widest cell; ``right`` holds the indexes of numeric columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    say(line(headers))
    for row in rows:
        say(line(row))


def size(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as the progress bars use)."""
    return format_bytes(n)


def parse_size(text: str) -> int:
    """'10GiB' -> 10737418240, '500M' -> 500000000, '42' -> 42 (an argparse type)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use a number with an optional unit, like 10GiB"
        )
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    factor = base ** list(_UNITS).index(unit.lower())
    return int(number) * int(factor)


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def confirm(question: str, assume_yes: bool) -> None:
    """Ask on a terminal; without one, refuse unless ``-y`` was given."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise InvalidArgument(
            f"{question.rstrip('?')}: refusing without confirmation because stdin is not a "
            "terminal; pass -y to confirm"
        )
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise KvolError("cancelled: nothing was changed")
