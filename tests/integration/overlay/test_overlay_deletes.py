"""An overlay copy's ``rm -r`` deletes what the copy saw, never what others added since;
and the snapshots it sits on never carry set-id bits (root only)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from kvol.model import FileRecord, PutOp
from kvol.mounting import MountError
from kvol.overlay import Lowers, OverlayWorkingCopy
from kvol.repo import Repo
from kvol.upload import publish
from kvol.workcopy import WorkingCopy

pytestmark = pytest.mark.root


def write(wc: WorkingCopy, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = wc.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def state_files(repo: Repo) -> dict[str, bytes]:
    reader = repo.reader()
    return {p: reader.read(r) for p, r in repo.state().files.items()}


@pytest.mark.parametrize("recreate", [False, True], ids=["removed", "replaced-by-opaque"])
def test_rm_r_in_an_overlay_copy_keeps_files_others_added_meanwhile(
    repo: Repo,
    lowers: Lowers,
    tmp_path: Path,
    mounted: list[OverlayWorkingCopy],
    recreate: bool,
) -> None:
    seeder = WorkingCopy.create(repo, tmp_path / "seed")
    write(seeder, {"d/x": b"x", "d/sub/y": b"y", "keep": b"k"})
    seq = seeder.commit().seq
    assert seq is not None
    pod = OverlayWorkingCopy.mount(repo, lowers, lowers.build(repo, seq), tmp_path / "pod")
    mounted.append(pod)

    # Another writer adds files under the directory after the pod's copy was made.
    write(seeder, {"d/new": b"n", "d/sub/new2": b"n2"})
    seeder.commit()
    seeder.close(final_commit=False)

    shutil.rmtree(pod.root / "d")  # a whiteout (or, recreated, an opaque directory)
    if recreate:
        write(pod, {"d/z": b"z"})
    pod.commit()

    expected = {"keep": b"k", "d/new": b"n", "d/sub/new2": b"n2"}
    if recreate:
        expected["d/z"] = b"z"
    assert state_files(repo) == expected


def test_overlay_snapshots_never_carry_set_id_bits(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    # A volume written elsewhere may hold set-id modes: publish one directly.
    data = b"#!/bin/sh\necho hi\n"
    seeder = WorkingCopy.create(repo, tmp_path / "seed")
    write(seeder, {"tool": data})
    plain = repo.state(seeder.commit().seq).files["tool"]
    seeder.close(final_commit=False)
    record = FileRecord(plain.size, plain.mtime_ns, 0o6755, plain.hash, plain.parts)
    publish(repo, repo.state(), [PutOp("tool", record)], "set-id mode")
    assert repo.state().files["tool"].mode == 0o6755

    lower = lowers.build(repo, repo.head())
    assert stat.S_IMODE(os.stat(lower.tree / "tool").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(lowers.cache.path(record)).st_mode) == 0o755
    pod = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod")
    mounted.append(pod)
    st = os.stat(pod.root / "tool")
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert (pod.root / "tool").read_bytes() == data
    assert pod.commit().seq is None  # an untouched file is not published again


def test_a_snapshot_an_overlay_sits_on_is_never_dropped(
    repo: Repo, lowers: Lowers, tmp_path: Path, mounted: list[OverlayWorkingCopy]
) -> None:
    seeder = WorkingCopy.create(repo, tmp_path / "seed")
    write(seeder, {"a": b"a", "d/b": b"b"})
    seq = seeder.commit().seq
    seeder.close(final_commit=False)
    assert seq is not None
    lower = lowers.build(repo, seq)
    pod = OverlayWorkingCopy.mount(repo, lowers, lower, tmp_path / "pod")
    mounted.append(pod)
    with pytest.raises(MountError):
        lowers.drop(lower)
    assert lowers.get(repo.volume_id, seq) is not None
    assert (pod.root / "d/b").read_bytes() == b"b"
    assert pod.commit().seq is None  # nothing vanished, nothing to publish
    mounted.remove(pod)
    pod.close(final_commit=False)
    pod.unmount()
    lowers.drop(lower)  # unused now
    assert lowers.get(repo.volume_id, seq) is None
