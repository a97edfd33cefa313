"""``kvol volume ...``: manage volumes and their files, and local working copies."""

from __future__ import annotations

import argparse
import contextlib
import logging
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvol import mounted, paths
from kvol.cli import output
from kvol.cli.output import emit_json, plural, say, size, warn, when
from kvol.errors import AlreadyExists, CorruptData, InvalidArgument, KvolError, NotFound
from kvol.grace import DEFAULT_GC_GRACE_SECONDS, REFRESH_AFTER_SECONDS, shortest_grace
from kvol.progress import bar

# The SDK, the catalog and fsck are imported by the commands that use them: a command on
# a working copy (commit, reload, status) needs none of them.
if TYPE_CHECKING:
    from kvol.catalog import Catalog
    from kvol.fsck import FsckReport
    from kvol.store import Store
    from kvol.volume import FileEntry, Volume

Handler = Callable[[argparse.Namespace], int]

EPILOG = """\
examples:
  kvol volume create data
  kvol volume put data ./results /results      # a directory, as one commit
  kvol volume ls data /results --long
  kvol volume get data /results/model.bin .
  kvol volume get data /notes.txt - | less     # to stdout
  kvol volume mount data ./work                # a local working copy
  kvol volume commit ./work -m "new results"
  kvol volume history data

The store is --store URL, else $KVOL_STORE, else a directory under ~/.local/share/kvol.
Volume paths start at the volume root: /a/b and a/b name the same file; '..' is refused.
"""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    # Which names a command uses: the CLI's own, or a Kubernetes namespace's (the
    # catalog scope its pods and the operator use, in the same store).
    scoped = argparse.ArgumentParser(add_help=False)
    scoped.add_argument_group("volume options").add_argument(
        "-n",
        "--namespace",
        metavar="NAMESPACE",
        default=argparse.SUPPRESS,
        help="the volumes of this Kubernetes namespace, as its pods name them "
        "(default: the CLI's own volumes)",
    )
    volume = commands.add_parser(
        "volume",
        help="manage volumes and their files",
        description="Create, list and delete volumes, move files in and out of them, and work "
        "on local copies that commit and reload like a pod's mount.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common, scoped],
    )
    sub = volume.add_subparsers(dest="action", metavar="COMMAND", required=True)

    def add(
        name: str, handler: Handler, help: str, epilog: str = "", *, by_name: bool = True
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=f"example:\n  {epilog}" if epilog else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            # Commands on a working copy's directory find its volume there, not by name.
            parents=[common, scoped] if by_name else [common],
        )
        parser.set_defaults(handler=handler)
        return parser

    p = add("create", cmd_create, "create a volume", "kvol volume create data --version 2")
    p.add_argument("name")
    p.add_argument("--version", type=int, choices=(1, 2), default=2, help="volume version")
    p.add_argument("--allow-existing", action="store_true", help="succeed if it exists already")
    p.add_argument("--limit-files", type=int, metavar="N", help="most files the volume may hold")
    p.add_argument("--limit-bytes", type=output.parse_size, metavar="SIZE", help="e.g. 100GiB")
    p.add_argument("--limit-files-per-directory", type=int, metavar="N")
    p.add_argument("--limit-file-size", type=output.parse_size, metavar="SIZE")
    _retention_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "retention",
        cmd_retention,
        "show or change which commits a volume keeps (pruned by gc)",
        "kvol volume retention data --keep-last 5 --keep-for 7d",
    )
    p.add_argument("name")
    _retention_options(p)
    p.add_argument("--keep-all", action="store_true", help="keep every commit (the default)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("list", cmd_list, "list volumes", "kvol volume list --json")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "info", cmd_info, "show a volume's size, head commit and dates", "kvol volume info data"
    )
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("ls", cmd_ls, "list files of a volume", "kvol volume ls data /results -l")
    p.add_argument("name")
    p.add_argument("path", nargs="?", default="/")
    p.add_argument("-l", "--long", action="store_true", help="show type, size and time")
    p.add_argument("-r", "--recursive", action="store_true", help="list everything below PATH")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "put",
        cmd_put,
        "upload a file or a directory (as one commit)",
        "kvol volume put data ./model.bin /models/   # '-' reads stdin",
    )
    p.add_argument("name")
    p.add_argument("local", help="local file or directory, or '-' for stdin")
    p.add_argument("remote", nargs="?", default="/", help="where in the volume (default: /)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing files")

    p = add(
        "get",
        cmd_get,
        "download a file or a directory",
        "kvol volume get data /logs - --tar | tar -x   # '-' writes to stdout",
    )
    p.add_argument("name")
    p.add_argument("remote")
    p.add_argument(
        "local",
        nargs="?",
        default=".",
        help="local path, or '-' for stdout (a directory's files one after the other)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing local files")
    p.add_argument("--tar", action="store_true", help="with '-': write a tar stream of the tree")

    p = add("rm", cmd_rm, "remove a file (a directory with -r)", "kvol volume rm data /tmp -r")
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("-r", "--recursive", action="store_true", help="remove a directory")

    p = add(
        "cp",
        cmd_cp,
        "copy files inside a volume (no data is uploaded)",
        "kvol volume cp data /a.txt /b.txt /backup/",
    )
    p.add_argument("name")
    p.add_argument("paths", nargs="+", metavar="PATH", help="sources, then the destination")
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories")

    p = add("rename", cmd_rename, "rename a volume", "kvol volume rename data data-old -y")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = add("delete", cmd_delete, "delete a volume and all its data", "kvol volume delete data -y")
    p.add_argument("name")
    p.add_argument("--allow-missing", action="store_true", help="succeed if it does not exist")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = add(
        "mount",
        cmd_mount,
        "make a local working copy of a volume in DIR",
        "kvol volume mount data ./work && cd work",
    )
    p.add_argument("name")
    p.add_argument("dir")
    p.add_argument("--read-only", action="store_true", help="refuse commits from this copy")

    p = add(
        "commit",
        cmd_commit,
        "publish the changes of a working copy",
        'kvol volume commit ./work -m "nightly results"',
        by_name=False,
    )
    p.add_argument("dir", nargs="?", default=".", help="the copy or a directory in it")
    p.add_argument("-m", "--message", help="commit message")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "watch",
        cmd_watch,
        "commit a working copy's changes every few seconds until stopped",
        "kvol volume watch ./work --interval 10",
        by_name=False,
    )
    p.epilog = (p.epilog or "") + WATCH_EPILOG
    p.add_argument("dir", nargs="?", default=".", help="the copy or a directory in it")
    p.add_argument(
        "--interval",
        type=duration,
        default=5.0,
        metavar="SECONDS",
        help="seconds between commits (default: 5; also 30s, 2m)",
    )

    p = add("reload", cmd_reload, "bring a working copy up to the newest commit", by_name=False)
    p.add_argument("dir", nargs="?", default=".", help="the copy or a directory in it")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("status", cmd_status, "show what a working copy has not committed yet", by_name=False)
    p.add_argument("dir", nargs="?", default=".", help="the copy or a directory in it")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("history", cmd_history, "list a volume's commits, newest first")
    p.add_argument("name")
    p.add_argument("--limit", type=int, metavar="N", help="show only the newest N")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "restore",
        cmd_restore,
        "make the volume's files what they were at commit SEQ (as a new commit)",
        "kvol volume restore data 12 -y",
    )
    p.add_argument("name")
    p.add_argument("seq", type=int)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = add(
        "gc",
        cmd_gc,
        "prune history outside the retention policy, delete content no commit refers to",
        "kvol volume gc data --dry-run",
    )
    p.epilog = (p.epilog or "") + GC_EPILOG.format(
        minimum=shortest_grace(), renew=REFRESH_AFTER_SECONDS
    )
    p.add_argument("name")
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GC_GRACE_SECONDS,
        metavar="SECONDS",
        help=f"keep unreferenced content younger than this, by the store's clock "
        f"(default: {DEFAULT_GC_GRACE_SECONDS:g}; at least {shortest_grace():g}, see below)",
    )
    p.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "fsck",
        cmd_fsck,
        "check every commit, checkpoint and content object of a volume",
        "kvol volume fsck data --repair --from ./work",
    )
    p.epilog = (p.epilog or "") + FSCK_EPILOG
    p.add_argument("name")
    p.add_argument(
        "--no-content",
        action="store_true",
        help="check that content objects exist with the right size, without hashing them",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="re-publish damaged content that a --from copy still holds (verified by hash)",
    )
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="DIR",
        help="a working copy or a node's content cache to repair from (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


