"""The kvol-operator command line (running it needs a cluster: see the integration tests)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvol.operator.handlers import backoff
from kvol.operator.main import main


def test_help_names_commands_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in (
        "crds",
        "--namespace",
        "--all-namespaces",
        "--metrics-port",
        "--liveness-port",
        "--status-interval",
    ):
        assert word in out


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_module_prints_crds() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kvol.operator", "crds"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    ).stdout
    assert "name: volumes.kvol.dev" in out and "name: volumebackends.kvol.dev" in out


def test_backoff_grows_to_a_ceiling() -> None:
    assert [backoff(r, 10) for r in range(6)] == [1, 2, 4, 8, 10, 10]
