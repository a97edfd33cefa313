"""examples/modal_volume.py, code written for ``modal.Volume``, runs on kvol with only its
import changed: its local part against a filesystem store, its container part in a
working copy mounted as ``kvol volume mount`` makes one."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "modal_volume.py"
KVOL = str(Path(sys.executable).with_name("kvol"))


def test_the_only_kvol_line_is_the_import() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    imports = [
        (alias.name, alias.asname)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
        if "kvol" in alias.name
        or (isinstance(node, ast.ImportFrom) and "kvol" in (node.module or ""))
    ]
    assert imports == [("kvol", "modal")]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "kvol" not in names


def test_modal_shaped_script_runs_on_kvol(tmp_path: Path) -> None:
    mount = tmp_path / "data"
    env = {
        **os.environ,
        "PYTHONSAFEPATH": "1",
        "KVOL_STORE": f"file://{tmp_path / 'store'}",
        "EXAMPLE_MOUNT": str(mount),
        "TMPDIR": str(tmp_path),
    }
    env.pop("KVOL_MOUNTS", None)

    def python(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(EXAMPLE), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = python()
    assert "root: ['config.json', 'dataset', 'hello.txt']" in out
    assert 'config: {"lr": 0.001}' in out
    assert "backup: dir backup/train" in out
    assert "backup: file backup/train/part-0.csv" in out
    assert "volume listed: True" in out

    mounted = subprocess.run(
        [KVOL, "volume", "mount", "modal-example", str(mount)],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert mounted.returncode == 0, mounted.stderr
    env["KVOL_MOUNTS"] = json.dumps({"modal-example": str(mount)})
    out = python("container")
    assert "reload refused while a file is open: VolumeBusy" in out
    assert "after reload: published elsewhere" in out
    assert "committed: ['results.txt']" in out
    assert not (mount / "dataset").exists() and (mount / "backup" / "labels.txt").exists()