FSCK_EPILOG = """

Reports what is damaged (missing, truncated or altered content objects, log entries and
checkpoints) and which commits and files it affects. Exit status: 0 when nothing is
damaged (or everything damaged was repaired), 8 when damage is found (or left after
--repair), 3 when the volume does not exist, 9 when the store fails.
"""

WATCH_EPILOG = """

Runs in the foreground, as a pod's mount does: changes are found as they happen (inotify,
with a full scan every 10 minutes as a safety net), committed every interval, and once
more when it stops (Ctrl-C or SIGTERM; a second Ctrl-C stops without that commit, and
the changes stay in the copy). Meanwhile 'kvol volume commit', 'reload' and 'status' in
the copy are answered by this process, so they cost what the changes cost rather than
a look at every file. One watcher per copy; it does not reload others' commits (run
'kvol volume reload', which it serves too).
"""

GC_EPILOG = """

Deletes content objects that no commit refers to and that are older than the grace,
ages taken by the store's clock (never this machine's), each looked at again right
before it is deleted; then removes leftovers of writes killed halfway (temporaries)
older than the grace. A dry run reports what it would delete and removes nothing.

The grace is at least {minimum:g} seconds: a commit renews content it reuses once that
content is {renew:g}s old and may take as long again to publish, so content a running
commit is about to publish is always younger than {minimum:g}s. Shorter values (and
values that are not finite numbers) are refused with exit code 2. gc refuses to run
(exit 8) on a log with a gap. On S3, run it while no commit of the volume runs: S3 has
no conditional delete (see docs/data-safety.md).

With a retention policy (kvol volume retention), gc first prunes the commits outside it:
retained history then begins at the oldest kept commit, and the pruned commits and the
content only they named are deleted by the first gc a grace period later.
"""

