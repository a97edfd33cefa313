"""``kvol volume`` where it follows ``modal volume`` (checked against modal-client's CLI):
put of a directory, get of a directory to stdout, the JSON keys of ls and list, ls as a
table on a terminal; and what create --allow-existing and progress bars say."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import tarfile
from pathlib import Path

from tests.unit.test_cli import KVOL, Cli, cli, run, store  # noqa: F401


def tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a\n")
    (root / "sub" / "b.txt").write_bytes(b"b\n")


def paths(cli: Cli, path: str = "/") -> list[str]:  # noqa: F811
    return [e["path"] for e in cli.json("volume", "ls", "data", path, "-r")]


def test_put_of_a_directory_to_a_slash_nests_it_under_its_name(
    cli: Cli,  # noqa: F811
    tmp_path: Path,
) -> None:
    tree(tmp_path / "src")
    cli.ok("volume", "create", "data")
    cli.ok("volume", "put", "data", str(tmp_path / "src"))  # the default REMOTE, /
    cli.ok("volume", "put", "data", str(tmp_path / "src"), "/into/")
    cli.ok("volume", "put", "data", str(tmp_path / "src"), "/as")  # no slash: AS that name
    cli.ok("volume", "put", "data", f"{tmp_path / 'src'}/", "/spread/")  # LOCAL/: contents
    assert paths(cli) == [
        "as",
        "as/a.txt",
        "as/sub",
        "as/sub/b.txt",
        "into",
        "into/src",
        "into/src/a.txt",
        "into/src/sub",
        "into/src/sub/b.txt",
        "spread",
        "spread/a.txt",
        "spread/sub",
        "spread/sub/b.txt",
        "src",
        "src/a.txt",
        "src/sub",
        "src/sub/b.txt",
    ]


def test_get_of_a_directory_to_stdout(
    cli: Cli,  # noqa: F811
    store: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    tree(tmp_path / "src")
    (tmp_path / "src" / "empty").mkdir()
    cli.ok("volume", "create", "data")
    cli.ok("volume", "put", "data", str(tmp_path / "src"))

    # As Modal: every file's bytes, one after the other (here in path order).
    plain = run(store, "volume", "get", "data", "/src", "-")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == b"a\nb\n"

    tarred = run(store, "volume", "get", "data", "/src", "-", "--tar")
    assert tarred.returncode == 0, tarred.stderr
    with tarfile.open(fileobj=io.BytesIO(tarred.stdout), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"a.txt", "empty", "sub", "sub/b.txt"}
        assert members["empty"].isdir()
        got = tar.extractfile(members["sub/b.txt"])
        assert got is not None and got.read() == b"b\n"
    cli.fails(2, "volume", "get", "data", "/src", str(tmp_path / "out"), "--tar")


def test_ls_and_list_json_carry_modals_keys(cli: Cli, tmp_path: Path) -> None:  # noqa: F811
    tree(tmp_path / "src")
    cli.ok("volume", "create", "data")
    cli.ok("volume", "put", "data", f"{tmp_path / 'src'}/")
    entries = cli.json("volume", "ls", "data")
    # `modal volume ls --json` keys: filename, type, created_modified, size.
    assert [e["filename"] for e in entries] == ["a.txt", "sub"]
    assert all({"filename", "type", "created_modified", "size"} <= set(e) for e in entries)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d \S+", entries[0]["created_modified"])
    assert entries[0]["path"] == "a.txt" and entries[0]["size"] == 2  # kvol's stay

    (listed,) = cli.json("volume", "list")
    # `modal volume list --json` keys: name, created_at, created_by.
    assert listed["name"] == "data" and listed["created_by"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d", listed["created_at"])
    assert isinstance(listed["created"], float) and listed["id"]


def test_create_allow_existing_says_it_existed(cli: Cli) -> None:  # noqa: F811
    assert "Created volume 'data'" in cli.ok("volume", "create", "data", "--allow-existing")
    again = cli.ok("volume", "create", "data", "--allow-existing")
    assert "already exists" in again and "Created" not in again
    assert cli.json("volume", "create", "data", "--allow-existing")["existed"] is True
    assert cli.json("volume", "create", "fresh")["existed"] is False
    cli.fails(4, "volume", "create", "data")
    cli.fails(2, "volume", "create", "data", "--allow-existing", "--version", "1")


def test_ls_prints_a_table_on_a_terminal_and_lines_in_a_pipe(
    cli: Cli,  # noqa: F811
    store: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    tree(tmp_path / "src")
    cli.ok("volume", "create", "data")
    cli.ok("volume", "put", "data", f"{tmp_path / 'src'}/")
    assert cli.ok("volume", "ls", "data").split() == ["a.txt", "sub/"]  # not a terminal

    leader, follower = pty.openpty()
    env = {**os.environ, "KVOL_STORE": store, "PYTHONSAFEPATH": "1"}
    done = subprocess.run(
        [KVOL, "volume", "ls", "data"], stdout=follower, stderr=subprocess.PIPE, env=env, timeout=60
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO once the writer is gone
            break
        if not data:
            break
        shown += data
    os.close(leader)
    assert done.returncode == 0, done.stderr
    lines = shown.decode().splitlines()
    assert lines[0].split() == ["TYPE", "SIZE", "MODIFIED", "PATH"]
    assert lines[1].split()[:3] == ["file", "2", "B"] and lines[1].endswith("a.txt")
    # Aligned: every row's path starts where the header's does.
    column = lines[0].index("PATH")
    assert all(line[column - 1] == " " and line[column] != " " for line in lines[1:])


def test_upload_progress_reaches_the_total_in_binary_units(
    store: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Over the packing threshold: the filesystem store copies it in the kernel.
    (tmp_path / "big").write_bytes(os.urandom(3 * 1024 * 1024))
    assert run(store, "volume", "create", "data").returncode == 0
    done = run(store, "--progress", "volume", "put", "data", str(tmp_path / "big"), "/big")
    assert done.returncode == 0, done.stderr
    final = done.stderr.decode().split("\r")[-1]
    assert "100%" in final and "3.0 MiB/3.0 MiB" in final, final
    assert final.endswith("\n")  # the finished bar stays on screen
    assert not re.search(r"\d(k|M|G)B\b", done.stderr.decode())  # never decimal units
