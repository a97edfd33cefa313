"""Cold start: a volume's tree on a node that has never seen it, lazy vs full download.

A volume of many small files and one large file is published as an overlay copy on an
empty content cache twice: as today (``Lowers.build`` downloads every file first) and lazily
(``ContentCache(lazy=True)``: placeholders, filled on first open; see kvol/lazy.py). Needs
root, overlayfs and fanotify pre-content events (kernel 6.14+) on the scratch filesystem.

* ``cold.ready_tree``: build + mount until the tree is visible. Baseline: the full-download
  build + mount. Target: under 1 s. Details: the background fill of the whole volume.
* ``cold.first_byte``: open + 1-byte read of a file not fetched yet (median over files).
  Baseline: today's path to that byte (full-download publish, then the read). Target:
  under 0.1 s. Details: the large file's first byte (a lazy open fills the whole file).
* ``cold.sequential_read``: read of the not-yet-fetched large file through the mount.
  Baseline: ``kvol volume get`` of it from the same store (own process); the in-process
  download (``ContentReader.write_to``) beside it. Target: at least 0.8x.
* ``cold.second_read``: read of the large file again through the mount, its pages
  dropped from the page cache first (``posix_fadvise``). Baseline: the same read of a
  plain local copy. Target: at least 0.9x. Details: both reads from the page cache.

``cold.*`` runs on a filesystem store (``fsync=false``) in the scratch directory,
``s3.cold.*`` on the run's MinIO. Full sizes: 20,000 files of 16 KiB and one 1 GiB file;
``--quick``: 200 files of 4 KiB and 32 MiB.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import baselines
from bench.cli_startup import kvol_command
from bench.harness import Context, Measurement, Result, Scenario, Target, timed
from bench.tree import rel_path, write_large_files, write_small_files
from kvol import image_lowers
from kvol.blobfill import BlobFiller
from kvol.catalog import Catalog
from kvol.mounting import mounts_under, overlay_supported, umount
from kvol.overlay import ContentCache, Lowers, OverlayWorkingCopy
from kvol.repo import Repo
from kvol.store import open_store
from kvol.workcopy import WorkingCopy

NAMESPACE = "bench"
LARGE = "big/large-000.bin"
FIRST_BYTE_FILES = 25
READ_CHUNK = 1 << 20
READY_TARGET = 1.0
FIRST_BYTE_TARGET = 0.1


def _sizes(ctx: Context) -> tuple[int, int, int]:
    return (200, 4096, 32 << 20) if ctx.quick else (20_000, 16 << 10, 1 << 30)


def _read_all(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            n += len(chunk)
    return n


def _evict(path: Path) -> None:
    """Drop one file's pages from the page cache (nothing else on the machine)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _first_byte(path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        f.read(1)
    return time.perf_counter() - started


@contextlib.contextmanager
def _published(
    repo: Repo, seq: int, where: Path, cache: ContentCache, images: BlobFiller | None = None
) -> Iterator[tuple[OverlayWorkingCopy, float]]:
    """A copy published on an empty cache; how long until its tree was visible."""
    lowers = Lowers(where / "lowers", cache, images=images)
    wc: OverlayWorkingCopy | None = None

    def publish() -> None:
        nonlocal wc
        wc = OverlayWorkingCopy.mount(repo, lowers, lowers.build(repo, seq), where / "pod")

    try:
        ready = timed(publish)
        assert wc is not None
        os.listdir(wc.root)
        yield wc, ready
    finally:
        if wc is not None:
            wc.close(final_commit=False)
        for target in mounts_under(where):
            with contextlib.suppress(OSError):
                umount(target)
        lowers.close()


@dataclass
class _ImagePath:
    """The same cold start through an EROFS image of the state whose data is a sparse
    blob filled as it is read (kvol/erofs.py, kvol/blobfill.py)."""

    ready: float
    first_bytes: list[float]
    large_first: float
    sequential: float
    second_partial: float  # read again while the blob is not whole yet (events per read)
    background_all: float
    second: float  # read again once the blob is whole (its mark gone)


def _image_ready(repo: Repo, seq: int, where: Path) -> float:
    """One more cold publish of an image snapshot, for its ready time alone."""
    filler = BlobFiller(where / "blobs").start()
    try:
        with _published(repo, seq, where, ContentCache(where / "cache"), images=filler) as (
            _,
            ready_s,
        ):
            return ready_s
    finally:
        filler.stop()


