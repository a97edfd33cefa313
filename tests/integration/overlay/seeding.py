"""A volume's first commit, made from a plain working copy, for the overlay tests."""

from __future__ import annotations

import os
from pathlib import Path

from kvol.repo import Repo
from kvol.workcopy import WorkingCopy


def seed(repo: Repo, tmp_path: Path, files: dict[str, bytes], first_mode: int | None = None) -> int:
    """Commit ``files`` (the first one with ``first_mode``, if given); returns the seq."""
    wc = WorkingCopy.create(repo, tmp_path / "seed")
    for rel, data in files.items():
        p = wc.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if first_mode is not None:
        os.chmod(wc.root / next(iter(files)), first_mode)
    seq = wc.commit().seq
    wc.close(final_commit=False)
    assert seq is not None
    return seq
