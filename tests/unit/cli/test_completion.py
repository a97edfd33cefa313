"""``kvol completion SHELL``: scripts generated from the parser, so every command and
option completes; the bash one is run by bash itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvol.cli.main import build_parser
from tests.unit.test_cli import Cli, cli, store  # noqa: F401


def complete(script_path: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last of ``words``, as a user pressing tab would get."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script_path}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        '_kvol; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, cwd=cwd, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completion_offers_commands_options_choices_and_files(
    cli: Cli,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = tmp_path / "kvol.bash"
    path.write_text(cli.ok("completion", "bash"))
    (tmp_path / "results.csv").write_text("x")
    assert "volume" in complete(path, ["kvol", ""], tmp_path)
    assert complete(path, ["kvol", "vol"], tmp_path) == ["volume"]
    assert complete(path, ["kvol", "--store", "/s", "volume", "p"], tmp_path) == ["put"]
    assert complete(path, ["kvol", "volume", "put", "data", "--f"], tmp_path) == ["--force"]
    assert complete(path, ["kvol", "volume", "create", "x", "--version", ""], tmp_path) == [
        "1",
        "2",
    ]
    assert complete(path, ["kvol", "volume", "put", "data", "res"], tmp_path) == ["results.csv"]
    assert complete(path, ["kvol", "completion", ""], tmp_path) == ["bash", "zsh", "fish"]
    assert complete(path, ["kvol", "--store", "res"], tmp_path) == ["results.csv"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_every_command_and_option(shell: str) -> None:
    from kvol.cli.completion import commands, script

    text = script(shell, build_parser())
    for command in commands(build_parser()):
        for name in command.subcommands:
            assert f"'{name}'" in text or f" {name}" in text, name
        for option in command.options:
            assert option.lstrip("-") in text, option
    if shell == "zsh":
        assert text.startswith("#compdef kvol\n") and "complete -o filenames -F _kvol kvol" in text
    else:
        assert "complete -c kvol -n '__kvol_at \\'volume put\\'' -s f -d" in text
