"""Uploading many files to a volume as one commit (``Volume.batch_upload``): the files are
gathered first, checked against the volume and its limits, then sent, and published
together when the batch ends (nothing if it raises)."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from kvol import paths, upload
from kvol.errors import AlreadyExists, InvalidArgument, NotFound
from kvol.model import FileRecord, MkdirOp, Op, PutOp, State
from kvol.progress import bar
from kvol.volume_entries import show

if TYPE_CHECKING:
    from kvol.volume import Volume

log = logging.getLogger(__name__)


class BatchUpload:
    """Files gathered by :meth:`Volume.batch_upload`, published as one commit on exit."""

    def __init__(self, volume: Volume, force: bool) -> None:
        self._volume = volume
        self._force = force
        self._items: dict[str, upload.Pending] = {}
        self._dirs: set[str] = set()
        self.seq: int | None = None
        #: Local paths :meth:`put_directory` left out: links and other non-regular files.
        self.skipped: list[str] = []
        #: Set to draw a progress bar (the CLI does); None decides by terminal.
        self.progress_description = "upload"

    def __enter__(self) -> BatchUpload:
        return self

    def __len__(self) -> int:
        """Files added so far."""
        return len(self._items)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.seq = self._publish()

    def put_file(
        self,
        local_file: str | os.PathLike[str] | BinaryIO,
        remote_path: str | PurePosixPath,
        mode: int | None = None,
    ) -> None:
        """Add a local file (a path or a binary file object) at ``remote_path``.

        ``mode`` sets its permission bits: by default a path keeps its own, a file object
        gets 0o644. A file object is read now; a path is read when the batch ends.
        A ``remote_path`` ending with ``/`` names a directory, not a file: ValueError.
        """
        remote_text = str(remote_path)
        if remote_text.endswith("/"):
            # A file named after the directory would surprise; Modal refuses it too.
            raise InvalidArgument(
                f"remote_path {remote_text!r} ends with '/': put_file needs the file's own "
                "path (put_directory uploads a directory)"
            )
        remote = paths.normalize(remote_text)
        if mode is not None and not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"mode must be permission bits (0 to 0o7777), not {mode:#o}")
        if isinstance(local_file, str | os.PathLike):
            local = Path(local_file)
            if not local.exists():
                raise NotFound(f"{local} does not exist")
            if not local.is_file():
                raise InvalidArgument(
                    f"{local} is not a regular file (put_directory uploads directories)"
                )
            self._add(upload.Pending(remote, local=local, mode=mode))
        else:
            if remote in self._items:
                raise InvalidArgument(f"{show(remote)} is already part of this batch")
            # Read now, a chunk at a time: content past the pack size goes to the store at
            # once (invisible until the batch publishes), so it is never whole in memory.
            self._add(
                upload.from_file_object(
                    self._volume._writable(),
                    remote,
                    local_file,
                    upload.DEFAULT_MODE if mode is None else mode,
                    time.time_ns(),
                )
            )

    def put_directory(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str | PurePosixPath,
        recursive: bool = True,
    ) -> None:
        """Add every file under a local directory below ``remote_path`` (subdirectories
        too unless ``recursive=False``; empty ones are kept as directories)."""
        root = Path(local_path)
        if not root.is_dir():
            raise NotFound(f"{root} is not a directory")
        remote_root = paths.normalize(str(remote_path), allow_root=True)
        # Links are never followed: one could lead anywhere (/etc/passwd), and a volume
        # holds no links. The tree's own root may be one: the caller named it.
        within = Path(os.path.realpath(root))
        for directory, dirnames, filenames in os.walk(root):
            rel_dir = Path(directory).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            base = "/".join(p for p in (remote_root, rel_dir) if p)
            for dirname in list(dirnames):
                if os.path.islink(os.path.join(directory, dirname)):
                    dirnames.remove(dirname)
                    self._skip(Path(directory, dirname), "a symbolic link")
            if base and not filenames and not dirnames:
                self._dirs.add(paths.normalize(base))
            for filename in sorted(filenames):
                local = Path(directory, filename)
                try:
                    mode = os.lstat(local).st_mode
                except FileNotFoundError:
                    continue  # removed meanwhile
                if stat.S_ISLNK(mode):
                    self._skip(local, "a symbolic link")
                elif not stat.S_ISREG(mode):
                    self._skip(local, "not a regular file")
                else:
                    remote = paths.normalize(f"{base}/{filename}")
                    self._add(upload.Pending(remote, local=local, within=within))
            if not recursive:
                dirnames.clear()

    def _skip(self, local: Path, why: str) -> None:
        self.skipped.append(str(local))
        log.warning("skipped %s: %s (not uploaded)", local, why)

    def _add(self, item: upload.Pending) -> None:
        if item.remote in self._items:
            raise InvalidArgument(f"{show(item.remote)} is already part of this batch")
        self._items[item.remote] = item

    def _publish(self) -> int | None:
        if not self._items and not self._dirs:
            return None
        repo = self._volume._writable()
        state = repo.state()
        self._check_targets(state)
        sizes = {
            i.remote: len(i.data) if i.data is not None else _size(i.local)
            for i in self._items.values()
        }
        ops: list[Op] = [MkdirOp(d) for d in sorted(self._dirs) if not state.is_dir(d)]
        # Check the limits with the sizes known now, so nothing is sent in vain; the
        # publish checks again with what was actually read.
        upload.check_limits(
            repo.meta.limits,
            state,
            ops + [PutOp(p, FileRecord(n, 0, 0, "0" * 64, ())) for p, n in sizes.items()],
        )
        with bar(sum(sizes.values()), self.progress_description) as advance:
            ops += upload.upload(repo, self._items.values(), state, advance)
        count = len(self._items)
        return upload.publish(repo, state, ops, f"upload of {count} file{'s' * (count != 1)}")

    def _check_targets(self, state: State) -> None:
        existing: list[str] = []
        for remote in self._items:
            if state.is_dir(remote):
                raise InvalidArgument(f"{show(remote)} is a directory in the volume")
            if remote in state.files:
                existing.append(remote)
            existing += [a for a in paths.ancestors(remote) if a in state.files]
        for d in self._dirs:
            if d in state.files:
                existing.append(d)
        if existing and not self._force:
            shown = ", ".join(show(p) for p in sorted(set(existing))[:5])
            more = f" and {len(set(existing)) - 5} more" if len(set(existing)) > 5 else ""
            raise AlreadyExists(
                f"{shown}{more} already exist{'s' if len(existing) == 1 else ''} in the volume; "
                "nothing was uploaded (use force=True, or put -f, to overwrite)"
            )


def _size(local: Path | None) -> int:
    try:
        return local.stat().st_size if local is not None else 0
    except OSError:
        return 0