# -- helpers ----------------------------------------------------------------------------------


def store_of(args: argparse.Namespace) -> Store:
    store: Store | None = getattr(args, "_store", None)
    if store is None:
        from kvol.store import open_store

        store = open_store(getattr(args, "store", None))
        args._store = store
    return store


def namespace_of(args: argparse.Namespace) -> str | None:
    namespace: str | None = getattr(args, "namespace", None)
    return namespace


def catalog_of(args: argparse.Namespace) -> Catalog:
    from kvol.catalog import Catalog

    namespace = namespace_of(args)
    store = store_of(args)
    return Catalog(store) if namespace is None else Catalog.for_namespace(store, namespace)


def duration(text: str) -> float:
    """A duration option (12h, 30d), parsed by the retention module, which only the
    commands that prune history load."""
    from kvol.retention import parse_duration

    return parse_duration(text)


def _retention_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-last", type=int, metavar="N", help="keep the newest N commits (and prune the rest)"
    )
    p.add_argument(
        "--keep-for",
        type=duration,
        metavar="DURATION",
        help="keep commits newer than this (e.g. 12h, 30d); with --keep-last, a commit "
        "either keeps is kept",
    )


def volume_of(args: argparse.Namespace, name: str) -> Volume:
    from kvol.volume import Volume

    return Volume.from_name(name, store=store_of(args), namespace=namespace_of(args)).hydrate()


def mount_of(directory: str) -> mounted.Mount:
    mount = mounted.containing(directory)
    if mount is None:
        raise NotFound(
            f"{Path(directory).absolute()} is not inside a kvol working copy "
            "(make one with: kvol volume mount NAME DIR)"
        )
    return mount


def _entry_json(entry: FileEntry) -> dict[str, Any]:
    modified = None
    if entry.mtime > 0:
        from datetime import datetime

        modified = f"{datetime.fromtimestamp(entry.mtime).astimezone():%Y-%m-%d %H:%M %Z}"
    # kvol's keys (exact numbers), then the twins `modal volume ls --json` names: the
    # path as "filename" and the time as Modal writes it. "type" and "size" keep
    # kvol's values ("directory", a byte count), see docs/migrating-from-modal.md.
    return {**entry.to_dict(), "filename": entry.path, "created_modified": modified}


