"""Lazy cache entries under real overlay mounts: the tree is there before any byte is
fetched, a file is filled (verified) on first open, and a commit only sees real changes
(root only: fanotify pre-content events and overlayfs)."""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kvol.catalog import Catalog
from kvol.errors import CorruptData
from kvol.fangroup import HOLDER_FILE
from kvol.lazy import STATE_DIR, is_placeholder
from kvol.model import FileRecord, PutOp
from kvol.mounting import mount_overlay, umount
from kvol.overlay import ContentCache, Lowers, OverlayWorkingCopy
from kvol.repo import Repo
from kvol.workcopy import WorkingCopy
from tests.integration.overlay.seeding import seed

pytestmark = pytest.mark.root

BIG = 600 * 1024  # above the pack threshold: stored as its own blob


def files_of(n: int = 6) -> dict[str, bytes]:
    files = {f"d{i % 2}/f{i}.bin": os.urandom(100 + i * 37) for i in range(n)}
    files["big/model.bin"] = os.urandom(BIG)
    return files


@pytest.fixture
def caches(tmp_path: Path) -> Iterator[list[ContentCache]]:
    made: list[ContentCache] = []
    yield made
    for cache in made:
        cache.close()


def lazy_cache(tmp_path: Path, caches: list[ContentCache], **kw: bool) -> ContentCache:
    cache = ContentCache(tmp_path / "cache", lazy=kw.get("lazy", True), prefetch=False)
    caches.append(cache)
    return cache


