"""What a pod gets from a volume, for every layout: no setuid programs or device files
honoured, and a reload never swaps a file from under one of its processes."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kvol import errors
from kvol.catalog import Catalog
from kvol.mounted import ControlMount
from kvol.mounting import mount_table
from kvol.store import FilesystemStore
from kvol.volume import Volume
from tests.integration.csi.conftest import NAMESPACE
from tests.integration.csi.plugin import Kubelet, Plugin

pytestmark = pytest.mark.root

NOBODY = 65534


def mount_options(path: Path) -> set[str]:
    where = os.path.realpath(path)
    [entry] = [e for e in mount_table() if e.mount_point == where]
    return set(entry.options.split(","))


def traversable_by_anyone(path: Path) -> list[tuple[Path, int]]:
    """Let any user reach ``path`` (test directories are root's alone); returns what to
    restore."""
    changed = []
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            changed.append((directory, stat.S_IMODE(mode)))
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    return changed


@pytest.mark.parametrize("layout", ["plain", "overlay"])
def test_setuid_root_programs_of_a_volume_are_not_setuid_in_a_pod(
    workdir: Path, store_dir: Path, catalog: Catalog, layout: str
) -> None:
    id_program = shutil.which("id")
    assert id_program is not None
    volume = Volume.from_id(catalog.repo("data").volume_id, store=FilesystemStore(store_dir))
    with volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(Path(id_program).read_bytes()), "bin/id", mode=0o6755)

    plugin = Plugin(workdir, f"file://{store_dir}", extra_args=[f"--layout={layout}"])
    plugin.start()
    restore: list[tuple[Path, int]] = []
    try:
        kubelet = Kubelet(plugin, workdir / "kubelet")
        pod = kubelet.pod(NAMESPACE)
        kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0"})
        for mount in (pod.target, pod.target / ".kvol"):
            assert {"nosuid", "nodev"} <= mount_options(mount)
            flags = os.statvfs(mount).f_flag
            assert flags & os.ST_NOSUID and flags & os.ST_NODEV
        assert "noexec" in mount_options(pod.target / ".kvol")

        program = pod.target / "bin/id"
        assert stat.S_IMODE(program.stat().st_mode) & 0o7000 == 0
        assert program.stat().st_mode & 0o111  # still a program the pod can run
        restore = traversable_by_anyone(program.parent)
        euid = subprocess.run(
            [str(program), "-u"],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert euid == str(NOBODY)  # not root: the setuid bit was not honoured
        kubelet.unpublish(pod)
    finally:
        for directory, mode in reversed(restore):
            directory.chmod(mode)
        plugin.stop()


def test_plain_copy_reload_is_refused_while_a_pod_holds_a_file_open(
    workdir: Path, catalog: Catalog, plain_plugin: Plugin
) -> None:
    kubelet = Kubelet(plain_plugin, workdir / "kubelet")
    writer, reader = kubelet.pod(NAMESPACE), kubelet.pod(NAMESPACE)
    for pod in (writer, reader):
        kubelet.publish(pod, attributes={"autocommitIntervalSeconds": "0"})
    w, r = ControlMount(writer.target), ControlMount(reader.target)
    (writer.target / "log.txt").write_text("one\n")
    w.commit()
    r.reload()
    # A process of the reading pod holds the file open through the pod's mount (the
    # kubelet's target path), not through the copy's own directory.
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import sys, time\n"
            "f = open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(600)",
            str(reader.target / "log.txt"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        (writer.target / "log.txt").write_text("two\n")
        w.commit()
        with pytest.raises(errors.VolumeBusy) as busy:
            r.reload()
        assert any(pid == holder.pid for pid, _, _ in busy.value.holders)
        assert (reader.target / "log.txt").read_text() == "one\n"
    finally:
        holder.kill()
        holder.wait()
    assert r.reload()["to_seq"] == 2
    assert (reader.target / "log.txt").read_text() == "two\n"
    for pod in (writer, reader):
        kubelet.unpublish(pod)
