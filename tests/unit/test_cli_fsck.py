"""``kvol volume fsck`` against a real filesystem store: the report, its JSON, the exit code
of damage, progress on stderr, and repair from a working copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.store import FilesystemStore
from tests.unit.test_cli import Cli, cli, run, store  # noqa: F401 (fixtures)

CORRUPT_DATA = 8


@pytest.fixture
def volume(cli: Cli, tmp_path: Path) -> Path:  # noqa: F811 (fixture)
    """Volume "data" with a small and a large file, and its working copy."""
    cli.ok("volume", "create", "data")
    work = tmp_path / "work"
    cli.ok("volume", "mount", "data", str(work))
    (work / "small.txt").write_text("small")
    (work / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB: blobs, not packed
    cli.ok("volume", "commit", str(work), "-m", "first")
    return work


def _object_files(store_url: str, kind: str) -> list[Path]:
    opened = FilesystemStore(store_url.removeprefix("file://"))
    volume_id = Catalog(opened).entry("data").volume_id
    return sorted(p for p in (opened.root / "volumes" / volume_id / kind).rglob("*") if p.is_file())


def test_fsck_of_a_healthy_volume_exits_zero(cli: Cli, volume: Path) -> None:  # noqa: F811
    out = cli.ok("volume", "fsck", "data")
    assert "1 commit" in out and "No damage found." in out
    report = cli.json("volume", "fsck", "data")
    assert report["ok"] is True and report["damage"] == [] and report["head"] == 1
    assert report["bytes_checked"] >= 1 << 20
    assert cli.json("volume", "fsck", "data", "--no-content")["bytes_checked"] == 0


def test_fsck_reports_damage_with_its_files_and_exits_with_corrupt_data(
    cli: Cli,  # noqa: F811
    store: str,  # noqa: F811
    volume: Path,
) -> None:
    (blob,) = _object_files(store, "blobs")
    blob.unlink()
    code, out, err = cli("volume", "fsck", "data")
    assert code == CORRUPT_DATA
    assert "DAMAGED missing-object" in out and "files: big.bin" in out and "commits: 1" in out
    assert err.strip() == "kvol: error: volume 'data' is damaged: 1 problem"
    code, out, _ = cli("volume", "fsck", "data", "--json")
    assert code == CORRUPT_DATA
    report = json.loads(out)
    assert report["ok"] is False
    [damage] = report["damage"]
    assert damage["kind"] == "missing-object"
    assert damage["files"] == ["big.bin"] and damage["commits"] == [1]


def test_fsck_repair_from_a_working_copy_makes_the_volume_whole(
    cli: Cli,  # noqa: F811
    store: str,  # noqa: F811
    volume: Path,
    tmp_path: Path,
) -> None:
    for path in _object_files(store, "blobs") + _object_files(store, "packs"):
        path.unlink()
    cli.fails(CORRUPT_DATA, "volume", "fsck", "data", "--no-content")
    out = cli.ok("volume", "fsck", "data", "--repair", "--from", str(volume))
    assert out.count("REPAIRED ") == 2 and "No damage found." in out
    cli.ok("volume", "fsck", "data")
    cli.ok("volume", "mount", "data", str(tmp_path / "fresh"))
    assert (tmp_path / "fresh" / "small.txt").read_text() == "small"
    assert (tmp_path / "fresh" / "big.bin").read_bytes() == (volume / "big.bin").read_bytes()


def test_fsck_repair_that_cannot_supply_the_content_still_fails(
    cli: Cli,  # noqa: F811
    store: str,  # noqa: F811
    volume: Path,
    tmp_path: Path,
) -> None:
    (blob,) = _object_files(store, "blobs")
    blob.unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli("volume", "fsck", "data", "--repair", "--from", str(empty), "--json")
    assert code == CORRUPT_DATA
    report = json.loads(out)
    assert report["repair"]["repaired"] == []
    assert [r["key"] for r in report["repair"]["not_repaired"]] == [report["damage"][0]["key"]]
    assert "left after repair" in err


def test_fsck_options_are_checked(cli: Cli, volume: Path) -> None:  # noqa: F811
    assert "--repair needs" in cli.fails(2, "volume", "fsck", "data", "--repair")
    assert "--from is only used" in cli.fails(2, "volume", "fsck", "data", "--from", ".")
    cli.fails(3, "volume", "fsck", "nope")


def test_fsck_draws_progress_on_stderr_only(
    store: str,  # noqa: F811
    volume: Path,
) -> None:
    done = run(store, "--progress", "volume", "fsck", "data", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert b"fsck" in done.stderr


def test_fsck_help_documents_the_exit_status(store: str) -> None:  # noqa: F811
    done = run(store, "volume", "fsck", "--help")
    assert done.returncode == 0
    assert b"8 when damage is found" in done.stdout
