"""Small files of a commit are read in batches: errors stay per file."""

from __future__ import annotations

import os
from pathlib import Path

from kvol import fsops
from kvol.content import PACK_THRESHOLD
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy


def test_batch_reader_reports_each_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"alpha")
    (tmp_path / "d" / "big").write_bytes(b"x" * (PACK_THRESHOLD + 10))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "sub").mkdir()
    os.symlink("/etc/passwd", tmp_path / "e" / "link")
    root_fd = fsops.open_root(str(tmp_path))
    stats: dict[str, os.stat_result] = {}
    try:
        rels = ["d/a", "d/big", "d/gone", "e/link", "e/sub", "nodir/x"]
        out = {
            rel: (data, stable)
            for rel, data, stable in WorkingCopy._read_small(root_fd, rels, stats)
        }
    finally:
        os.close(root_fd)
    assert out["d/a"] == (b"alpha", True)
    data, stable = out["d/big"]
    assert not stable and isinstance(data, bytes)  # grew past the pack size: retried later
    assert isinstance(out["d/gone"][0], FileNotFoundError)
    assert isinstance(out["e/link"][0], OSError)  # never followed
    assert isinstance(out["e/sub"][0], IsADirectoryError)
    assert isinstance(out["nodir/x"][0], FileNotFoundError)
    assert set(stats) == {"d/a", "d/big"}


def test_many_small_files_commit_in_packs(repo: Repo, tmp_path: Path) -> None:
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    for i in range(1200):
        d = wc.root / f"d{i % 7}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}").write_bytes(b"%d" % i * (i % 50 + 1))
    result = wc.commit()
    assert result.files == 1200
    state = repo.state()
    assert len(state.files) == 1200
    assert {p.kind for r in state.files.values() for p in r.parts} == {"p"}
    reader = repo.reader()
    assert reader.read(state.files["d3/f10"]) == b"10" * 11