# -- volumes ----------------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    from kvol.model import Limits
    from kvol.volume import Volume

    for option, value in (
        ("--limit-files", args.limit_files),
        ("--limit-files-per-directory", args.limit_files_per_directory),
    ):
        if value is not None and value < 0:
            raise InvalidArgument(f"{option} must not be negative, not {value}")
    limits = Limits(
        max_files=args.limit_files,
        max_bytes=args.limit_bytes,
        max_files_per_directory=args.limit_files_per_directory,
        max_file_size=args.limit_file_size,
    )
    store = store_of(args)
    existed = False
    try:
        vol = Volume.create(
            args.name,
            version=args.version,
            limits=limits,
            store=store,
            namespace=namespace_of(args),
            keep_last=args.keep_last,
            keep_for=args.keep_for,
        )
    except AlreadyExists:
        if not args.allow_existing:
            raise
        # Only a volume of the version asked for will do (VersionMismatch otherwise).
        vol = Volume.create(
            args.name,
            version=args.version,
            allow_existing=True,
            limits=limits,
            store=store,
            namespace=namespace_of(args),
        )
        existed = True
    meta = vol.repo.meta
    if args.json:
        emit_json({"name": args.name, "id": meta.id, "version": meta.version, "existed": existed})
    elif existed:
        say(f"Volume {args.name!r} already exists (version {meta.version}, id {meta.id}).")
    else:
        say(f"Created volume {args.name!r} (version {meta.version}, id {meta.id}).")
        say(f"Upload files with: kvol volume put {args.name} LOCAL_PATH [REMOTE_PATH]")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    # A damaged volume is listed as such; it never keeps the others from being listed.
    items = catalog_of(args).scan()
    for item in items:
        if item.problem is not None:
            warn(
                f"volume {item.name!r} is damaged ({item.problem}); 'kvol volume delete "
                f"{item.name}' removes it"
            )
    if args.json:
        catalog = catalog_of(args)
        emit_json(
            [
                {
                    "name": item.name,
                    "id": item.volume_id,
                    "version": item.meta.version if item.meta else None,
                    "created": item.meta.created if item.meta else None,
                    # The keys of `modal volume list --json`, with its values.
                    "created_at": modal_time(item.meta.created) if item.meta else None,
                    "created_by": _owner(catalog, item.name),
                    **({"damaged": item.problem} if item.problem is not None else {}),
                }
                for item in items
            ]
        )
    elif not items:
        say("No volumes. Create one with: kvol volume create NAME")
    else:
        output.table(
            ["NAME", "VERSION", "CREATED", "ID"],
            [
                [item.name, str(item.meta.version), when(item.meta.created), item.meta.id]
                if item.meta is not None
                else [item.name, "damaged", "-", item.volume_id or "-"]
                for item in items
            ],
        )
    return 0


def _owner(catalog: Catalog, name: str) -> str | None:
    """Who created a volume, when its name records it (the operator marks its own)."""
    try:
        return catalog.entry(name).owner
    except KvolError:
        return None


def modal_time(timestamp: float) -> str:
    """A time as Modal's JSON output writes it: local, ISO, to the second."""
    from datetime import datetime

    return datetime.fromtimestamp(timestamp).astimezone().isoformat(sep=" ", timespec="seconds")


def cmd_info(args: argparse.Namespace) -> int:
    info = volume_of(args, args.name).info()
    if args.json:
        emit_json(info.to_dict())
        return 0
    output.table(
        ["FIELD", "VALUE"],
        [
            ["name", str(info.name)],
            ["id", info.id],
            ["version", str(info.version)],
            ["head commit", str(info.head)],
            ["files", f"{info.files:,}"],
            ["size", size(info.bytes)],
            ["created", when(info.created)],
            ["last commit", when(info.last_commit)],
        ],
    )
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    from kvol.volume import Volume

    store = store_of(args)
    volume_of(args, args.old)  # NotFound before asking
    output.confirm(f"Rename volume {args.old!r} to {args.new!r}?", args.yes)
    Volume.rename(args.old, args.new, store=store, namespace=namespace_of(args))
    say(f"Renamed volume {args.old!r} to {args.new!r}.")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from kvol.volume import Volume

    store = store_of(args)
    try:
        # Only the name must be readable: a volume with damaged metadata can go too.
        catalog_of(args).entry(args.name)
    except NotFound:
        if args.allow_missing:
            say(f"Volume {args.name!r} does not exist: nothing to delete.")
            return 0
        raise
    except CorruptData:
        pass  # an unreadable name can still be removed
    output.confirm(f"Delete volume {args.name!r} and all its data, irreversibly?", args.yes)
    Volume.delete(
        args.name, allow_missing=args.allow_missing, store=store, namespace=namespace_of(args)
    )
    say(f"Deleted volume {args.name!r}.")
    return 0


# -- files ------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    entries = volume_of(args, args.name).listdir(args.path, recursive=args.recursive)
    if args.json:
        emit_json([_entry_json(e) for e in entries])
    elif args.long or _is_terminal(sys.stdout):
        # A table for people; one path a line for pipes and scripts (as Modal does).
        output.table(
            ["TYPE", "SIZE", "MODIFIED", "PATH"],
            [[str(e.type), size(e.size), when(e.mtime), _shown(e)] for e in entries],
            right=(1,),
        )
    else:
        for e in entries:
            say(_shown(e))
    return 0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _shown(entry: FileEntry) -> str:
    from kvol.volume import FileEntryType

    return entry.path + ("/" if entry.type == FileEntryType.DIRECTORY else "")