def _image_path(repo: Repo, seq: int, where: Path, picks: list[str]) -> _ImagePath:
    """The publish a node makes with ``--lazy-fetch-as image``, then the same reads."""
    filler = BlobFiller(where / "blobs").start()
    cache = ContentCache(where / "cache", prefetch=False)
    with _published(repo, seq, where, cache, images=filler) as (wc, ready_s):
        assert wc.lower is not None
        blob = wc.lower.path / image_lowers.BLOB
        first_bytes = [_first_byte(wc.root / p) for p in picks]
        big = wc.root / LARGE
        large_first = _first_byte(big)
        sequential = timed(lambda: _read_all(big))

        def again() -> float:
            def read() -> int:
                _evict(big)
                _evict(blob)
                return _read_all(big)

            return statistics.median(timed(read) for _ in range(3))

        second_partial = again()
        started = time.perf_counter()
        filler.prefetch(blob)
        filler.wait_idle()
        background_all = ready_s + time.perf_counter() - started
        assert filler.pending(blob) == 0
        return _ImagePath(
            ready_s,
            first_bytes,
            large_first,
            sequential,
            second_partial,
            background_all,
            again(),
        )


def run_on(ctx: Context, store_url: str, prefix: str) -> list[Result]:
    if not overlay_supported():
        raise RuntimeError("cold-start scenarios need root and overlayfs")
    files, size, large = _sizes(ctx)
    store = open_store(store_url)
    catalog = Catalog.for_namespace(store, NAMESPACE)
    name = f"cold-{os.getpid()}-{time.monotonic_ns()}"
    catalog.create(name)
    repo = catalog.repo(name)
    try:
        return _measure(ctx, store_url, prefix, repo, name, files, size, large)
    finally:
        with contextlib.suppress(Exception):
            repo.destroy()
        store.close()


