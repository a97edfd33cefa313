"""Files that disappear between a commit's scan and its upload."""

from __future__ import annotations

from pathlib import Path

from kvol.repo import Repo
from kvol.workcopy import ScanResult, WorkingCopy
from tests.unit.core.helpers import write


class RemovingAfterScan(WorkingCopy):
    """A working copy whose user deletes a file right after the commit scanned it."""

    doomed: Path | None = None

    def _scan(self) -> ScanResult:
        result = super()._scan()
        if self.doomed is not None:
            self.doomed.unlink()
            self.doomed = None
        return result


def test_a_large_file_removed_after_the_scan_does_not_fail_the_commit(
    repo: Repo, tmp_path: Path
) -> None:
    plain = WorkingCopy.create(repo, tmp_path / "copy")
    plain.close(final_commit=False)
    wc = RemovingAfterScan.open(tmp_path / "copy")
    write(wc.root, "kept.txt", "kept")
    big = write(wc.root, "big.bin", b"x" * (3 << 20))  # chunked, not packed
    wc.doomed = big
    result = wc.commit()
    assert result.seq is not None
    assert set(repo.state().files) == {"kept.txt"}
    # Nothing is left over: the file never reached the volume and is gone here too.
    assert wc.commit().seq is None
    wc.close()