def cmd_put(args: argparse.Namespace) -> int:
    vol = volume_of(args, args.name)
    remote: str = args.remote
    with contextlib.ExitStack() as stack, vol.batch_upload(force=args.force) as batch:
        if args.local == "-":
            target = paths.normalize(remote, allow_root=True)
            if not target or remote.endswith("/"):
                raise InvalidArgument("put - (stdin) needs a REMOTE file path, like /notes.txt")
            import shutil
            import tempfile

            # Spooled to disk, so a large stream is never held in memory.
            spool = stack.enter_context(tempfile.NamedTemporaryFile(prefix="kvol-stdin-"))
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            spool.flush()
            batch.put_file(spool.name, target, mode=0o644)
            count, described = 1, f"stdin to /{target}"
        else:
            local = Path(args.local)
            if local.is_dir():
                target = paths.normalize(_directory_target(args.local, remote), allow_root=True)
                batch.put_directory(local, target)
                count, described = len(batch), f"{local}/ to /{target}"
            elif local.exists():
                target = _file_target(vol, local.name, remote)
                batch.put_file(local, target)
                count, described = 1, f"{local} to /{target}"
            else:
                raise NotFound(f"{local} does not exist")
    if batch.seq is None:
        say(f"Nothing to upload from {described}.")
    else:
        say(
            f"Uploaded {plural(count, 'file')} from {described} in {args.name!r} "
            f"(commit {batch.seq})."
        )
    return 0


def _directory_target(local: str, remote: str) -> str:
    """Like Modal (and cp -r): a REMOTE ending with '/' (the default, '/') receives the
    directory under its own name; a LOCAL ending with '/' (or '.') puts its contents
    there instead, as rsync does."""
    if not remote.endswith("/"):
        return remote
    name = local.rstrip("/").rsplit("/", 1)[-1] if not local.endswith("/") else ""
    if name in ("", ".", ".."):
        return remote
    return remote + name


def _file_target(vol: Volume, name: str, remote: str) -> str:
    """Like cp: into REMOTE if it is the root, ends with '/' or is a directory."""
    from kvol.volume import FileEntryType

    target = paths.normalize(remote, allow_root=True)
    if not target or remote.endswith("/"):
        return f"{target}/{name}".lstrip("/")
    try:
        if vol.stat(target).type == FileEntryType.DIRECTORY:
            return f"{target}/{name}"
    except NotFound:
        pass
    return target


def cmd_get(args: argparse.Namespace) -> int:
    vol = volume_of(args, args.name)
    if args.local == "-":
        _get_to_stdout(vol, args.remote, as_tar=args.tar)
        return 0
    if args.tar:
        raise InvalidArgument("--tar writes to stdout: use '-' as LOCAL")
    files, total = vol.download(args.remote, args.local, force=args.force)
    print(f"Downloaded {plural(files, 'file')} ({size(total)}) to {args.local}.", file=sys.stderr)
    return 0


def _get_to_stdout(vol: Volume, remote: str, *, as_tar: bool) -> None:
    """A file's bytes; for a directory, every file under it one after the other, in path
    order (as Modal does), or with ``as_tar`` a tar stream of the tree. Everything comes
    from one commit, whatever is published meanwhile."""
    repo = vol.repo
    state = repo.state()
    rel = paths.normalize(remote, allow_root=True)
    if rel in state.files:
        files = [(rel.rsplit("/", 1)[-1], state.files[rel])]
        dirs: list[str] = []
    elif rel == "" or state.is_dir(rel):
        cut = len(rel) + 1 if rel else 0
        files = [(p[cut:], r) for p, r in sorted(state.iter_under(rel))]
        dirs = sorted(d[cut:] for d in state.all_dirs() if d != rel and paths.is_under(d, rel))
    else:
        raise NotFound(f"/{rel} does not exist in the volume")
    reader = repo.reader()
    out = sys.stdout.buffer
    with bar(sum(r.size for _, r in files), "download") as advance:
        if not as_tar:
            for _, record in files:
                for chunk in reader.iter_parts(record):
                    out.write(chunk)
                    advance(len(chunk))
        else:
            import tarfile

            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for d in dirs:
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                for name, record in files:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = record.size, record.mode & 0o777
                    info.mtime = record.mtime_ns / 1e9
                    tar.addfile(info, _ChunkReader(reader.iter_parts(record), advance))
    out.flush()


class _ChunkReader:
    """A file object over verified chunks, for tarfile to read from."""

    def __init__(self, chunks: Iterator[bytes], advance: Callable[[int], None]) -> None:
        self._chunks = chunks
        self._advance = advance
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._advance(len(chunk))
            self._buffer += chunk
        if n < 0:
            n = len(self._buffer)
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data


