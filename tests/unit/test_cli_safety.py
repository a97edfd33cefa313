"""The ``kvol`` command refuses input that would damage a store, keeps working when one
volume is damaged, and never follows local links (run as a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvol.catalog import Catalog
from kvol.model import DeleteOp
from kvol.store import FilesystemStore

KVOL = str(Path(sys.executable).with_name("kvol"))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def kvol(store: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KVOL_STORE": f"file://{store}", "PYTHONSAFEPATH": "1"}
    env.pop("KVOL_MOUNTS", None)
    return subprocess.run(
        [KVOL, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def ok(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = kvol(store, *args)
    assert done.returncode == 0, done.stderr
    return done


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvol: error: "), done.stderr
    return lines[0]


def _damage(store: Path, name: str) -> str:
    volume_id = json.loads((store / "catalog" / "main" / name).read_bytes())["id"]
    meta = store / "volumes" / volume_id / "meta.json"
    data = json.loads(meta.read_bytes())
    data["limits"]["max_files"] = -1
    meta.write_bytes(json.dumps(data).encode())
    return str(volume_id)


@pytest.mark.parametrize("option", ["--limit-files", "--limit-files-per-directory"])
def test_a_negative_limit_is_refused_and_nothing_is_created(store: Path, option: str) -> None:
    done = kvol(store, "volume", "create", "bad", option, "-1")
    assert done.returncode == 2
    assert "negative" in error_line(done)
    assert json.loads(ok(store, "volume", "list", "--json").stdout) == []


def test_list_shows_a_damaged_volume_and_still_lists_the_others(store: Path) -> None:
    ok(store, "volume", "create", "good")
    ok(store, "volume", "create", "bad")
    bad_id = _damage(store, "bad")
    table = ok(store, "volume", "list")
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert set(rows) == {"bad", "good"}
    assert rows["bad"][1] == "damaged" and rows["bad"][-1] == bad_id
    assert "kvol: warning: volume 'bad' is damaged" in table.stderr
    listed = {v["name"]: v for v in json.loads(ok(store, "volume", "list", "--json").stdout)}
    assert listed["bad"]["damaged"] and listed["bad"]["id"] == bad_id
    assert "damaged" not in listed["good"] and listed["good"]["version"] == 2
    # Commands on the other volume are not affected.
    ok(store, "volume", "info", "good")


def test_delete_removes_a_damaged_volume(store: Path) -> None:
    ok(store, "volume", "create", "good")
    ok(store, "volume", "create", "bad")
    bad_id = _damage(store, "bad")
    ok(store, "volume", "delete", "bad", "-y")
    assert not (store / "volumes" / bad_id).exists()
    names = [v["name"] for v in json.loads(ok(store, "volume", "list", "--json").stdout)]
    assert names == ["good"]


def test_put_skips_links_and_says_so(store: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "mine.txt").write_text("mine")
    (tree / "passwd").symlink_to("/etc/passwd")
    ok(store, "volume", "create", "data")
    done = ok(store, "volume", "put", "data", f"{tree}/", "/")
    assert "passwd" in done.stderr and "symbolic link" in done.stderr
    listed = ok(store, "volume", "ls", "data", "/", "-r").stdout.split()
    assert listed == ["/mine.txt"] or listed == ["mine.txt"]


def test_get_never_writes_through_a_linked_directory(store: Path, tmp_path: Path) -> None:
    src = tmp_path / "src" / "sub"
    src.mkdir(parents=True)
    (src / "planted").write_text("x")
    ok(store, "volume", "create", "data")
    ok(store, "volume", "put", "data", f"{tmp_path / 'src'}/", "/")
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(victim)
    done = ok(store, "volume", "get", "data", "/", str(dest), "--force")
    assert list(victim.iterdir()) == []
    assert "symbolic link" in done.stderr


def test_rm_r_publishes_no_recursive_delete(store: Path, tmp_path: Path) -> None:
    ok(store, "volume", "create", "data")
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "a").write_text("a")
    (src / "dir" / "sub" / "b").write_text("b")
    ok(store, "volume", "put", "data", f"{src}/", "/")
    ok(store, "volume", "rm", "data", "/dir", "-r")
    assert ok(store, "volume", "ls", "data", "/", "-r").stdout.split() == []
    repo = Catalog(FilesystemStore(store)).repo("data")
    entry = repo.read_entry(repo.head())
    assert entry is not None
    # Each file by name: a file another writer adds under /dir meanwhile would survive.
    assert not any(isinstance(op, DeleteOp) for op in entry.ops)
    assert {"dir/a", "dir/sub/b"} <= {op.path for op in entry.ops}


def test_delete_after_an_interrupted_rename_keeps_the_data_the_other_name_holds(
    store: Path, tmp_path: Path
) -> None:
    ok(store, "volume", "create", "old")
    (tmp_path / "f").write_text("precious")
    ok(store, "volume", "put", "old", str(tmp_path / "f"), "/f")
    # A rename writes the new name, then removes the old one: killed in between.
    catalog = store / "catalog" / "main"
    (catalog / "new").write_bytes((catalog / "old").read_bytes())
    ok(store, "volume", "delete", "old", "-y")
    assert ok(store, "volume", "get", "new", "/f", "-").stdout == "precious"
