"""The ``kvol`` command against a real filesystem store: in-process through ``main()`` for
most commands, and through the installed entry point where stdin, stdout bytes and the
process exit code matter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from kvol.cli.main import main

KVOL = str(Path(sys.executable).with_name("kvol"))


class Cli:
    def __init__(self, store: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.store = store
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = main(["--store", self.store, *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        assert err == "" or not err.startswith("kvol: error"), err
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, code: int, *args: str) -> str:
        got, out, err = self(*args)
        assert got == code, (got, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kvol: error: "), err
        return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def cli(store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.delenv("KVOL_MOUNTS", raising=False)
    return Cli(store, capsys)


def run(
    store: str,
    *args: str,
    stdin: bytes = b"",
    cwd: Path | None = None,
    tmpdir: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "KVOL_STORE": store, "PYTHONSAFEPATH": "1"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [KVOL, *args], input=stdin, capture_output=True, env=env, cwd=cwd, timeout=120
    )


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "model.bin": os.urandom(700_000),
        "zeros.bin": bytes(300_000),
        "notes/readme.txt": b"hello\n",
        "notes/deep/nul\x00bytes.dat": b"\x00\x01\x02\xff" * 10,
    }
    files = {k.replace("\x00", "-"): v for k, v in files.items()}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty").mkdir()
    return files


# -- volumes ----------------------------------------------------------------------------------


def test_create_list_info_rename_delete(cli: Cli) -> None:
    out = cli.ok("volume", "create", "data")
    assert "Created volume 'data'" in out
    cli.fails(4, "volume", "create", "data")
    cli.ok("volume", "create", "data", "--allow-existing")
    created = cli.json("volume", "create", "old", "--version", "1", "--limit-bytes", "1MiB")
    assert created["version"] == 1

    listed = cli.json("volume", "list")
    assert [v["name"] for v in listed] == ["data", "old"]
    assert {v["version"] for v in listed} == {1, 2}
    assert "data" in cli.ok("volume", "list")

    info = cli.json("volume", "info", "data")
    assert (info["name"], info["head"], info["files"], info["bytes"]) == ("data", 0, 0, 0)

    line = cli.fails(2, "volume", "rename", "data", "renamed")  # stdin is not a terminal
    assert "pass -y" in line
    cli.ok("volume", "rename", "data", "renamed", "-y")
    assert [v["name"] for v in cli.json("volume", "list")] == ["old", "renamed"]

    cli.fails(2, "volume", "delete", "renamed")
    cli.ok("volume", "delete", "renamed", "-y")
    cli.fails(3, "volume", "delete", "renamed", "-y")
    assert "does not exist" in cli.ok("volume", "delete", "renamed", "--allow-missing")
    assert [v["name"] for v in cli.json("volume", "list")] == ["old"]


def test_create_refuses_bad_input(cli: Cli) -> None:
    assert "invalid volume name" in cli.fails(2, "volume", "create", "bad/name")
    for bad in (["--version", "3"], ["--limit-bytes", "lots"]):
        with pytest.raises(SystemExit) as exc:  # argparse's own usage errors
            main(["--store", cli.store, "volume", "create", "x", *bad])
        assert exc.value.code == 2
    assert "like 10GiB" in cli.capsys.readouterr().err
    assert cli.json("volume", "list") == []


def test_version_limits_are_enforced_with_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    cli.ok("volume", "create", "small", "--limit-bytes", "100KB")
    (tmp_path / "big").write_bytes(bytes(200_000))
    line = cli.fails(7, "volume", "put", "small", str(tmp_path / "big"))
    assert "limit" in line
    assert cli.json("volume", "info", "small")["head"] == 0


# -- files ------------------------------------------------------------------------------------


def test_put_get_round_trip_of_a_directory(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    (src / "notes" / "readme.txt").chmod(0o640)
    cli.ok("volume", "create", "data")
    assert "commit 1" in cli.ok("volume", "put", "data", str(src), "/tree")
    listed = {e["path"]: e for e in cli.json("volume", "ls", "data", "/tree", "-r")}
    assert {p for p, e in listed.items() if e["type"] == "file"} == {f"tree/{p}" for p in files}
    assert listed["tree/empty"]["type"] == "directory"

    out = tmp_path / "out"
    cli.ok("volume", "get", "data", "/tree", str(out))
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data
    assert (out / "empty").is_dir()
    assert (out / "notes" / "readme.txt").stat().st_mode & 0o777 == 0o640

    # Once more: into the existing directory, as cp -r does.
    cli.ok("volume", "get", "data", "/tree", str(out))
    assert (out / "tree" / "model.bin").read_bytes() == files["model.bin"]


def test_put_single_files(cli: Cli, tmp_path: Path) -> None:
    cli.ok("volume", "create", "data")
    local = tmp_path / "a.txt"
    local.write_text("a")
    cli.ok("volume", "put", "data", str(local))  # to the root, under its own name
    cli.ok("volume", "put", "data", str(local), "/dir/")  # into a directory
    cli.ok("volume", "put", "data", str(local), "/renamed.txt")
    other = tmp_path / "b.txt"
    other.write_text("b")
    cli.ok("volume", "put", "data", str(other), "/dir")  # an existing directory: into it
    assert "already exist" in cli.fails(4, "volume", "put", "data", str(local), "/dir/")
    cli.ok("volume", "put", "data", str(local), "/dir/", "-f")
    paths = [e["path"] for e in cli.json("volume", "ls", "data", "-r")]
    assert paths == ["a.txt", "dir", "dir/a.txt", "dir/b.txt", "renamed.txt"]
    cli.fails(3, "volume", "put", "data", str(tmp_path / "missing"))
    assert cli.json("volume", "info", "data")["head"] == 5


def test_ls_formats(cli: Cli, tmp_path: Path) -> None:
    cli.ok("volume", "create", "data")
    make_tree(tmp_path / "src")
    cli.ok("volume", "put", "data", f"{tmp_path / 'src'}/")  # its contents, at the root
    assert cli.ok("volume", "ls", "data").split() == ["empty/", "model.bin", "notes/", "zeros.bin"]
    long = cli.ok("volume", "ls", "data", "/notes", "--long").splitlines()
    assert long[0].split() == ["TYPE", "SIZE", "MODIFIED", "PATH"]
    assert long[1].split()[0] == "directory" and long[1].endswith("notes/deep/")
    assert long[2].split()[:3] == ["file", "6", "B"]
    assert cli.json("volume", "ls", "data", "/notes/readme.txt") == [
        {
            "path": "notes/readme.txt",
            "type": "file",
            "size": 6,
            "mtime": pytest.approx((tmp_path / "src/notes/readme.txt").stat().st_mtime, abs=1e-6),
            "filename": "notes/readme.txt",
            "created_modified": ANY,
        }
    ]


def test_get_refuses_to_overwrite_without_force(cli: Cli, tmp_path: Path) -> None:
    cli.ok("volume", "create", "data")
    (tmp_path / "a.txt").write_text("remote")
    cli.ok("volume", "put", "data", str(tmp_path / "a.txt"))
    target = tmp_path / "local.txt"
    target.write_text("precious")
    assert "already" in cli.fails(4, "volume", "get", "data", "/a.txt", str(target))
    assert target.read_text() == "precious"
    cli.ok("volume", "get", "data", "/a.txt", str(target), "--force")
    assert target.read_text() == "remote"
    # Into an existing directory under the file's own name.
    cli.ok("volume", "get", "data", "a.txt", str(tmp_path / "dir") + "/")
    assert (tmp_path / "dir" / "a.txt").read_text() == "remote"


def test_bad_paths_and_missing_things(cli: Cli) -> None:
    cli.ok("volume", "create", "data")
    assert "'..'" in cli.fails(2, "volume", "ls", "data", "../etc")
    cli.fails(2, "volume", "rm", "data", "a/../../b")
    assert "not found" in cli.fails(3, "volume", "ls", "missing")
    cli.fails(3, "volume", "ls", "data", "/nope")
    cli.fails(3, "volume", "get", "data", "/nope", "-")
    cli.fails(3, "volume", "rm", "data", "/nope")


def test_rm_and_cp(cli: Cli, tmp_path: Path) -> None:
    cli.ok("volume", "create", "data")
    make_tree(tmp_path / "src")
    cli.ok("volume", "put", "data", f"{tmp_path / 'src'}/")
    cli.ok("volume", "cp", "data", "/model.bin", "/copy.bin")
    assert "-r" in cli.fails(2, "volume", "cp", "data", "/notes", "/notes2")
    cli.ok("volume", "cp", "data", "-r", "/notes", "/notes2")
    cli.ok("volume", "cp", "data", "/model.bin", "/zeros.bin", "/both")
    cli.fails(2, "volume", "cp", "data", "/model.bin")
    paths = {e["path"] for e in cli.json("volume", "ls", "data", "-r")}
    assert {"copy.bin", "notes2/readme.txt", "both/model.bin", "both/zeros.bin"} <= paths

    cli.ok("volume", "rm", "data", "/copy.bin")
    assert "-r" in cli.fails(2, "volume", "rm", "data", "/notes2")
    cli.ok("volume", "rm", "data", "-r", "/notes2")
    paths = {e["path"] for e in cli.json("volume", "ls", "data")}
    assert "copy.bin" not in paths and "notes2" not in paths


# -- history ----------------------------------------------------------------------------------


def test_history_restore_gc(cli: Cli, tmp_path: Path) -> None:
    cli.ok("volume", "create", "data")
    (tmp_path / "f").write_bytes(os.urandom(400_000))
    cli.ok("volume", "put", "data", str(tmp_path / "f"), "/v1")
    cli.ok("volume", "rm", "data", "/v1")
    history = cli.json("volume", "history", "data")
    assert [h["seq"] for h in history] == [2, 1]
    assert history[1]["files_written"] == 1 and history[0]["paths_deleted"] == 1
    assert [h["seq"] for h in cli.json("volume", "history", "data", "--limit", "1")] == [2]
    assert "remove /v1" in cli.ok("volume", "history", "data")

    cli.fails(2, "volume", "restore", "data", "1")
    cli.fails(3, "volume", "restore", "data", "9", "-y")
    assert "as commit 3" in cli.ok("volume", "restore", "data", "1", "-y")
    assert [e["path"] for e in cli.json("volume", "ls", "data")] == ["v1"]

    report = cli.json("volume", "gc", "data", "--grace", "3600", "--dry-run")
    assert report["objects_deleted"] == 0  # everything is referenced by some commit
    assert report["objects_seen"] >= 1
    assert "Deleted 0 objects" in cli.ok("volume", "gc", "data", "--grace", "3600")


# -- working copies ---------------------------------------------------------------------------


def test_mount_commit_reload_status(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli.ok("volume", "create", "data")
    a, b = tmp_path / "a", tmp_path / "b"
    assert "commit 0" in cli.ok("volume", "mount", "data", str(a))
    cli.ok("volume", "mount", "data", str(b))
    (a / "from-a.txt").write_text("a")
    (a / "shared.txt").write_text("a wrote this")
    (b / "shared.txt").write_text("b wrote this")

    status = cli.json("volume", "status", str(a))
    assert (status["base_seq"], status["head_seq"]) == (0, 0)
    assert sorted(status["changed"]) == ["from-a.txt", "shared.txt"]
    assert status["uncommitted_bytes"] == 13
    assert status["volume"] == "data"
    assert "M shared.txt" in cli.ok("volume", "status", str(a))

    assert cli.json("volume", "commit", str(a), "-m", "from a")["seq"] == 1
    monkeypatch.chdir(b)  # commit with no DIR: the copy holding the cwd
    assert "as commit 2" in cli.ok("volume", "commit")
    assert "Nothing to commit" in cli.ok("volume", "commit")
    monkeypatch.chdir(tmp_path)

    reloaded = cli.json("volume", "reload", str(a))
    assert (reloaded["from_seq"], reloaded["to_seq"]) == (1, 2)
    assert (a / "shared.txt").read_text() == "b wrote this"
    assert "Already up to date" in cli.ok("volume", "reload", str(a))
    cli.ok("volume", "reload", str(b))
    assert (b / "from-a.txt").read_text() == "a"

    assert "not inside a kvol working copy" in cli.fails(3, "volume", "status", str(tmp_path))
    assert "not empty" in cli.fails(2, "volume", "mount", "data", str(a))


def test_read_only_mount_refuses_commit(cli: Cli, tmp_path: Path) -> None:
    cli.ok("volume", "create", "data")
    ro = tmp_path / "ro"
    cli.ok("volume", "mount", "data", str(ro), "--read-only")
    (ro / "f").write_text("x")
    line = cli.fails(10, "volume", "commit", str(ro))
    assert "read-only" in line and str(ro) in line


# -- the real entry point -----------------------------------------------------------------------


def test_entry_point_streams_stdin_and_stdout(store: str, tmp_path: Path) -> None:
    assert run(store, "volume", "create", "data").returncode == 0
    data = os.urandom(300_000) + b"\x00\n\r\xff"
    put = run(store, "volume", "put", "data", "-", "/bin/blob", stdin=data)
    assert put.returncode == 0, put.stderr
    got = run(store, "volume", "get", "data", "/bin/blob", "-")
    assert got.returncode == 0, got.stderr
    assert got.stdout == data
    assert got.stderr == b""
    refused = run(store, "volume", "put", "data", "-", "/", stdin=b"x")
    assert refused.returncode == 2
    assert refused.stderr.decode().startswith("kvol: error: put - (stdin) needs a REMOTE")


def test_entry_point_exit_codes_and_one_line_errors(store: str, tmp_path: Path) -> None:
    cases = [
        (["volume", "ls", "missing"], 3, "volume 'missing' not found"),
        (["volume", "create", "v1", "--version", "1"], 0, None),
        (["volume", "create", "v1", "--version", "1"], 4, "already exists"),
        (["volume", "ls", "v1", "/../x"], 2, "'..' is not allowed"),
        (["volume", "delete", "v1"], 2, "pass -y"),
        (["--store", "ftp://nowhere", "volume", "list"], 2, "unknown store URL scheme"),
    ]
    for args, code, message in cases:
        result = run(store, *args)
        err = result.stderr.decode()
        assert result.returncode == code, (args, err)
        if message is not None:
            assert err.count("\n") == 1 and err.startswith("kvol: error: "), err
            assert message in err
    usage = run(store, "volume", "frobnicate")
    assert usage.returncode == 2 and b"invalid choice" in usage.stderr


def test_version_mismatch_through_the_sdk_is_exit_2(store: str) -> None:
    from kvol import VersionMismatch, Volume

    assert run(store, "volume", "create", "v", "--version", "1").returncode == 0
    with pytest.raises(VersionMismatch) as exc:
        Volume.from_name("v", version=2, store=store).hydrate()
    assert exc.value.exit_code == 2
    assert run(store, "volume", "create", "v", "--version", "2", "--allow-existing").returncode == 2


def test_help_shows_examples() -> None:
    result = subprocess.run([KVOL, "volume", "put", "--help"], capture_output=True, timeout=60)
    assert result.returncode == 0
    assert b"example:" in result.stdout and b"kvol volume put" in result.stdout
    top = subprocess.run([KVOL, "--help"], capture_output=True, timeout=60)
    assert b"kvol demo" in top.stdout


def test_demo_runs_and_shows_last_write_wins(tmp_path: Path) -> None:
    result = subprocess.run(
        [KVOL, "demo"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "alice sees 'written by bob', bob sees 'written by bob'" in out
    assert "/results/alice.csv" in out and "/results/bob.csv" in out
    assert list(tmp_path.iterdir()) == []  # cleaned up


def test_demo_on_a_given_store_keeps_nothing_unless_asked(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'store'}"
    scratch = tmp_path / "scratch"  # where the demo makes its copies
    scratch.mkdir()
    assert run(store, "--store", store, "demo", tmpdir=scratch).returncode == 0
    assert json.loads(run(store, "volume", "list", "--json").stdout) == []
    assert list(scratch.iterdir()) == []
    kept = run(store, "demo", "--keep", "--store", store, tmpdir=scratch)
    assert kept.returncode == 0
    assert len(list(scratch.iterdir())) == 1  # the copies, kept as asked
    (volume,) = json.loads(run(store, "volume", "list", "--json").stdout)
    assert volume["name"].startswith("demo-")


def test_progress_bars_go_to_stderr_only_when_asked(store: str, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    (tmp_path / "big").write_bytes(data)
    assert run(store, "volume", "create", "data").returncode == 0
    quiet = run(store, "volume", "put", "data", str(tmp_path / "big"), "/quiet")
    assert quiet.returncode == 0 and quiet.stderr == b""  # not a terminal: no bar
    shown = run(store, "--progress", "volume", "put", "data", str(tmp_path / "big"), "/shown")
    assert shown.returncode == 0 and b"upload" in shown.stderr and b"%" in shown.stderr
    got = run(store, "volume", "get", "data", "/shown", "-", "--progress")
    assert got.stdout == data
    assert b"download" in got.stderr