def cmd_rm(args: argparse.Namespace) -> int:
    volume_of(args, args.name).remove_file(args.path, recursive=args.recursive)
    say(f"Removed {'/' + paths.normalize(args.path)} from {args.name!r}.")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise InvalidArgument("cp needs a source and a destination: cp NAME SRC... DST")
    *sources, destination = args.paths
    volume_of(args, args.name).copy_files(sources, destination, recursive=args.recursive)
    say(f"Copied {plural(len(sources), 'path')} to {destination} in {args.name!r}.")
    return 0


# -- history ----------------------------------------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise InvalidArgument("--limit must be at least 1")
    repo = volume_of(args, args.name).repo
    commits = repo.history(limit=args.limit)
    rows = [
        {
            "seq": c.seq,
            "time": c.time,
            "writer": {"id": c.writer.id, "host": c.writer.host, "pid": c.writer.pid},
            "message": c.message,
            "files_written": c.files_written,
            "paths_deleted": c.paths_deleted,
            "bytes_written": c.bytes_written,
        }
        for c in commits
    ]
    horizon = repo.horizon()
    if args.json:
        emit_json(rows)
    elif not commits:
        say(f"Volume {args.name!r} has no commits yet.")
    else:
        output.table(
            ["SEQ", "TIME", "WRITER", "FILES", "DELETED", "BYTES", "MESSAGE"],
            [
                [
                    str(c.seq),
                    when(c.time),
                    f"{c.writer.host}:{c.writer.pid}",
                    str(c.files_written),
                    str(c.paths_deleted),
                    size(c.bytes_written),
                    c.message or "",
                ]
                for c in commits
            ],
            right=(0, 3, 4, 5),
        )
    if horizon and not args.json:
        say(f"Retained history begins at commit {horizon}; older commits were pruned.")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    vol = volume_of(args, args.name)
    if args.keep_all and (args.keep_last is not None or args.keep_for is not None):
        raise InvalidArgument("--keep-all cannot be combined with --keep-last or --keep-for")
    if args.keep_all or args.keep_last is not None or args.keep_for is not None:
        policy = vol.set_retention(keep_last=args.keep_last, keep_for=args.keep_for)
    else:
        policy = vol.retention_policy()
    horizon = vol.repo.horizon()
    if args.json:
        emit_json(
            {
                "keep_last": policy.keep_last,
                "keep_for_seconds": policy.keep_for_seconds,
                "retained_from": horizon or None,
            }
        )
        return 0
    say(f"Volume {args.name!r}: {policy.describe()}.")
    if horizon:
        say(f"Retained history begins at commit {horizon}.")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    repo = volume_of(args, args.name).repo
    repo.state(args.seq)  # NotFound before asking
    output.confirm(
        f"Make volume {args.name!r} hold what it held at commit {args.seq} (as a new commit)?",
        args.yes,
    )
    seq = repo.restore(args.seq)
    say(f"Restored {args.name!r} to commit {args.seq} as commit {seq}.")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    # The grace is checked by the core (a minimum, finite): one rule, one message.
    repo = volume_of(args, args.name).repo
    from kvol.retention import format_duration, prune_history, read_policy

    # History outside the retention policy first (it keeps everything unless one is set).
    pruned = prune_history(repo, grace_seconds=args.grace, dry_run=args.dry_run)
    report = repo.gc(grace_seconds=args.grace, dry_run=args.dry_run)
    if args.json:
        emit_json(
            {
                "dry_run": args.dry_run,
                "grace_seconds": args.grace,
                "retained_from": pruned.horizon or None,
                "entries_pruned": pruned.entries_deleted,
                "entries_waiting": pruned.entries_waiting,
                "objects_seen": report.objects_seen,
                "objects_referenced": report.objects_referenced,
                "objects_deleted": report.objects_deleted,
                "bytes_deleted": report.bytes_deleted,
                "objects_kept_young": report.objects_kept_young,
                "deleted": list(report.deleted),
                "temporaries_deleted": report.temporaries_deleted,
                "temporary_bytes_deleted": report.temporary_bytes_deleted,
            }
        )
        return 0
    verb = "Would delete" if args.dry_run else "Deleted"
    if pruned.horizon:
        policy = read_policy(repo.store, repo.volume_id)
        say(
            f"Retained history begins at commit {pruned.horizon} ({policy.describe()}); "
            f"{'would prune' if args.dry_run else 'pruned'} "
            f"{plural(pruned.entries_deleted, 'older commit')}"
            + (
                f", {pruned.entries_waiting:,} more once their grace "
                f"({format_duration(args.grace)}) has passed"
                if pruned.entries_waiting
                else ""
            )
            + "."
        )
    say(
        f"{verb} {plural(report.objects_deleted, 'object')} ({size(report.bytes_deleted)}) of "
        f"{report.objects_seen:,}; kept {report.objects_kept_young:,} younger than "
        f"{args.grace:g}s."
    )
    if args.dry_run:
        say("Leftovers of interrupted writes are removed only by a run without --dry-run.")
    else:
        say(
            f"Removed {plural(report.temporaries_deleted, 'leftover temporary file')} of "
            f"interrupted writes ({size(report.temporary_bytes_deleted)})."
        )
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    if args.repair and not args.sources:
        raise InvalidArgument("--repair needs a copy to repair from: --from DIR")
    if args.sources and not args.repair:
        raise InvalidArgument("--from is only used with --repair")
    from kvol.volume import Volume

    vol = Volume.from_name(args.name, store=store_of(args), namespace=namespace_of(args))
    with contextlib.ExitStack() as stack:
        advance: Callable[[int], None] | None = None
        shown = 0

        def progress(done: int, total: int) -> None:
            nonlocal advance, shown
            if advance is None:
                advance = stack.enter_context(bar(total, "fsck"))
            advance(done - shown)
            shown = done

        report = vol.fsck(
            verify_content=not args.no_content,
            repair_from=args.sources if args.repair else None,
            progress=progress,
        )
    if args.json:
        emit_json({"name": args.name, **report.to_dict()})
    else:
        _say_fsck(args.name, report)
    if not report.ok:
        left = " left after repair" if report.repair is not None else ""
        raise CorruptData(
            f"volume {args.name!r} is damaged: {plural(len(report.damage), 'problem')}{left}"
        )
    return 0


