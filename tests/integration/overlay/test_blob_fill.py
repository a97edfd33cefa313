"""A snapshot's blob filled as the kernel reads it (kvol/blobfill.py) under a real EROFS
mount of its image, an overlay on top (root only): a read waits for the parts under it,
fetched and verified, and no more; a corrupt object fails the read with EIO and never
shows wrong bytes; the background fill completes the blob, and a new filler on the same
blob fetches nothing again."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kvol import image_lowers
from kvol.blobfill import BlobFiller
from kvol.model import FileRecord
from kvol.mounting import is_mountpoint, mount_overlay, unmount
from kvol.overlay import ContentCache, Lowers
from kvol.repo import Repo
from tests.integration.overlay.seeding import seed

pytestmark = pytest.mark.root

LARGE = 20 << 20  # three parts of the default 8 MiB chunk size
READER = """
import mmap, os, sys
path, offset, length, mapped = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
try:
    with open(path, "rb") as f:
        if mapped == "1":
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                sys.stdout.buffer.write(m[offset : offset + length])
        else:
            sys.stdout.buffer.write(os.pread(f.fileno(), length, offset))
except OSError as exc:
    sys.exit(exc.errno)
"""


METRICS = [
    ("kvol_lazy_fetches_total", {"result": "ok"}),
    ("kvol_lazy_fetched_bytes_total", {}),
    ("kvol_lazy_reads_held_total", {"result": "ok"}),
    ("kvol_lazy_read_wait_seconds_count", {}),
    ("kvol_lazy_pending_bytes", {}),
]


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def read(path: Path, offset: int = 0, length: int = 1 << 30, *, mapped: bool = True) -> bytes:
    """Read in another process (through a mapping unless told): a page fault that waits
    for the filler must not hold this process's GIL, which the filler's threads need.
    A failed read of a mapping is a SIGBUS: ask for a plain read to see its errno."""
    done = subprocess.run(
        [sys.executable, "-c", READER, str(path), str(offset), str(length), str(int(mapped))],
        capture_output=True,
        timeout=60,
    )
    if done.returncode:
        raise OSError(done.returncode, f"reading {path} failed")
    return done.stdout


@pytest.fixture
def filler(tmp_path: Path) -> Iterator[BlobFiller]:
    started = BlobFiller(tmp_path / "filler").start()
    yield started
    started.stop()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for target in reversed(made):
        unmount(target, lazy=True)


def publish(
    repo: Repo, seq: int, where: Path, filler: BlobFiller, mounts: list[Path]
) -> tuple[Path, Path]:
    """The image snapshot of ``seq`` (kvol/image_lowers.py), watched by ``filler`` and
    mounted; returns the mount and the blob."""
    where.mkdir()
    contents = image_lowers.write(repo.state(seq), where)
    filler.register(repo)
    image_lowers.attach(where, where / "tree", repo.volume_id, filler, lambda: contents)
    mounts.append(where / "tree")
    return where / "tree", where / image_lowers.BLOB


def test_a_read_waits_for_just_the_parts_under_it_and_the_background_fills_the_rest(
    repo: Repo, tmp_path: Path, filler: BlobFiller, mounts: list[Path]
) -> None:
    files = {f"small/f{i}": os.urandom(1000 + i) for i in range(20)}
    files["large.bin"] = os.urandom(LARGE)
    files["copy/of-f3"] = files["small/f3"]
    seq = seed(repo, tmp_path, files)
    before = {name: metric(name, labels) for name, labels in METRICS}
    tree, blob = publish(repo, seq, tmp_path / "snap", filler, mounts)
    total = filler.pending(blob)
    assert total == 20 + 3  # one part per distinct small file, three of the large one
    every_byte = sum(len(d) for r, d in files.items() if r != "copy/of-f3")
    assert metric("kvol_lazy_pending_bytes") - before["kvol_lazy_pending_bytes"] == every_byte
    assert sorted(os.listdir(tree / "small")) == sorted(
        p.split("/")[1] for p in files if "small/" in p
    )
    assert filler.pending(blob) == total  # names and sizes need no byte

    assert read(tree / "small/f3") == files["small/f3"]
    assert filler.pending(blob) == total - 1
    assert read(tree / "copy/of-f3") == files["small/f3"]  # the same content: filled already
    assert filler.pending(blob) == total - 1

    middle = 10 << 20  # in the large file's second part
    assert read(tree / "large.bin", middle, 100) == files["large.bin"][middle : middle + 100]
    assert filler.wait_idle(30)
    # That part, and the file's next one fetched ahead; never the one before.
    assert filler.pending(blob) == total - 3
    grew = {name: metric(name, labels) - before[name] for name, labels in METRICS}
    fetched = len(files["small/f3"]) + LARGE - (8 << 20)  # the large file's last two parts
    assert grew["kvol_lazy_fetches_total"] == 3
    assert grew["kvol_lazy_fetched_bytes_total"] == fetched
    assert grew["kvol_lazy_pending_bytes"] == every_byte - fetched
    # At least the two reads that found their parts missing were held, each timed.
    assert grew["kvol_lazy_reads_held_total"] >= 2
    assert grew["kvol_lazy_read_wait_seconds_count"] == grew["kvol_lazy_reads_held_total"]

    # An overlay on top (a pod's copy): reads and copy-up of a lower file fill it.
    upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    mount_overlay(tree, upper, work, merged)
    mounts.append(merged)
    with open(merged / "small/f7", "ab") as out:
        out.write(b"+")
    assert (upper / "small/f7").read_bytes() == files["small/f7"] + b"+"

    filler.prefetch(blob)
    assert filler.wait_idle(30)
    assert filler.pending(blob) == 0 and filler.failures == 0
    for rel, data in files.items():
        if rel != "small/f7":
            assert (merged / rel).read_bytes() == data, rel


def test_a_corrupt_object_fails_the_read_with_eio_until_the_store_is_repaired(
    repo: Repo, tmp_path: Path, filler: BlobFiller, mounts: list[Path]
) -> None:
    files = {"good": os.urandom(5000), "large.bin": os.urandom(LARGE)}
    seq = seed(repo, tmp_path, files)
    record = repo.state(seq).files["large.bin"]
    (stored,) = (tmp_path / "store").rglob(record.parts[0].obj)
    good = stored.read_bytes()
    stored.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    tree, _ = publish(repo, seq, tmp_path / "snap", filler, mounts)

    for attempt in (1, 2):  # the bad part is never recorded as filled: tried again, again
        with pytest.raises(OSError) as exc:
            read(tree / "large.bin", 0, 10, mapped=False)
        assert exc.value.errno == errno.EIO
        assert filler.failures >= attempt
    assert read(tree / "good") == files["good"]  # others unaffected

    stored.write_bytes(good)
    assert read(tree / "large.bin", 0, 10) == files["large.bin"][:10]


def test_a_new_filler_on_a_filled_blob_fetches_nothing_again(
    repo: Repo, tmp_path: Path, mounts: list[Path]
) -> None:
    files = {f"f{i}": os.urandom(3000 + i) for i in range(10)}
    seq = seed(repo, tmp_path, files)
    first = BlobFiller(tmp_path / "filler").start()
    try:
        tree, blob = publish(repo, seq, tmp_path / "snap", first, mounts)
        assert read(tree / "f1") == files["f1"]
        first.prefetch(blob)
        assert first.wait_idle(30) and first.pending(blob) == 0
    finally:
        first.stop()
    second = BlobFiller(tmp_path / "filler").start()
    try:
        second.register(repo)
        contents = image_lowers.contents_of(tmp_path / "snap", repo.state(seq).files)
        assert second.add(blob, repo.volume_id, contents) == 0
        for rel, data in files.items():
            assert read(tree / rel) == data
    finally:
        second.stop()


FIRST_FILLER = """
import sys, time
from pathlib import Path
from kvol import image_lowers
from kvol import image_lowers
from kvol.blobfill import BlobFiller
from kvol.model import FileRecord
from kvol.catalog import Catalog
from kvol.store import FilesystemStore
state, store, snapshot = (Path(a) for a in sys.argv[1:4])
repo = Catalog(FilesystemStore(store)).repo("vol")
filler = BlobFiller(state).start()
filler.register(repo)
files = repo.state().files
image_lowers.attach(
    snapshot, snapshot / "tree", repo.volume_id, filler,
    lambda: image_lowers.contents_of(snapshot, files),
)
print("ready", flush=True)
time.sleep(3600)
"""


def test_reads_while_the_filler_restarts_wait_for_the_next_one_and_never_see_holes(
    repo: Repo, tmp_path: Path, mounts: list[Path]
) -> None:
    files = {f"f{i}": os.urandom(7000 + i) for i in range(5)}
    seq = seed(repo, tmp_path, files)
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    contents = image_lowers.write(repo.state(seq), snapshot)
    target, blob = snapshot / "tree", snapshot / image_lowers.BLOB
    args = [tmp_path / "filler", tmp_path / "store", snapshot]
    first = subprocess.Popen(
        [sys.executable, "-c", FIRST_FILLER, *map(str, args)], stdout=subprocess.PIPE
    )
    mounts.append(target)
    assert first.stdout is not None and first.stdout.readline() == b"ready\n"
    assert read(target / "f0") == files["f0"]
    first.kill()  # its holder keeps the group, and the marks, alive
    first.wait()

    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(target / "f1"), "0", "100000", "0"],
        stdout=subprocess.PIPE,
    )
    with pytest.raises(subprocess.TimeoutExpired):
        reader.wait(0.5)  # no filler: the read waits, it does not see the blob's holes

    second = BlobFiller(tmp_path / "filler").start()
    try:
        second.add(blob, repo.volume_id, contents)
        with pytest.raises(subprocess.TimeoutExpired):
            reader.wait(0.5)  # its blob is known again, its volume's store not yet
        second.register(repo)
        out, _ = reader.communicate(timeout=30)
        assert out == files["f1"]
        second.settle()
        for rel, data in files.items():
            assert read(target / rel) == data
    finally:
        unmount(target, lazy=True)
        second.stop()


def test_many_readers_at_once_get_their_bytes_or_eio_and_none_waits_forever(
    repo: Repo, tmp_path: Path, filler: BlobFiller, mounts: list[Path]
) -> None:
    """Reads of the same parts race each other and the fetches, a failing one among
    them (each failure answered, and the next read fetching again), in several rounds."""
    files = {f"f{i}": os.urandom(9000 + i) for i in range(8)}
    files["large.bin"] = os.urandom(LARGE)
    files["bad.bin"] = os.urandom(LARGE)
    seq = seed(repo, tmp_path, files)
    bad = repo.state(seq).files["bad.bin"]
    (stored,) = (tmp_path / "store").rglob(bad.parts[1].obj)
    stored.write_bytes(b"tampered")
    tree, _ = publish(repo, seq, tmp_path / "snap", filler, mounts)
    rounds = []
    for _ in range(3):
        readers = []
        for rel, offset in (
            [(f"f{i}", 0) for i in range(8)]
            + [("large.bin", o << 20) for o in (0, 9, 17, 1, 10)]
            + [("bad.bin", o << 20) for o in (0, 9, 9)]
        ):
            args = [str(tree / rel), str(offset), "4096", "0"]
            readers.append(
                (
                    rel,
                    offset,
                    subprocess.Popen([sys.executable, "-c", READER, *args], stdout=subprocess.PIPE),
                )
            )
        for rel, offset, proc in readers:
            out, _ = proc.communicate(timeout=60)
            rounds.append((rel, offset, proc.returncode))
            if rel == "bad.bin" and offset >= 8 << 20:
                assert proc.returncode == errno.EIO, (rel, offset)
            else:
                assert proc.returncode == 0, (rel, offset)
                assert out == files[rel][offset : offset + 4096], (rel, offset)
    assert len(rounds) == 3 * 16


def test_a_read_right_after_a_failed_fetch_settles_gets_a_fetch_of_its_own(
    repo: Repo, tmp_path: Path, filler: BlobFiller, mounts: list[Path]
) -> None:
    """The window between a fetch settling (its reads answered) and its worker moving on
    is pinned here: a read arriving in it must queue a fetch, not wait on the old one."""
    files = {"large.bin": os.urandom(LARGE)}
    seq = seed(repo, tmp_path, files)
    record = repo.state(seq).files["large.bin"]
    (stored,) = (tmp_path / "store").rglob(record.parts[0].obj)
    stored.write_bytes(b"tampered")
    _, blob = publish(repo, seq, tmp_path / "snap", filler, mounts)
    (state,) = filler._blobs.values()
    part = state.parts[0]
    with filler._lock:
        part.running = True  # a fetch of it in progress...
    filler._settle(state, part, ok=False)  # ...fails: its reads are answered
    before = filler.failures
    event = os.open(blob, os.O_RDONLY)  # stands for the next read's event descriptor
    filler._on_event(event, 0, (part.start, 4096))
    deadline = time.monotonic() + 10
    while filler.failures == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert filler.failures > before  # fetched again (and failed again: still tampered)


def test_an_empty_file_placed_where_the_next_content_starts_hides_nothing(
    repo: Repo, tmp_path: Path, filler: BlobFiller, mounts: list[Path]
) -> None:
    # An empty file takes no room in the blob: its offset is where the next content
    # starts. Both sit at that offset, and the content must still be filled there.
    files = {"pkg/__init__.py": b"", "pkg/mod.py": b"print('hello')\n", "pkg/z/__init__.py": b""}
    files["pkg/z/data.bin"] = os.urandom(5000)
    seq = seed(repo, tmp_path, files)
    tree, blob = publish(repo, seq, tmp_path / "snap", filler, mounts)
    assert filler.pending(blob) == 2
    for rel, data in files.items():
        assert read(tree / rel, mapped=False) == data
    assert filler.pending(blob) == 0


def test_a_record_whose_parts_do_not_add_up_fails_its_reads_and_spoils_no_neighbour(
    repo: Repo, tmp_path: Path, filler: BlobFiller, mounts: list[Path]
) -> None:
    # The log may hold such records (older versions wrote some): each such file fails
    # when read, while the files beside it in the blob read whole.
    files = {"a": os.urandom(6000), "b": os.urandom(6000), "c": os.urandom(6000)}
    seq = seed(repo, tmp_path, files)
    state = repo.state(seq)
    a = state.files["a"]
    # The content of "a" as a file of another size: parts shorter than the size (a
    # hole after them) and longer (they would run into the next extent).
    state.files["a-short"] = FileRecord(a.size * 2, a.mtime_ns, a.mode, a.hash, a.parts)
    state.files["a-long"] = FileRecord(a.size // 2, a.mtime_ns, a.mode, a.hash, a.parts)
    where = tmp_path / "snap"
    where.mkdir()
    contents = image_lowers.write(state, where)
    filler.register(repo)
    image_lowers.attach(where, where / "tree", repo.volume_id, filler, lambda: contents)
    mounts.append(where / "tree")
    tree = where / "tree"
    for bad, offset in (("a-short", 0), ("a-short", 2 * 4096), ("a-long", 0)):
        with pytest.raises(OSError) as failed:
            read(tree / bad, offset, mapped=False)
        assert failed.value.errno == errno.EIO
    for rel, data in files.items():
        assert read(tree / rel) == data
    filler.prefetch(where / image_lowers.BLOB)
    assert filler.wait_idle(30)
    assert filler.pending(where / image_lowers.BLOB) == 2  # never filled: they stay marked
    for bad in ("a-short", "a-long"):
        with pytest.raises(OSError):
            read(tree / bad, mapped=False)


def test_an_image_snapshot_that_does_not_match_its_index_is_dropped_and_made_again(
    repo: Repo, tmp_path: Path, mounts: list[Path]
) -> None:
    # As an image snapshot laid out by an older version is found after an upgrade: not
    # used (it could serve one file's bytes as another's), and made again when needed.
    files = {"pkg/__init__.py": b"", "pkg/mod.py": b"print(1)\n"}
    seq = seed(repo, tmp_path, files)
    cache = ContentCache(tmp_path / "cache", prefetch=False)
    lowers = Lowers(tmp_path / "lowers", cache, images=BlobFiller(tmp_path / "fill").start())
    lower = lowers.build(repo, seq)
    lowers.close()
    image = lower.path / image_lowers.IMAGE
    raw = bytearray(image.read_bytes())
    raw[1024 + 48 : 1024 + 64] = bytes(16)  # the layout's digest, as older images had
    image.write_bytes(bytes(raw))

    lowers = Lowers(tmp_path / "lowers", cache, images=BlobFiller(tmp_path / "fill").start())
    try:
        assert lowers.get(repo.volume_id, seq) is None
        assert not is_mountpoint(lower.tree)
        again = lowers.build(repo, seq)
        mounts.append(again.tree)
        lowers.adopt(repo)
        for rel, data in files.items():
            assert read(again.tree / rel, mapped=False) == data
    finally:
        lowers.close()
