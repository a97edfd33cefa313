"""The benchmark harness works end to end at tiny sizes: JSON out, every number real.

This proves the harness and its JSON, not kvol's speed: no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # ``python -m bench`` finds the package in the current directory, which the
    # project's usual PYTHONSAFEPATH would hide (see bench/README.md).
    env.pop("PYTHONSAFEPATH", None)
    env["TMPDIR"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    proc = run_bench(tmp, "--only", "core", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "core.commit_large" in proc.stderr  # progress goes to stderr
    parsed: dict[str, Any] = json.loads(out.read_text())
    return parsed


def test_document_has_environment_and_summary(document: dict[str, Any]) -> None:
    env = document["environment"]
    assert env["cpus"] >= 1 and env["python"] and env["git_version"]
    assert document["quick"] is True
    assert document["duration_seconds"] > 0
    summary = document["summary"]
    assert summary["errors"] == 0, [r for r in document["results"] if "error" in r]
    assert summary["results"] == len(document["results"])
    assert summary["passed"] + summary["failed"] + summary["report_only"] == summary["results"]


def test_every_core_result_on_both_default_stores(document: dict[str, Any]) -> None:
    names = {
        "core.commit_large",
        "core.commit_small_files",
        "core.commit_noop",
        "core.commit_noop_cold",
        "core.materialize",
        "core.reload_changed",
        "core.reload_noop",
    }
    stores = document["stores"]
    assert len(stores) == 2 and any("fsync=false" in s for s in stores)
    seen = {(r["name"], r["store"]) for r in document["results"]}
    assert seen == {(n, s) for n in names for s in stores}


def test_results_carry_positive_numbers_beside_a_baseline(document: dict[str, Any]) -> None:
    for r in document["results"]:
        assert r["kvol_seconds"] > 0, r
        assert r["baseline"]["name"] and r["baseline"]["seconds"] > 0, r
        assert r["baseline_seconds"] == r["baseline"]["seconds"]
        assert r["ratio"] == pytest.approx(r["baseline_seconds"] / r["kvol_seconds"], rel=1e-3)
        for other in r["other_baselines"]:
            assert other["seconds"] > 0 and other["ratio"] > 0, r
        if r["target"] is None:
            assert r["passed"] is None
        else:
            assert r["target"]["kind"] in ("speedup_at_least", "seconds_at_most")
            assert isinstance(r["passed"], bool)


def test_json_goes_to_stdout_without_out(tmp_path: Path) -> None:
    proc = run_bench(
        tmp_path,
        "--only",
        "core.commit_small_files",
        "--store",
        f"file://{tmp_path}/store?fsync=false",
    )
    assert proc.returncode == 0, proc.stderr
    parsed = json.loads(proc.stdout)
    assert [r["name"] for r in parsed["results"]] == ["core.commit_small_files"]
    assert parsed["stores"] == [f"file://{tmp_path}/store?fsync=false"]


def test_unknown_scenario_is_an_error(tmp_path: Path) -> None:
    proc = run_bench(tmp_path, "--only", "no.such.scenario")
    assert proc.returncode == 2
    assert "no scenario matches" in proc.stderr


def test_scenario_modules_are_discovered(tmp_path: Path) -> None:
    (tmp_path / "zz_extra.py").write_text(
        "from bench import Measurement, Result, Scenario\n"
        "SCENARIOS = [Scenario('zz.one', lambda ctx: Result('zz.one', 0.5, "
        "Measurement('sleep', 1.0)), per_store=False)]\n"
    )
    (tmp_path / "zz_helpers.py").write_text("VALUE = 1\n")  # no SCENARIOS: ignored
    (tmp_path / "zz_broken.py").write_text("raise RuntimeError('boom')\n")
    sys.path.insert(0, str(REPO))
    try:
        from bench.harness import discover, run_scenario

        scenarios, errors = discover(tmp_path)
        assert [s.name for s in scenarios] == ["zz.one"]
        assert len(errors) == 1 and "boom" in errors[0]["error"]
        from bench import Sizes

        [result] = run_scenario(scenarios[0], None, Sizes.quick(), root=tmp_path)
    finally:
        sys.path.remove(str(REPO))
    assert result["ratio"] == 2.0 and result["store"] is None and result["passed"] is None
