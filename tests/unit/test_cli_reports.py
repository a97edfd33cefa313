"""What the ``kvol`` command reports, run as a real process against a real filesystem store:
the paths a commit skipped, what gc removed (and why its grace has a minimum), and the
exit codes, which ``kvol --help`` and the README list alike."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kvol import errors
from kvol.catalog import Catalog
from kvol.control import ControlServer
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy

KVOL = str(Path(sys.executable).with_name("kvol"))
README = Path(__file__).resolve().parents[2] / "README.md"
#: Older than any grace gc accepts, by a wide margin (the store's clock is this machine's).
LONG_AGO = time.time() - 3 * 3600


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def kvol(store: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KVOL_STORE": f"file://{store}", "PYTHONSAFEPATH": "1"}
    env.pop("KVOL_MOUNTS", None)
    return subprocess.run([KVOL, *args], capture_output=True, text=True, env=env, timeout=timeout)


def ok(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = kvol(store, *args)
    assert done.returncode == 0, done.stderr
    return done


def fails(store: Path, code: int, *args: str) -> str:
    done = kvol(store, *args)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvol: error: "), done.stderr
    return lines[0]


def warnings(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("kvol: warning: ")]


@pytest.fixture
def work(store: Path, tmp_path: Path) -> Path:
    """Volume "data" with one commit, and a working copy of it."""
    ok(store, "volume", "create", "data")
    copy = tmp_path / "w"
    ok(store, "volume", "mount", "data", str(copy))
    (copy / "kept.txt").write_text("kept")
    ok(store, "volume", "commit", str(copy))
    return copy


# -- what a commit skipped ------------------------------------------------------------------


def test_commit_warns_once_for_each_path_it_skipped(store: Path, work: Path) -> None:
    os.mkfifo(work / "pipe")
    (work / "to-passwd").symlink_to("/etc/passwd")
    (work / "to-dir").symlink_to(work / "sub", target_is_directory=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(work)  # a relative name: the socket path may be longer than sun_path allows
    try:
        listener.bind("sock")
    finally:
        os.chdir(cwd)
    (work / "new.txt").write_text("new")
    try:
        done = ok(store, "volume", "commit", str(work))
    finally:
        listener.close()
    assert "Committed 1 file" in done.stdout
    said = warnings(done)
    assert said == [
        "kvol: warning: not committed: pipe is a FIFO, not a regular file",
        "kvol: warning: not committed: sock is a socket, not a regular file",
        "kvol: warning: not committed: to-dir is a symbolic link, not a regular file",
        "kvol: warning: not committed: to-passwd is a symbolic link, not a regular file",
    ]
    # Said once: the core's own one-line summary is not printed beside the CLI's lines.
    assert done.stderr.count("pipe") == 1, done.stderr
    names = [e["path"] for e in json.loads(ok(store, "volume", "ls", "data", "--json").stdout)]
    assert sorted(names) == ["kept.txt", "new.txt"]
    # The JSON result names them too, and a commit with nothing else to publish still warns.
    again = ok(store, "volume", "commit", str(work), "--json")
    assert json.loads(again.stdout)["seq"] is None
    assert sorted(json.loads(again.stdout)["skipped"]) == ["pipe", "sock", "to-dir", "to-passwd"]
    assert len(warnings(again)) == 4


def test_commit_names_the_first_ten_skipped_paths_and_counts_the_rest(
    store: Path, work: Path
) -> None:
    for i in range(13):
        os.mkfifo(work / f"fifo-{i:02d}")
    done = kvol(store, "volume", "commit", str(work), timeout=60)  # a FIFO never blocks it
    assert done.returncode == 0, done.stderr
    said = warnings(done)
    assert said[:10] == [
        f"kvol: warning: not committed: fifo-{i:02d} is a FIFO, not a regular file"
        for i in range(10)
    ]
    assert said[10:] == ["kvol: warning: and 3 more not committed (not regular files)"]
    assert "Nothing to commit." in done.stdout


class PluginCopy:
    """A working copy served on its control socket the way the node plugin serves one
    (the commit's whole result, as JSON)."""

    def __init__(self, wc: WorkingCopy) -> None:
        self.wc = wc

    def commit(self, message: str | None = None) -> dict[str, Any]:
        return dataclasses.asdict(self.wc.commit(message))

    def reload(self) -> dict[str, Any]:
        return dataclasses.asdict(self.wc.reload())

    def status(self) -> dict[str, Any]:
        st = self.wc.status()
        return {"volume": "data", "volume_id": st.volume_id, "base_seq": st.base_seq}


def test_commit_through_a_pods_control_socket_warns_about_skipped_paths(
    store: Path, tmp_path: Path
) -> None:
    ok(store, "volume", "create", "data")
    mount = tmp_path / "pod-mount"
    wc = WorkingCopy.create(_repo(store), mount, meta_dir=tmp_path / "plugin-state")
    server = ControlServer(mount / ".kvol" / "control.sock", PluginCopy(wc))
    server.start()
    try:
        os.mkfifo(mount / "pipe")
        (mount / "out.txt").write_text("from the pod")
        done = ok(store, "volume", "commit", str(mount))
    finally:
        server.stop()
        wc.close(final_commit=False)
    assert "Committed 1 file" in done.stdout
    assert warnings(done) == ["kvol: warning: not committed: pipe is a FIFO, not a regular file"]


# -- gc -------------------------------------------------------------------------------------


def _repo(store: Path) -> Repo:
    return Catalog(FilesystemStore(store)).repo("data")


def test_gc_reports_the_leftover_temporaries_it_removed(store: Path, work: Path) -> None:
    repo = _repo(store)
    # A write killed halfway left its temporary; an orphaned content object is old too.
    leftover = store / ".tmp" / "killed-write"
    leftover.write_bytes(b"x" * 1000)
    os.utime(leftover, (LONG_AGO, LONG_AGO))
    orphan_key = repo.keys.blob("ab" * 32)
    repo.store.put(orphan_key, b"o" * 500)
    orphan = store / orphan_key
    os.utime(orphan, (LONG_AGO, LONG_AGO))

    dry = json.loads(ok(store, "volume", "gc", "data", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and dry["deleted"] == [orphan_key]
    assert dry["temporaries_deleted"] == 0 and dry["temporary_bytes_deleted"] == 0
    assert leftover.exists() and orphan.exists()
    text = ok(store, "volume", "gc", "data", "--dry-run").stdout
    assert "Would delete 1 object (500 B)" in text
    assert "removed only by a run without --dry-run" in text

    report = json.loads(ok(store, "volume", "gc", "data", "--json").stdout)
    assert report["deleted"] == [orphan_key] and report["objects_deleted"] == 1
    assert report["bytes_deleted"] == 500 and report["grace_seconds"] == 3600
    assert report["temporaries_deleted"] == 1 and report["temporary_bytes_deleted"] == 1000
    assert not leftover.exists() and not orphan.exists()

    young = store / ".tmp" / "running-write"
    young.write_bytes(b"y" * 10)  # a write that may still be going on: kept
    text = ok(store, "volume", "gc", "data").stdout
    assert "Deleted 0 objects" in text
    assert "Removed 0 leftover temporary files of interrupted writes (0 B)." in text
    assert young.exists()


def test_gc_help_gives_the_minimum_grace_and_why(store: Path, work: Path) -> None:
    shown = " ".join(ok(store, "volume", "gc", "--help").stdout.split())
    assert "at least 3600" in shown
    assert "renews content it reuses once that content is 1800s old" in shown
    assert "leftovers of writes killed halfway" in shown
    assert "docs/data-safety.md" in shown
    for grace in ("1800", "-1", "nan", "inf"):
        line = fails(store, 2, "volume", "gc", "data", "--grace", grace)
        assert "at least 3600" in line, line
    assert (
        json.loads(ok(store, "volume", "gc", "data", "--grace", "7200", "--json").stdout)[
            "grace_seconds"
        ]
        == 7200
    )


# -- exit codes -----------------------------------------------------------------------------


def _listed(text: str, pattern: str) -> dict[int, str]:
    return {int(code): " ".join(what.split()) for code, what in re.findall(pattern, text, re.M)}


def test_every_exit_code_is_listed_alike_in_help_and_readme(store: Path) -> None:
    raised = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.KvolError)
    }
    assert {8, 11} <= raised
    help_text = ok(store, "--help").stdout
    assert "exit codes:" in help_text
    in_help = _listed(help_text.split("exit codes:", 1)[1], r"^  (\d+)\s+(.+)$")
    in_readme = _listed(README.read_text(), r"^\| (\d+) \| (.+?) \|$")
    # Every code the CLI can return: each error's, success, other failures, Ctrl-C.
    assert set(in_help) == raised | {0, 1, 130}
    assert in_readme == in_help


def test_a_store_behind_the_copy_exits_11_and_publishes_nothing(store: Path, work: Path) -> None:
    repo = _repo(store)
    (work / "second.txt").write_text("2")
    ok(store, "volume", "commit", str(work))  # commit 2: the copy's base
    # The store goes back to a backup taken before commit 2.
    repo.store.delete(repo.keys.log(2))
    (work / "third.txt").write_text("3")
    line = fails(store, 11, "volume", "commit", str(work))
    assert "behind" in line and "nothing was lost" in line
    assert [
        h["seq"] for h in json.loads(ok(store, "volume", "history", "data", "--json").stdout)
    ] == [1]
    assert (work / "third.txt").read_text() == "3"
