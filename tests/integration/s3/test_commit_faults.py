"""Commits on a real MinIO that dies mid-commit, and writers on two "machines" racing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvol import errors
from kvol.repo import Repo
from kvol.store.s3 import S3Store
from kvol.workcopy import WorkingCopy
from tests.minio import MinioServer, start_minio

pytestmark = pytest.mark.s3


@pytest.fixture
def own_minio(tmp_path: Path) -> Iterator[MinioServer]:
    """A server this test may kill without disturbing the others."""
    with start_minio(tmp_path / "minio") as server:
        yield server


class KillingStore(S3Store):
    """The real S3 store; it kills the server just before one chosen request is sent."""

    server: MinioServer
    kill_before: str  # "upload" or "publish"
    uploads_before_kill = 3
    uploads = 0

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self.uploads += 1
        if self.kill_before == "upload" and self.uploads == self.uploads_before_kill:
            self.server.kill()
        super()._put(key, data)

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        if self.kill_before == "publish" and "/log/" in key:
            self.server.kill()
        return super()._put_if_absent(key, data)


def write_tree(root: Path) -> dict[str, bytes]:
    files = {f"small/{i:03d}.txt": f"small file {i}\n".encode() * 20 for i in range(40)}
    # Several chunks each (the volume's chunk size is 1 MiB below), so many uploads.
    files |= {f"large/{i}.bin": os.urandom(3 * 1024 * 1024 + i) for i in range(3)}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def tree_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".kvol" not in p.relative_to(root).parts
    }


@pytest.mark.parametrize("kill_before", ["upload", "publish"])
def test_server_killed_mid_commit(own_minio: MinioServer, tmp_path: Path, kill_before: str) -> None:
    bucket = own_minio.create_bucket()
    store = KillingStore(own_minio.settings(bucket, "vols/", retry_timeout=2.0, max_retries=3))
    store.server = own_minio
    store.kill_before = "none"
    repo = Repo.create(store, chunk_size=1024 * 1024)
    wc = WorkingCopy.create(repo, tmp_path / "wc")
    files = write_tree(tmp_path / "wc")

    store.kill_before = kill_before
    started = time.monotonic()
    with pytest.raises(errors.StoreUnavailable) as caught:
        wc.commit()
    assert time.monotonic() - started < 60
    # One clear line naming the server, and the caller may try again.
    assert caught.value.retryable
    assert f"bucket {bucket!r} at {own_minio.endpoint}" in str(caught.value)
    assert "\n" not in str(caught.value)

    # Nothing was lost: every change is still in the working copy, waiting.
    assert tree_of(tmp_path / "wc") == files
    status = wc.status()
    assert set(status.changed) >= set(files)
    assert status.base_seq == 0

    # The server comes back with what it had; the next commit lands.
    store.kill_before = "none"
    own_minio.start()
    result = wc.commit()
    assert result.seq == 1
    assert result.files == len(files)
    assert wc.status().changed == ()

    fresh = own_minio.store(bucket, "vols/")
    assert Repo(fresh, repo.volume_id).head() == 1
    copy = WorkingCopy.create(Repo(fresh, repo.volume_id), tmp_path / "copy")
    assert tree_of(tmp_path / "copy") == files
    copy.close(final_commit=False)
    wc.close(final_commit=False)


WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from kvol.repo import Repo
    from kvol.store import open_store
    from kvol.workcopy import WorkingCopy

    url, volume_id, root, name, go, commits = sys.argv[1:7]
    repo = Repo(open_store(url), volume_id)
    wc = WorkingCopy.create(repo, root)
    Path(root + ".ready").touch()
    while not Path(go).exists():
        time.sleep(0.005)
    seqs = []
    for i in range(int(commits)):
        (Path(root) / f"{name}-{i}.txt").write_text(f"{name} {i}")
        (Path(root) / "shared.txt").write_text(f"{name} {i}")
        seqs.append(wc.commit().seq)
    wc.close(final_commit=False)
    print(json.dumps(seqs))
    """
)


def test_two_machines_racing_on_the_same_log_position_both_land_in_order(
    minio: MinioServer, s3_bucket: str, tmp_path: Path
) -> None:
    store = minio.store(s3_bucket, "vols/")
    repo = Repo.create(store)
    url = minio.url(s3_bucket, "vols")
    go = tmp_path / "go"
    commits = 8
    env = {**os.environ, **minio.env, "PYTHONSAFEPATH": "1"}
    writers = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                url,
                repo.volume_id,
                str(tmp_path / name),
                name,
                str(go),
                str(commits),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("alpha", "beta")
    }
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{name}.ready").exists() for name in writers):
        assert time.monotonic() < deadline, "writers did not start"
        assert all(p.poll() is None for p in writers.values()), [
            p.communicate() for p in writers.values()
        ]
        time.sleep(0.01)
    # Both start from the same head, so their first commits race for the same position.
    go.touch()
    seqs = {}
    for name, proc in writers.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        seqs[name] = json.loads(out)

    # Every commit landed, each at its own position, each writer's in its own order.
    everything = sorted(seqs["alpha"] + seqs["beta"])
    assert everything == list(range(1, 2 * commits + 1))
    for name in writers:
        assert seqs[name] == sorted(seqs[name])
    fresh = Repo(minio.store(s3_bucket, "vols/"), repo.volume_id)
    assert fresh.head() == 2 * commits
    state = fresh.state()
    for name in writers:
        for i in range(commits):
            assert f"{name}-{i}.txt" in state.files
    # The same file: the commit published last wins.
    last_writer = "alpha" if seqs["alpha"][-1] > seqs["beta"][-1] else "beta"
    copy = WorkingCopy.create(fresh, tmp_path / "reader")
    assert (tmp_path / "reader" / "shared.txt").read_text() == f"{last_writer} {commits - 1}"
    copy.close(final_commit=False)


RACER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from kvol.store import open_store

    url, go, keys = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    store = open_store(url)
    store.put_if_absent("warm-up-" + sys.argv[4], b"x")
    Path(str(go) + "." + sys.argv[4]).touch()
    while not go.exists():
        time.sleep(0.005)
    won = [k for k in range(keys) if store.put_if_absent(f"log/{k:06d}", sys.argv[4].encode())]
    print(json.dumps(won))
    """
)


def test_two_processes_racing_put_if_absent_each_key_has_one_winner(
    minio: MinioServer, s3_bucket: str, tmp_path: Path
) -> None:
    url = minio.url(s3_bucket, "race")
    go = tmp_path / "go"
    keys = 200
    env = {**os.environ, **minio.env, "PYTHONSAFEPATH": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", RACER, url, str(go), str(keys), name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    }
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{name}").exists() for name in procs):
        assert time.monotonic() < deadline
        assert all(p.poll() is None for p in procs.values())
        time.sleep(0.01)
    go.touch()
    won = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        won[name] = set(json.loads(out))
    assert won["one"].isdisjoint(won["two"])
    assert won["one"] | won["two"] == set(range(keys))
    store = minio.store(s3_bucket, "race/")
    for k in range(keys):
        winner = "one" if k in won["one"] else "two"
        assert store.get(f"log/{k:06d}") == winner.encode()