def _say_fsck(name: str, report: FsckReport) -> None:
    from kvol import fsck

    say(
        f"Checked volume {name!r} (id {report.volume_id}): {plural(report.head, 'commit')}, "
        f"{plural(report.checkpoints_checked, 'checkpoint')}, "
        f"{plural(report.objects_checked, 'content object')} ({size(report.bytes_checked)} hashed)."
    )
    if report.repair is not None:
        for done in report.repair.repaired:
            say(f"REPAIRED {done.key}: {done.detail}")
        for failed in report.repair.not_repaired:
            say(f"NOT REPAIRED {failed.key}: {failed.detail}")
    for d in report.damage:
        say(f"DAMAGED {d.kind} {d.key}: {d.detail}")
        if d.commits:
            say(f"  commits: {fsck.describe_commits(d.commits)}")
        if d.files:
            more = f" and {len(d.files) - 10:,} more" if len(d.files) > 10 else ""
            say(f"  files: {', '.join(d.files[:10])}{more}")
    if report.ok:
        say("No damage found.")


# -- working copies ---------------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace) -> int:
    from kvol.workcopy import WorkingCopy

    repo = volume_of(args, args.name).repo
    wc = WorkingCopy.create(repo, args.dir, read_only=args.read_only)
    files = len(wc.index.files)
    say(
        f"Mounted {args.name!r} at {wc.root}: commit {wc.index.base}, {plural(files, 'file')}"
        f"{' (read-only)' if args.read_only else ''}."
    )
    if not args.read_only:
        say(f"Publish changes with: kvol volume commit {args.dir}")
    say(f"Pull others' changes with: kvol volume reload {args.dir}")
    return 0


#: Skipped paths named one a line by commit; the rest are counted.
SHOWN_SKIPPED = 10


class _CoreSkipLine(logging.Filter):
    """Drops the core's one-line summary of skipped paths while the CLI commits: the
    CLI names them itself, one a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("not committed from ")


def _warn_skipped(root: Path, skipped: list[str]) -> None:
    for rel in skipped[:SHOWN_SKIPPED]:
        kind = _kind(root / rel)
        warn(f"not committed: {rel} is {kind + ', ' if kind else ''}not a regular file")
    if len(skipped) > SHOWN_SKIPPED:
        warn(f"and {len(skipped) - SHOWN_SKIPPED:,} more not committed (not regular files)")


def _kind(path: Path) -> str | None:
    """What a skipped path is, when it is still there to look at."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISCHR, "a character device"),
    ):
        if test(mode):
            return name
    return None