def mount_lazily(
    repo: Repo,
    seq: int,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> tuple[OverlayWorkingCopy, ContentCache]:
    """A pod's copy of ``seq`` over a snapshot built on a new lazy cache."""
    cache = lazy_cache(tmp_path, caches)
    lowers = Lowers(tmp_path / "lowers", cache)
    wc = OverlayWorkingCopy.mount(repo, lowers, lowers.build(repo, seq), tmp_path / "pod")
    mounted.append(wc)
    return wc, cache


def entries(cache: ContentCache) -> list[Path]:
    return [p for p in cache.root.glob("??/*") if not p.name.startswith(".")]


def seed_with_short_records(
    repo: Repo, tmp_path: Path, names: list[str], mtime_shift: int = 0
) -> tuple[dict[str, bytes], int]:
    """A volume of ``files_of()``, then ``names`` published as an older version could:
    the large file's content and parts, half its size. Returns the files and the seq."""
    files = files_of()
    seq = seed(repo, tmp_path, files)
    good = repo.state(seq).files["big/model.bin"]
    short = FileRecord(
        good.size // 2, good.mtime_ns + mtime_shift, good.mode, good.hash, good.parts
    )
    return files, repo.publish([PutOp(name, short) for name in names], seq)


def read_fails_with_eio(path: Path) -> None:
    with pytest.raises(OSError) as failed:
        path.read_bytes()
    assert failed.value.errno == errno.EIO


FAILURE_METRICS = ("kvol_lazy_fetches_total", "kvol_lazy_reads_held_total")


def metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tree_is_visible_before_any_byte_is_fetched_and_a_read_fills_it(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    files = files_of()
    seq = seed(repo, tmp_path, files, first_mode=0o751)
    wc, cache = mount_lazily(repo, seq, tmp_path, caches, mounted)
    state = repo.state(seq)

    # Names, sizes, modes and mtimes as committed; no entry holds a byte yet.
    for rel, record in state.files.items():
        st = os.stat(wc.root / rel)
        assert (st.st_size, st.st_mode & 0o777, st.st_mtime_ns) == (
            record.size,
            record.mode & 0o777,
            record.mtime_ns,
        )
    assert len(entries(cache)) == len(files)
    assert all(is_placeholder(p) and os.stat(p).st_blocks == 0 for p in entries(cache))

    # read(), mmap and an open for append (overlayfs copies the file up) all see the content.
    assert (wc.root / "d0/f0.bin").read_bytes() == files["d0/f0.bin"]
    with (
        open(wc.root / "big/model.bin", "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
    ):
        assert m[:] == files["big/model.bin"]
    with open(wc.root / "d1/f1.bin", "ab") as out:
        out.write(b"+")
    assert (wc.upper / "d1/f1.bin").read_bytes() == files["d1/f1.bin"] + b"+"

    # Filled entries are whole and keep their identity; the rest are still placeholders.
    filled = {cache.path(state.files[r]) for r in ("d0/f0.bin", "big/model.bin", "d1/f1.bin")}
    for path in entries(cache):
        assert is_placeholder(path) == (path not in filled)
    record = state.files["big/model.bin"]
    assert os.stat(cache.path(record)).st_mtime_ns == record.mtime_ns
    assert cache.path(record).read_bytes() == files["big/model.bin"]

    # Background prefetch fills the rest; nothing stays a placeholder or a manifest.
    assert cache.lazy is not None
    cache.lazy.prefetch(entries(cache))
    assert cache.lazy.wait_idle(10)
    assert not any(is_placeholder(p) for p in entries(cache))
    assert not list((cache.root / STATE_DIR).glob("*.json"))
    for rel, data in files.items():
        if rel != "d1/f1.bin":
            assert (wc.root / rel).read_bytes() == data


def test_one_content_is_one_placeholder_shared_by_its_files_and_by_later_snapshots(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    same = os.urandom(BIG)
    wc = WorkingCopy.create(repo, tmp_path / "seed")
    for rel, data in (("a/x.bin", same), ("b/y.bin", same), ("c/z.bin", b"other")):
        (wc.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (wc.root / rel).write_bytes(data)
        os.utime(wc.root / rel, ns=(10**18, 10**18))  # one mtime: one cache entry
    first = wc.commit().seq
    assert first is not None
    pod, cache = mount_lazily(repo, first, tmp_path, caches, mounted)
    lowers = Lowers(tmp_path / "lowers", cache)
    tree = lowers.build(repo, first).tree
    entry = cache.path(repo.state(first).files["a/x.bin"])
    inode = os.stat(entry).st_ino
    assert is_placeholder(entry) and len(entries(cache)) == 2
    assert os.stat(tree / "a/x.bin").st_ino == os.stat(tree / "b/y.bin").st_ino == inode

    # A later snapshot on the same node links the placeholder still pending: no new one.
    (wc.root / "d.bin").write_bytes(b"new")
    second = wc.commit().seq
    wc.close(final_commit=False)
    assert second is not None
    later = lowers.build(repo, second).tree
    assert os.stat(later / "a/x.bin").st_ino == inode and is_placeholder(entry)
    assert len(entries(cache)) == 3

    # One read fills the one inode every name shares.
    assert (pod.root / "b/y.bin").read_bytes() == same
    assert not is_placeholder(entry)
    assert (later / "a/x.bin").read_bytes() == same


def test_a_corrupt_object_fails_the_read_with_eio_and_the_entry_stays_a_placeholder(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    files = files_of(2)
    seq = seed(repo, tmp_path, files, first_mode=0o751)
    record = repo.state(seq).files["big/model.bin"]
    (blob,) = (tmp_path / "store").rglob(record.parts[0].obj)
    good = blob.read_bytes()
    blob.write_bytes(bytes(b ^ 0xFF for b in good[:16]) + good[16:])  # same size, wrong bytes

    wc, cache = mount_lazily(repo, seq, tmp_path, caches, mounted)
    failed_before = [metric(n, {"result": "failed"}) for n in FAILURE_METRICS]
    for _ in range(2):  # a failed fill is tried again on the next open, and fails again
        with pytest.raises(OSError) as exc:
            (wc.root / "big/model.bin").read_bytes()
        assert exc.value.errno == errno.EIO
    # Each open was held and failed; each fill failed (counted for the node's dashboard).
    failed = [
        metric(n, {"result": "failed"}) - b
        for n, b in zip(FAILURE_METRICS, failed_before, strict=True)
    ]
    assert failed == [2, 2]
    with pytest.raises(OSError) as exc, open(wc.root / "big/model.bin", "rb") as f:
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    assert exc.value.errno == errno.EIO
    assert is_placeholder(cache.path(record))
    assert (wc.root / "d1/f1.bin").read_bytes() == files["d1/f1.bin"]  # others unaffected

    blob.write_bytes(good)  # the store is repaired: the next open fills it
    assert (wc.root / "big/model.bin").read_bytes() == files["big/model.bin"]
    assert not is_placeholder(cache.path(record))


def test_a_restarted_cache_marks_and_refills_what_the_previous_one_left(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    files = files_of()
    seq = seed(repo, tmp_path, files, first_mode=0o751)
    wc, first = mount_lazily(repo, seq, tmp_path, caches, mounted)
    assert (wc.root / "d0/f0.bin").read_bytes() == files["d0/f0.bin"]
    first.close()  # the process holding the group goes away with placeholders left

    # A cache opened without lazy on it still takes them over: none is left unwatched.
    second = lazy_cache(tmp_path, caches, lazy=False)
    assert second.lazy is not None
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append((wc.root / "d1/f3.bin").read_bytes()))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive(), got  # waits: nothing knows the volume's store yet
    second.adopt(repo)
    reader.join(10)
    assert got == [files["d1/f3.bin"]]

    assert second.lazy.wait_idle(10)  # the rest is refilled in the background
    assert not any(is_placeholder(p) for p in entries(second))
    for rel, data in files.items():
        assert (wc.root / rel).read_bytes() == data
    assert not list((second.root / STATE_DIR).glob("*.json"))


def test_a_record_whose_parts_do_not_add_up_never_shares_the_entry_of_its_content(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    # Same content id, mode and mtime as a good file, another size: one entry for both
    # would give both one size, and fill it with one record or fail it for both.
    files, seq = seed_with_short_records(repo, tmp_path, ["a-short.bin", "z-short.bin"])
    wc, _ = mount_lazily(repo, seq, tmp_path, caches, mounted)
    assert (wc.root / "big/model.bin").read_bytes() == files["big/model.bin"]
    for rel in ("a-short.bin", "z-short.bin"):
        read_fails_with_eio(wc.root / rel)


def test_a_full_download_of_a_record_whose_parts_do_not_add_up_names_its_file(
    repo: Repo, tmp_path: Path, caches: list[ContentCache]
) -> None:
    # Without lazy fetch a snapshot holds every file's content: one that cannot be made
    # stops the build, and the error says which file to remove or restore.
    _, seq = seed_with_short_records(repo, tmp_path, ["models/short.bin"])
    lowers = Lowers(tmp_path / "lowers", lazy_cache(tmp_path, caches, lazy=False))
    with pytest.raises(CorruptData, match=r"volume file /models/short\.bin is unreadable"):
        lowers.build(repo, seq)


def test_placeholders_of_an_unreadable_manifest_fail_their_opens_never_read_zeros(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    files = files_of()
    seq = seed(repo, tmp_path, files)
    wc, first = mount_lazily(repo, seq, tmp_path, caches, mounted)
    assert (wc.root / "d0/f0.bin").read_bytes() == files["d0/f0.bin"]
    first.close()
    (manifest,) = (first.root / STATE_DIR).glob("*.json")
    manifest.write_bytes(b'{"format": 1, "volume": "')  # torn by something outside kvol
    (first.root / "zz").write_bytes(b"left by something else")  # not an entry directory

    second = lazy_cache(tmp_path, caches)
    assert second.lazy is not None
    second.adopt(repo)
    for rel in files:
        if rel == "d0/f0.bin":
            assert (wc.root / rel).read_bytes() == files[rel]  # filled before: no mark
            continue
        read_fails_with_eio(wc.root / rel)


def test_a_commit_after_a_lazy_publish_publishes_only_real_changes(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    files = files_of()
    seq = seed(repo, tmp_path, files, first_mode=0o751)
    before = repo.state(seq).files
    wc, cache = mount_lazily(repo, seq, tmp_path, caches, mounted)
    assert wc.commit().seq is None  # nothing changed, nothing fetched

    with open(wc.root / "big/model.bin", "r+b") as f:  # copied up from a placeholder
        f.seek(10)
        f.write(b"XY")
    (wc.root / "new.txt").write_bytes(b"new")
    (wc.root / "d0/f2.bin").unlink()
    result = wc.commit()
    assert result.seq == seq + 1

    after = repo.state().files
    expected = dict(files)
    expected["big/model.bin"] = files["big/model.bin"][:10] + b"XY" + files["big/model.bin"][12:]
    expected["new.txt"] = b"new"
    del expected["d0/f2.bin"]
    reader = repo.reader()
    assert {p: reader.read(r) for p, r in after.items()} == expected
    # Files nobody opened keep their records, and their entries are still placeholders.
    untouched = [p for p in files if p not in ("big/model.bin", "d0/f2.bin")]
    assert all(after[p] == before[p] for p in untouched)
    assert all(is_placeholder(cache.path(before[p])) for p in untouched)


CHILD = """
import sys, time
from kvol.catalog import Catalog
from kvol.overlay import ContentCache, Lowers
from kvol.store import FilesystemStore

cache_dir, lowers_dir, store_dir, seq = sys.argv[1:]
cache = ContentCache(cache_dir, lazy=True, prefetch=False)
cache.lazy._fill_batch = lambda batch: time.sleep(3600)  # every fetch of this process hangs
repo = Catalog(FilesystemStore(store_dir)).repo("vol")
lower = Lowers(lowers_dir, cache).build(repo, int(seq))
print(lower.tree, flush=True)
time.sleep(3600)
"""


def test_opens_of_a_killed_fillers_placeholders_fail_or_wait_never_read_zeros(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
) -> None:
    files = files_of(2)
    seq = seed(repo, tmp_path, files, first_mode=0o751)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / "cache"),
            str(tmp_path / "lowers"),
            str(tmp_path / "store"),
            str(seq),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        tree = Path(child.stdout.readline().decode().strip())
        layers = [tmp_path / n for n in ("upper", "work", "merged")]
        for d in layers:
            d.mkdir()
        mount_overlay(tree, *layers)
        merged = layers[2]
        try:
            outcome: list[object] = []

            def read(rel: str) -> None:
                try:
                    outcome.append((merged / rel).read_bytes())
                except OSError as exc:
                    outcome.append(exc.errno)

            # An open the child read the event of, then the child dies before answering.
            first = threading.Thread(target=read, args=("big/model.bin",))
            first.start()
            first.join(0.5)
            assert first.is_alive()
            child.kill()
            child.wait()
            # Another open while no process fills: it waits, the group outlives the child.
            second = threading.Thread(target=read, args=("d0/f0.bin",))
            second.start()
            first.join(0.3)
            second.join(0.3)
            assert first.is_alive() and second.is_alive() and not outcome

            cache = ContentCache(tmp_path / "cache")  # the restart takes the group over
            caches.append(cache)
            first.join(5)
            assert outcome == [errno.EIO]  # read by the dead filler: failed, not zeros
            cache.adopt(repo)
            second.join(5)
            assert outcome[1] == files["d0/f0.bin"]
            assert (merged / "big/model.bin").read_bytes() == files["big/model.bin"]
        finally:
            umount(merged)
    finally:
        child.kill()
        child.wait()
        holder = tmp_path / "cache" / STATE_DIR / HOLDER_FILE
        if holder.exists():  # not taken over: the test failed before
            with contextlib.suppress(ProcessLookupError):
                os.kill(json.loads(holder.read_bytes())["pid"], signal.SIGKILL)


def test_a_placeholder_left_for_an_unknown_volume_is_filled_from_another_with_that_content(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    files = files_of(2)
    seq = seed(repo, tmp_path, files, first_mode=0o751)
    wc, first = mount_lazily(repo, seq, tmp_path, caches, mounted)
    first.close(release=False)

    # The same files in another volume (same content, mode and mtime: the same entries).
    other = Catalog(repo.store).create("other")
    twin = Catalog(repo.store).repo("other")
    copy = WorkingCopy.create(twin, tmp_path / "twin")
    for rel, record in repo.state(seq).files.items():
        p = copy.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[rel])
        os.chmod(p, record.mode)
        os.utime(p, ns=(record.mtime_ns, record.mtime_ns))
    twin_seq = copy.commit().seq
    copy.close(final_commit=False)
    assert other.id != repo.volume_id and twin_seq is not None

    second = lazy_cache(tmp_path, caches)  # never told about the first volume
    twin_lowers = Lowers(tmp_path / "twin-lowers", second)
    view = OverlayWorkingCopy.mount(
        twin, twin_lowers, twin_lowers.build(twin, twin_seq), tmp_path / "twin-pod"
    )
    mounted.append(view)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append((view.root / "big/model.bin").read_bytes()))
    reader.start()
    reader.join(10)  # without the claim it would wait for the first volume for ever
    assert got == [files["big/model.bin"]]
    assert (wc.root / "d0/f0.bin").read_bytes() == files["d0/f0.bin"]


def test_an_open_waiting_for_a_volume_never_registered_fails_in_time_then_reads_once_it_is(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kvol import lazy

    files = files_of(2)
    seq = seed(repo, tmp_path, files)
    wc, first = mount_lazily(repo, seq, tmp_path, caches, mounted)
    first.close(release=False)  # a restart: the placeholders stay marked
    monkeypatch.setattr(lazy, "UNREGISTERED_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(lazy, "UNREGISTERED_CHECK_SECONDS", 0.1)
    second = lazy_cache(tmp_path, caches)  # nothing registers the volume
    failures = metric("kvol_lazy_reads_held_total", {"result": "failed"})
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append((wc.root / "big/model.bin").read_bytes())
        except OSError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(15)
    assert not reader.is_alive(), "the open waited for ever"
    assert len(outcome) == 1 and isinstance(outcome[0], OSError)
    assert outcome[0].errno == errno.EIO
    assert metric("kvol_lazy_reads_held_total", {"result": "failed"}) == failures + 1
    assert is_placeholder(second.path(repo.state(seq).files["big/model.bin"]))
    # Registered at last (a pod that uses it published again): the next open reads it.
    second.adopt(repo)
    assert (wc.root / "big/model.bin").read_bytes() == files["big/model.bin"]


def test_a_volume_holding_a_record_whose_parts_do_not_add_up_still_commits_and_reloads(
    repo: Repo,
    tmp_path: Path,
    caches: list[ContentCache],
    mounted: list[OverlayWorkingCopy],
) -> None:
    # Older versions could publish such a record; the log keeps it (that one file fails
    # when read) and so does the index of every snapshot made of the volume since.
    files, seq = seed_with_short_records(repo, tmp_path, ["short.bin"], mtime_shift=1)
    bad = repo.state(seq).files["short.bin"]
    first = ContentCache(tmp_path / "cache", lazy=True, prefetch=False)
    Lowers(tmp_path / "lowers", first).build(repo, seq)
    first.close()
    # As after the node plugin restarts: the snapshot's index is read from its file.
    cache = lazy_cache(tmp_path, caches)
    cache.adopt(repo)
    lowers = Lowers(tmp_path / "lowers", cache)
    wc = OverlayWorkingCopy.mount(repo, lowers, lowers.build(repo, seq), tmp_path / "pod")
    mounted.append(wc)
    read_fails_with_eio(wc.root / "short.bin")
    assert (wc.root / "d0/f0.bin").read_bytes() == files["d0/f0.bin"]

    (wc.root / "new.txt").write_bytes(b"new")
    assert wc.commit().seq == seq + 1
    assert repo.state().files["short.bin"] == bad
    # Another pod replaces that file; this one takes its new content in a reload.
    other, _ = mount_lazily(repo, seq + 1, tmp_path / "other", caches, mounted)
    (other.root / "short.bin").write_bytes(b"whole again")
    assert other.commit().seq == seq + 2
    assert wc.reload().files == 1
    assert (wc.root / "short.bin").read_bytes() == b"whole again"