def _measure(
    ctx: Context,
    store_url: str,
    prefix: str,
    repo: Repo,
    name: str,
    files: int,
    size: int,
    large: int,
) -> list[Result]:
    wd = ctx.workdir
    tree = wd / "seed"
    ctx.log(f"committing {files} files of {size} B and one of {large >> 20} MiB")
    wc = WorkingCopy.create(repo, tree, wd / "seed-meta")
    write_small_files(tree, files, size)
    write_large_files(tree / "big", large, 1)
    seq = wc.commit().seq
    wc.close(final_commit=False)
    assert seq is not None
    shutil.rmtree(tree)
    baselines.drop_dirty_pages()
    picks = [rel_path(i) for i in range(0, files, max(1, files // FIRST_BYTE_FILES))]
    params = {"files": files, "file_size": size, "large_file_bytes": large}

    # Today: every byte downloaded before the tree is there.
    with _published(repo, seq, wd / "full", ContentCache(wd / "full" / "cache")) as (
        full_wc,
        full_ready,
    ):
        local_first = statistics.median(_first_byte(full_wc.root / p) for p in picks)
    baselines.drop_dirty_pages()

    # Lazy, nothing prefetched: every first access is an on-demand fetch.
    lazy_cache = ContentCache(wd / "lazy" / "cache", lazy=True, prefetch=False)
    with _published(repo, seq, wd / "lazy", lazy_cache) as (lazy_wc, lazy_ready):
        first_bytes = [_first_byte(lazy_wc.root / p) for p in picks]

        get_dest = wd / "got.bin"
        kvol = [*kvol_command(), "--store", store_url, "volume", "get"]
        get_s = baselines.run([*kvol, "-n", NAMESPACE, name, LARGE, str(get_dest)])
        baselines.drop_dirty_pages()
        reader = repo.reader()
        record = repo.state(seq).files[LARGE]
        inproc_dest = wd / "inproc.bin"

        def download() -> None:
            fd = os.open(inproc_dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                reader.write_to(record, fd)
            finally:
                os.close(fd)

        inproc_s = timed(download)
        inproc_dest.unlink()
        baselines.drop_dirty_pages()

        big = lazy_wc.root / LARGE
        started = time.perf_counter()
        with open(big, "rb", buffering=0) as f:
            large_first = time.perf_counter() - started
            got = 0
            while chunk := f.read(READ_CHUNK):
                got += len(chunk)
        lazy_seq = time.perf_counter() - started
        assert got == large
        baselines.drop_dirty_pages()

        def cold(path: Path, evicted: Path) -> Callable[[], int]:
            def read() -> int:
                _evict(evicted)
                return _read_all(path)

            return read

        entry = lazy_cache.path(record)
        second_cold = statistics.median(timed(cold(big, entry)) for _ in range(3))
        local_cold = statistics.median(timed(cold(get_dest, get_dest)) for _ in range(3))
        second_warm = statistics.median(timed(lambda: _read_all(big)) for _ in range(3))
        local_warm = statistics.median(timed(lambda: _read_all(get_dest)) for _ in range(3))
        get_dest.unlink()

    # Lazy with background prefetch: how long until the whole volume is here anyway.
    prefetching = ContentCache(wd / "bg" / "cache", lazy=True)
    with _published(repo, seq, wd / "bg", prefetching) as (_, bg_ready):
        assert prefetching.lazy is not None
        started = time.perf_counter()
        prefetching.lazy.wait_idle()
        background_all = bg_ready + time.perf_counter() - started
        left = prefetching.lazy.pending()

    baselines.drop_dirty_pages()
    # Ready times are a fraction of a second on a shared machine: the median of three
    # cold publishes, each in a directory of its own (nothing shared between them).
    image_readies = [_image_ready(repo, seq, wd / f"image-ready-{i}") for i in range(2)]
    image = _image_path(repo, seq, wd / "image", picks)
    image_readies.append(image.ready)

    base = _Baselines(full_ready, local_first, get_s, inproc_s, local_cold, large, len(picks))
    results = _four(
        prefix,
        base,
        params,
        _Path(lazy_ready, first_bytes, large_first, lazy_seq, second_cold),
        ready={
            "background_fill_of_everything_seconds": background_all,
            "background_ready_seconds": bg_ready,
            "placeholders_left_after_background_fill": left,
        },
        second={
            "page_cache_second_read_seconds": second_warm,
            "page_cache_local_read_seconds": local_warm,
        },
    )
    results += _four(
        f"{prefix}image.",
        base,
        params,
        _Path(
            statistics.median(image_readies),
            image.first_bytes,
            image.large_first,
            image.sequential,
            image.second,
        ),
        ready={
            "background_fill_of_everything_seconds": image.background_all,
            "cold_publishes_seconds": image_readies,
        },
        second={"before_the_blob_is_whole_seconds": image.second_partial},
    )
    for r in results:
        r.store = store_url
    return results


@dataclass
class _Baselines:
    full_ready: float
    local_first: float
    get: float
    in_process: float
    local_cold: float
    large: int
    picks: int


@dataclass
class _Path:
    """What one way of lazy publishing measured."""

    ready: float
    first_bytes: list[float]
    large_first: float
    sequential: float
    second: float


def _four(
    prefix: str,
    base: _Baselines,
    params: dict[str, int],
    path: _Path,
    *,
    ready: dict[str, Any],
    second: dict[str, Any],
) -> list[Result]:
    def mbps(seconds: float) -> float:
        return base.large / seconds / (1 << 20)

    return [
        Result(
            f"{prefix}ready_tree",
            path.ready,
            Measurement("full-download build + mount (today)", base.full_ready),
            target=Target(
                "seconds_at_most", READY_TARGET, f"tree visible in under {READY_TARGET}s"
            ),
            params=params,
            details=ready,
        ),
        Result(
            f"{prefix}first_byte",
            statistics.median(path.first_bytes),
            Measurement(
                "full-download publish, then the byte (today)", base.full_ready + base.local_first
            ),
            target=Target(
                "seconds_at_most",
                FIRST_BYTE_TARGET,
                f"first byte of a file not fetched yet in under {FIRST_BYTE_TARGET}s",
            ),
            params={**params, "files_read": base.picks},
            details={
                "first_byte_max_seconds": max(path.first_bytes),
                "local_first_byte_median_seconds": base.local_first,
                "large_file_first_byte_seconds": path.large_first,
            },
        ),
        Result(
            f"{prefix}sequential_read",
            path.sequential,
            Measurement("kvol volume get of the file (own process)", base.get),
            target=Target("speedup_at_least", 0.8, "at least 0.8x the throughput of get"),
            params=params,
            other_baselines=[
                Measurement("in-process download (ContentReader.write_to)", base.in_process)
            ],
            details={
                "lazy_read_mib_per_s": mbps(path.sequential),
                "get_mib_per_s": mbps(base.get),
                "in_process_mib_per_s": mbps(base.in_process),
            },
        ),
        Result(
            f"{prefix}second_read",
            path.second,
            Measurement("read of a local copy, its pages dropped too", base.local_cold),
            target=Target("speedup_at_least", 0.9, "at least 0.9x a local-disk read"),
            params=params,
            details={
                "second_read_mib_per_s": mbps(path.second),
                "local_read_mib_per_s": mbps(base.local_cold),
                **second,
            },
        ),
    ]


def on_filesystem(ctx: Context) -> list[Result]:
    return run_on(ctx, f"file://{ctx.workdir / 'store'}?fsync=false", "cold.")


def on_minio(ctx: Context) -> list[Result]:
    from bench.s3_minio import kvol_env, server

    kvol_env()
    url = server().url(server().create_bucket(), "kvol")
    return run_on(ctx, url, "s3.cold.")


SCENARIOS = [
    Scenario(
        "cold.start",
        on_filesystem,
        per_store=False,
        description="lazy cold start vs full download (filesystem store)",
    ),
    Scenario(
        "s3.cold.start",
        on_minio,
        per_store=False,
        description="lazy cold start vs full download (MinIO)",
    ),
]