def cmd_commit(args: argparse.Namespace) -> int:
    mount = mount_of(args.dir)
    quiet = _CoreSkipLine()
    core_log = logging.getLogger("kvol.committing")
    core_log.addFilter(quiet)
    try:
        result = mount.commit(args.message)
    except KvolError as exc:
        raise type(exc)(
            f"{exc} (nothing was lost: your changes are still in {mount.root})"
        ) from exc
    finally:
        core_log.removeFilter(quiet)
    if args.json:
        emit_json(result)
    elif result.get("seq") is None:
        say("Nothing to commit.")
    else:
        deleted = int(result.get("deleted", 0))
        gone = f", {plural(deleted, 'deletion')}" if deleted else ""
        say(
            f"Committed {plural(int(result.get('files', 0)), 'file')} "
            f"({size(int(result.get('bytes', 0)))}){gone} as commit {result['seq']}."
        )
    deferred = result.get("deferred") or []
    if deferred:
        print(
            f"kvol: {plural(len(deferred), 'file')} changed while being read and will go in the "
            f"next commit: {', '.join(deferred[:5])}",
            file=sys.stderr,
        )
    _warn_skipped(mount.root, [str(p) for p in result.get("skipped") or []])
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import signal

    from kvol.copybase import CommitResult
    from kvol.watching import Watcher

    mount = mount_of(args.dir)
    # A socket beside the copy's configuration is a watcher's, live or left behind by
    # one killed: the watch lock tells which.
    if not (isinstance(mount, mounted.LocalMount) or getattr(mount, "local", False)):
        raise InvalidArgument(f"{mount.root} is a pod's mount: its node plugin commits it already")

    def report(result: CommitResult, why: str) -> None:
        if result.seq is None:
            return
        deleted = f", {plural(result.deleted, 'deletion')}" if result.deleted else ""
        said = {"control socket": " (asked)", "final": " (final)"}.get(why, "")
        say(
            f"{time.strftime('%H:%M:%S')} committed {plural(result.files, 'file')} "
            f"({size(result.bytes)}){deleted} as commit {result.seq}{said}"
        )
        sys.stdout.flush()  # a log file or a pipe sees each commit as it lands

    def stop(signum: int, frame: object) -> None:
        if watcher.stopping:
            raise KeyboardInterrupt  # a second signal: stop without the final commit
        warn(
            "stopping: committing what is left (Ctrl-C again to stop without it; "
            "the changes stay in the copy)"
        )
        watcher.stop()

    def announce() -> None:
        how = "as they happen" if watcher.tracking else "by a look at every file"
        say(
            f"Watching {mount.root}: changes are found {how} and committed every "
            f"{args.interval:g}s and when this stops (Ctrl-C)."
        )
        say(f"kvol volume commit/reload/status {args.dir} are answered by this process.")
        sys.stdout.flush()

    watcher = Watcher(mount.root, args.interval, report=report, on_ready=announce)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = watcher.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result is None or result.seq is None:
        say("Stopped; nothing was left to commit.")
    else:
        say("Stopped.")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    result = mount_of(args.dir).reload()
    if args.json:
        emit_json(result)
        return 0
    if result["from_seq"] == result["to_seq"]:
        say(f"Already up to date (commit {result['to_seq']}).")
    else:
        say(
            f"Reloaded from commit {result['from_seq']} to {result['to_seq']}: "
            f"{plural(int(result.get('files', 0)), 'file')} updated."
        )
    kept = result.get("kept_local") or []
    if kept:
        more = f" and {len(kept) - 10:,} more" if len(kept) > 10 else ""
        say(f"Kept your uncommitted changes to: {', '.join(kept[:10])}{more}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    mount = mount_of(args.dir)
    status = mount.status()
    status["root"] = str(mount.root)
    if args.json:
        emit_json(status)
        return 0
    head = status.get("head_seq")
    behind = ""
    if isinstance(head, int) and head > status["base_seq"]:
        behind = f" ({head - status['base_seq']} behind; kvol volume reload)"
    say(f"Working copy {mount.root} of volume {status.get('volume') or status['volume_id']}")
    say(f"  base commit: {status['base_seq']}{behind}")
    if head is not None:
        say(f"  head commit: {head}")
    watcher = status.get("watched_by")
    if watcher is not None:
        say(
            f"  watched: committed every {status.get('autocommit_seconds', 0):g}s "
            f"by kvol volume watch (pid {watcher})"
        )
    changed, deleted = status["changed"], status["deleted"]
    say(
        f"  uncommitted: {plural(len(changed), 'changed file')}, {len(deleted):,} deleted, "
        f"{size(int(status['uncommitted_bytes']))}"
    )
    for p in changed[:20]:
        say(f"    M {p}")
    for p in deleted[:20]:
        say(f"    D {p}")
    hidden = max(0, len(changed) - 20) + max(0, len(deleted) - 20)
    if hidden:
        say(f"    ... and {hidden} more")
    return 0
