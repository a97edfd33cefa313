"""Count, and crash at, every store call and filesystem mutation of this process.

:func:`install` wraps the public methods of every store class, the ``os`` functions that
change a file system, ``open`` in a writing mode, and the mount system calls. Each call is
an *event*, numbered per thread: with one worker per pool (see :func:`one_worker_pools`)
the events of each thread come in the same order in every run of the same operation, so
``(thread, index)`` names one crash point reproducibly. With a kill point set, the process
sends itself SIGKILL right before (or right after) that event: no ``finally``, no flush, no
atexit, as a power cut or an OOM kill would.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import ctypes
import functools
import inspect
import io
import os
import re
import signal
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Originals, taken before anything is wrapped: the recorder itself must never count.
_write = os.write
_fstat = os.fstat
_kill = os.kill

#: ``os.open`` flags that make an open a mutation.
_WRITING_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

#: ``os`` functions that change a file system (or make it durable).
_OS_MUTATIONS = (
    "rename",
    "replace",
    "unlink",
    "remove",
    "rmdir",
    "mkdir",
    "link",
    "symlink",
    "truncate",
    "ftruncate",
    "fsync",
    "fdatasync",
    "sync",
    "utime",
    "chmod",
    "fchmod",
    "lchmod",
    "chown",
    "fchown",
    "lchown",
    "copy_file_range",
    "sendfile",
    "posix_fallocate",
    "mkfifo",
    "mknod",
    "setxattr",
    "removexattr",
)
_OS_WRITES = ("write", "pwrite", "writev", "pwritev")

#: Store methods that are not calls to the store.
_NOT_STORE_CALLS = frozenset({"close", "exists"})

_HEX = re.compile(r"[0-9a-f]{8,}")


@dataclass(frozen=True)
class KillAt:
    """Crash at the ``index``-th event (1-based) of thread ``thread``."""

    thread: str
    index: int
    after: bool = False


@dataclass(frozen=True)
class Event:
    thread: str
    index: int
    what: str


class Recorder:
    def __init__(self, kill: KillAt | None, report_fd: int, strip: str) -> None:
        self.kill = kill
        self.report_fd = report_fd
        #: Removed from descriptions (the point's own directory), so they compare across runs.
        self.strip = strip
        self.active = False
        self.events: list[Event] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def describe(self, text: str) -> str:
        return _HEX.sub("#", text.replace(self.strip, "<dir>")).strip()

    def begin(self, what: Callable[[], str]) -> Event | None:
        if not self.active:
            return None
        thread = threading.current_thread().name
        with self._lock:
            index = self._counts.get(thread, 0) + 1
            self._counts[thread] = index
            event = Event(thread, index, self.describe(what()))
            self.events.append(event)
        kill = self.kill
        if kill is not None and not kill.after and (thread, index) == (kill.thread, kill.index):
            self._die(event, "before")
        return event

    def end(self, event: Event | None) -> None:
        kill = self.kill
        if (
            event is not None
            and kill is not None
            and kill.after
            and (event.thread, event.index) == (kill.thread, kill.index)
        ):
            self._die(event, "after")

    def _die(self, event: Event, when: str) -> None:
        line = f"{when}\t{event.thread}\t{event.index}\t{event.what}\n".encode()
        _write(self.report_fd, line)
        _kill(os.getpid(), signal.SIGKILL)


_recorder: Recorder | None = None


def _counted(what: Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        rec = _recorder
        if rec is None or not rec.active:
            return fn(*args, **kwargs)
        event = rec.begin(lambda: what(*args, **kwargs))
        try:
            return fn(*args, **kwargs)
        finally:
            rec.end(event)

    return wrapper


def _show(args: tuple[Any, ...]) -> str:
    shown = [os.fspath(a) if isinstance(a, str | os.PathLike) else type(a).__name__ for a in args]
    return " ".join(str(a) for a in shown[:3])


def _os_event(name: str) -> Callable[..., str]:
    def what(*args: Any, **kwargs: Any) -> str:
        return f"os.{name} {_show(args)}"

    return what


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(_fstat(fd).st_mode)
    except OSError:
        return False


def _wrap_os_open(fn: Callable[..., int]) -> Callable[..., int]:
    @functools.wraps(fn)
    def wrapper(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        rec = _recorder
        if rec is None or not rec.active or not flags & _WRITING_FLAGS:
            return fn(path, flags, *args, **kwargs)
        event = rec.begin(lambda: f"os.open {os.fspath(path)} flags={flags & _WRITING_FLAGS:#o}")
        try:
            return fn(path, flags, *args, **kwargs)
        finally:
            rec.end(event)

    return wrapper


def _wrap_os_write(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(fd: int, *args: Any, **kwargs: Any) -> Any:
        rec = _recorder
        # Writes to pipes and sockets (logs, the harness) change no file system.
        if rec is None or not rec.active or not _is_regular(fd):
            return fn(fd, *args, **kwargs)
        event = rec.begin(lambda: f"os.{name} fd")
        try:
            return fn(fd, *args, **kwargs)
        finally:
            rec.end(event)

    return wrapper


class _CountedFile:
    """A file opened for writing by ``open``: every write and the close (which flushes)
    are events."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._name = name

    def write(self, data: Any) -> Any:
        return _counted(lambda *_: f"file.write {self._name}", self._inner.write)(data)

    def writelines(self, lines: Any) -> Any:
        return _counted(lambda *_: f"file.writelines {self._name}", self._inner.writelines)(lines)

    def flush(self) -> Any:
        return _counted(lambda *_: f"file.flush {self._name}", self._inner.flush)()

    def close(self) -> Any:
        if self._inner.closed:
            return None
        return _counted(lambda *_: f"file.close {self._name}", self._inner.close)()

    def __enter__(self) -> _CountedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Any:
        return iter(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _wrap_builtin_open(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        rec = _recorder
        writing = any(c in mode for c in "wax+")
        if rec is None or not rec.active or not writing or isinstance(file, int):
            return fn(file, mode, *args, **kwargs)
        name = os.fspath(file)
        event = rec.begin(lambda: f"open {name} {mode}")
        try:
            inner = fn(file, mode, *args, **kwargs)
        finally:
            rec.end(event)
        return _CountedFile(inner, str(name))

    return wrapper


class _Libc:
    """The C library as kvol's mount helpers use it, with mount and umount2 counted."""

    def __init__(self, inner: ctypes.CDLL) -> None:
        self._inner = inner
        self.mount = _counted(
            lambda source, target, *_: f"mount {os.fsdecode(target)}", inner.mount
        )
        self.umount2 = _counted(lambda target, *_: f"umount {os.fsdecode(target)}", inner.umount2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _store_classes() -> list[type]:
    from kvol.store.base import Store
    from kvol.store.fs import FilesystemStore

    found: list[type] = [Store, FilesystemStore]
    try:
        from kvol.store.s3 import S3Store

        found.append(S3Store)
    except ImportError:
        pass
    return found


def _store_event(name: str) -> Callable[..., str]:
    def what(self: Any, *args: Any, **kwargs: Any) -> str:
        key = args[0] if args and isinstance(args[0], str) else ""
        return f"store.{name} {key}"

    return what


def _wrap_list(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        rec = _recorder
        if rec is None or not rec.active:
            yield from fn(self, *args, **kwargs)
            return
        prefix = args[0] if args else kwargs.get("prefix", "")
        event = rec.begin(lambda: f"store.list {prefix}")
        try:
            yield from fn(self, *args, **kwargs)
        finally:
            rec.end(event)

    return wrapper


def _wrap_stores() -> None:
    for cls in _store_classes():
        for name, value in list(vars(cls).items()):
            if name.startswith("_") or name in _NOT_STORE_CALLS or not inspect.isfunction(value):
                continue
            if inspect.isgeneratorfunction(value):
                setattr(cls, name, _wrap_list(value))
            else:
                setattr(cls, name, _counted(_store_event(name), value))


class _OneWorkerPool(concurrent.futures.ThreadPoolExecutor):
    def __init__(self, max_workers: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(1, *args, **kwargs)


def one_worker_pools() -> None:
    """Every thread pool of kvol gets one worker, so each pool's tasks (and their events)
    run in submission order: the per-thread numbering of events is the same in every run."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("kvol") or module is None:
            continue
        if getattr(module, "ThreadPoolExecutor", None) is concurrent.futures.ThreadPoolExecutor:
            module.ThreadPoolExecutor = _OneWorkerPool  # type: ignore[attr-defined]


def fills_on_demand_only() -> None:
    """Only the filler thread kept for demand fetches a file or a blob's part: the others
    would take a read's part whenever they woke first, so its events would land in one
    thread or another from run to run. The scenarios turn background fetching off, so
    nothing is left for the others to do."""
    from kvol.blobfill import BlobFiller
    from kvol.lazy import LazyFiller

    for cls in (BlobFiller, LazyFiller):
        original = cls._work

        def work(self: Any, demand_only: bool, _original: Any = original) -> None:
            if demand_only:
                _original(self, demand_only)

        cls._work = work  # type: ignore[method-assign]


def install(kill: KillAt | None, report_fd: int, strip: str) -> Recorder:
    """Wrap everything (once per process) and return the recorder, inactive."""
    global _recorder
    rec = Recorder(kill, report_fd, strip)
    _recorder = rec
    one_worker_pools()
    fills_on_demand_only()
    _wrap_stores()
    for name in _OS_MUTATIONS:
        original = getattr(os, name, None)
        if original is None:
            continue
        wrapped = _counted(_os_event(name), original)
        _replace_os(name, original, wrapped)
    for name in _OS_WRITES:
        original = getattr(os, name, None)
        if original is not None:
            _replace_os(name, original, _wrap_os_write(name, original))
    _replace_os("open", os.open, _wrap_os_open(os.open))
    opener = _wrap_builtin_open(builtins.open)
    builtins.open = opener
    io.open = opener
    import kvol.mounting

    real = kvol.mounting._c()
    kvol.mounting._libc = _Libc(real)  # type: ignore[assignment]
    return rec


def _replace_os(name: str, original: Any, wrapped: Any) -> None:
    setattr(os, name, wrapped)
    # Code that asks "does os.X take dir_fd?" by identity must still get yes.
    for support in (os.supports_dir_fd, os.supports_fd, os.supports_follow_symlinks):
        if original in support:
            support.add(wrapped)


def events_as_json(rec: Recorder) -> list[list[Any]]:
    return [[e.thread, e.index, e.what] for e in rec.events]
