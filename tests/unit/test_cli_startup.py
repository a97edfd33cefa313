"""The ``kvol`` command loads only what the command it runs needs: ``kvol --help`` and
``kvol --version`` import neither the store machinery nor the metrics library, and a
command never imports another command's module."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvol.cli import main as cli
from kvol.cli.main import build_parser, main

#: Heavy modules no command needs before it runs (the demo pulls in the catalog, the
#: catalog the content machinery and prometheus_client, an S3 store obstore).
NOT_AT_START = ("prometheus_client", "obstore", "kvol.cli.demo", "kvol.catalog", "kvol.repo")

CHILD = """
import contextlib, io, json, sys
from kvol.cli.main import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def run_child(*args: str) -> tuple[int, str, set[str]]:
    """Run the command in a fresh interpreter; its exit code, output and loaded modules."""
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(proc.stdout.splitlines()[-1])
    return result["code"], result["out"], set(result["modules"])


def loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_importing_the_command_line_loads_no_command() -> None:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, kvol.cli.main; print(json.dumps(sorted(sys.modules)))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    modules = set(json.loads(out))
    assert [m for m in NOT_AT_START if loaded(modules, m)] == []
    assert not loaded(modules, "kvol.cli.volume")


@pytest.mark.parametrize("option", ["--help", "--version"])
def test_help_and_version_load_neither_stores_nor_metrics(option: str) -> None:
    code, out, modules = run_child(option)
    assert code == 0
    assert out.startswith("usage: kvol" if option == "--help" else "kvol ")
    assert [m for m in NOT_AT_START if loaded(modules, m)] == []
    # Every command is listed, with its help, though none was imported.
    if option == "--help":
        for name, module, help in cli.COMMANDS:
            assert f"{name:<20}{help}" in out.replace("\n    ", "\n")
            assert module not in modules


def test_a_volume_command_does_not_load_the_other_commands(tmp_path: Path) -> None:
    code, out, modules = run_child("--store", str(tmp_path / "store"), "volume", "list", "--json")
    assert (code, json.loads(out)) == (0, [])
    assert "kvol.cli.volume" in modules
    assert "kvol.cli.demo" not in modules
    assert "kvol.cli.completion" not in modules


def test_help_loads_no_logging_or_progress_machinery() -> None:
    """Help, version and usage errors end in the parser: logging and progress bars are
    set up only for a command that runs."""
    code, _out, modules = run_child("--help")
    assert code == 0
    assert [m for m in ("logging", "kvol.progress") if loaded(modules, m)] == []


def test_a_working_copy_command_loads_neither_the_sdk_nor_fsck(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    assert main(["--store", store, "volume", "create", "v"]) == 0
    assert main(["--store", store, "volume", "mount", "v", str(tmp_path / "copy")]) == 0
    capsys.readouterr()
    # (status names the volume, so it reads the catalog; reload and commit need not.)
    for command, unneeded in (
        # (nor what only creating a volume or pruning history needs)
        ("reload", ("kvol.volume", "kvol.fsck", "kvol.catalog", "kvol.retention", "uuid")),
        ("commit", ("kvol.volume", "kvol.fsck", "kvol.catalog")),
        ("status", ("kvol.volume", "kvol.fsck")),
    ):
        code, out, modules = run_child("--store", store, "volume", command, str(tmp_path / "copy"))
        assert code == 0, out
        assert "kvol.workcopy" in modules
        assert [m for m in unneeded if m in modules] == []
        # Finding libc by name runs ldconfig (subprocess) at every start.
        assert "ctypes.util" not in modules and "subprocess" not in modules
    code, out, _ = run_child("--store", store, "volume", "reload", str(tmp_path / "copy"))
    assert out == "Already up to date (commit 0).\n"


#: Runs the kvol program as its entry point does (``main()``, no arguments given).
PROGRAM = """
import json, runpy, sys
sys.argv = ["kvol", *sys.argv[1:]]
try:
    runpy.run_module("kvol.cli.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_the_kvol_program_records_no_metrics_and_talks_no_http_on_a_plain_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One command, then exit: nothing scrapes the program's metrics, so it never loads
    prometheus_client; a plain working copy needs no HTTP client either."""
    store = str(tmp_path / "store")
    assert main(["--store", store, "volume", "create", "v"]) == 0
    assert main(["--store", store, "volume", "mount", "v", str(tmp_path / "copy")]) == 0
    capsys.readouterr()
    (tmp_path / "copy" / "new.txt").write_text("new")
    for command in ("commit", "reload"):
        proc = subprocess.run(
            [sys.executable, "-c", PROGRAM, "--store", store, "volume", command],
            cwd=tmp_path / "copy",
            env={**os.environ, "PYTHONSAFEPATH": "1"},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        result = json.loads(proc.stdout.splitlines()[-1])
        assert result["code"] == 0, proc.stderr
        modules = set(result["modules"])
        assert "kvol.metrics" in modules  # the core still counts, into nothing
        assert [m for m in ("prometheus_client", "http.client") if loaded(modules, m)] == []
    assert main(["--store", store, "volume", "ls", "v", "/"]) == 0
    assert capsys.readouterr().out == "new.txt\n"


def test_the_listed_help_of_each_command_is_its_own() -> None:
    """The one-line help ``kvol --help`` shows without importing a command is the help
    the command gives itself."""
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    own = {choice.dest: choice.help for choice in sub._choices_actions}
    assert own == {name: help for name, _module, help in cli.COMMANDS}


def test_a_store_named_like_a_command_is_still_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "volume"
    assert main(["--store", str(store), "volume", "create", "v"]) == 0
    capsys.readouterr()
    assert main(["--store", str(store), "volume", "list", "--json"]) == 0
    assert [v["name"] for v in json.loads(capsys.readouterr().out)] == ["v"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["nope"], "invalid choice: 'nope'"),
        (["volume"], "the following arguments are required: COMMAND"),
        (["volume", "ls"], "the following arguments are required: name"),
    ],
)
def test_a_missing_or_unknown_command_is_refused_as_before(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


class _Answers:
    """A watcher's answers, without a copy behind them."""

    def commit(self, message: str | None = None) -> dict[str, Any]:
        return {"seq": 7, "files": 1, "bytes": 3, "deleted": 0, "deferred": [], "skipped": []}

    def reload(self) -> dict[str, Any]:
        return {"from_seq": 7, "to_seq": 7, "files": 0, "kept_local": []}

    def status(self) -> dict[str, Any]:
        return {}


def test_a_command_on_a_watched_copy_loads_neither_a_store_nor_the_copy(tmp_path: Path) -> None:
    """kvol volume watch answers the copy's commands over its socket: the command itself
    loads no store, no working copy, no content machinery and no HTTP library."""
    from kvol.control import ControlServer

    root = tmp_path / "copy"
    (root / ".kvol").mkdir(parents=True)
    (root / ".kvol" / "config.json").write_text("{}")
    server = ControlServer(root / ".kvol" / "control.sock", _Answers(), socket_mode=0o600)
    server.start()
    try:
        for command, said in (("commit", "as commit 7."), ("reload", "Already up to date")):
            code, out, modules = run_child("volume", command, str(root))
            assert code == 0 and said in out, out
            heavy = ("kvol.repo", "kvol.store", "kvol.workcopy", "kvol.content", "http.client")
            assert [m for m in heavy if loaded(modules, m)] == []
    finally:
        server.stop()
