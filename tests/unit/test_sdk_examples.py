"""The SDK examples run as users would run them, and say what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, tmp_path: Path) -> str:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "TMPDIR": str(tmp_path)}
    env.pop("KVOL_STORE", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("sdk_quickstart.py", tmp_path)
    assert "refused: /hello.txt already exists" in out
    assert "now at the root: ['backup', 'hello.txt', 'inputs']" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(180)
def test_workers(tmp_path: Path) -> None:
    out = run_example("sdk_workers.py", tmp_path)
    for worker in range(3):
        assert f"/results/{worker}.txt: result of worker {worker}" in out
    assert "/latest.txt: worker 2 was here" in out
    assert "worker 0 after reload sees latest.txt: worker 2 was here" in out
