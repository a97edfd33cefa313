"""A commit's journal: what it is about to publish and how the index changes once it
lands, written (and synced) before the log entry is, so that a commit that dies between
the two is settled at the next lock (see Committing._recover_commit)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvol import fsops, paths
from kvol.errors import CorruptData, KvolError
from kvol.index import Signature, SigTuple, unpack_sig
from kvol.model import Entry, FileRecord, Op, Writer

#: Files whose part of a commit journal is encoded at a time.
JOURNAL_SLICE = 1024

#: A file a commit publishes: its record, the stat it had when read, whether to hash it
#: again at the next scan.
Put = tuple[FileRecord, Signature | SigTuple | bytes, bool]


@dataclass
class Published:
    """How a commit changes the index once its entry has landed."""

    gone: list[str]
    removed_dirs: list[str]
    dirs_added: list[str]
    #: Path -> (its record, the stat it had when read, hash it again at the next scan).
    puts: dict[str, Put]


@dataclass
class CommitJournal:
    """A journal read back: the log position to look for the commit from, its operations
    as the log stores them, the writer that made it (None in journals of older
    versions) and what it changes in the index."""

    start: int
    ops: list[Any]
    writer: str | None
    done: Published


def write_commit_journal(
    path: Path, ops: list[Op], *, base: int, known_head: int, writer: str, done: Published
) -> None:
    head = {
        "format": 1,
        "base": base,
        "known_head": known_head,
        # Another writer may publish the very same operations (the same files
        # extracted in two copies): only an entry of this writer is this commit.
        "writer": writer,
    }

    def dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    def pieces() -> Iterator[bytes]:
        # The JSON of one object holding head, ops, gone, removed_dirs, dirs_added and
        # puts, made a slice of files at a time: at 100,000 files the whole (and its
        # lists) would be hundreds of MiB, and its bytes are only ever read back.
        yield dumps(head)[:-1].encode()
        yield b',"ops":['
        for i in range(0, len(ops), JOURNAL_SLICE):
            # As an entry stores them (no JSON round trip: a copy of every record).
            some = Entry(tuple(ops[i : i + JOURNAL_SLICE]), 0.0, Writer("", "", 0), 0)
            yield (b"," if i else b"") + dumps(some.to_payload()["ops"])[1:-1].encode()
        yield (
            f'],"gone":{dumps(done.gone)},"removed_dirs":{dumps(done.removed_dirs)},'
            f'"dirs_added":{dumps(done.dirs_added)},"puts":{{'
        ).encode()
        puts = list(done.puts.items())
        for i in range(0, len(puts), JOURNAL_SLICE):
            some_puts = {
                rel: [record.to_list(), _sig_list(sig), racy]
                for rel, (record, sig, racy) in puts[i : i + JOURNAL_SLICE]
            }
            yield (b"," if i else b"") + dumps(some_puts)[1:-1].encode()
        yield b"}}"

    fsops.write_atomically(path, pieces())


def read_commit_journal(path: Path) -> CommitJournal | None:
    """The journal at ``path``, checked (None: there is none)."""
    try:
        journal = json.loads(path.read_bytes())
        base = int(journal["base"])
        ops = journal["ops"]
        if not isinstance(ops, list):
            raise TypeError("ops is not a list")
        writer = journal.get("writer")  # absent in journals of older versions
        done = Published(
            gone=[paths.check(str(p)) for p in journal["gone"]],
            removed_dirs=[paths.check(str(p)) for p in journal["removed_dirs"]],
            dirs_added=[paths.check(str(p)) for p in journal["dirs_added"]],
            puts={
                paths.check(str(rel)): (
                    FileRecord.from_list(record),
                    Signature(*(int(v) for v in sig)),
                    bool(racy),
                )
                for rel, (record, sig, racy) in journal["puts"].items()
            },
        )
        return CommitJournal(
            start=max(base, int(journal["known_head"])),
            ops=ops,
            writer=None if writer is None else str(writer),
            done=done,
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError, KvolError) as exc:
        raise CorruptData(f"commit journal {path} is unreadable: {exc}") from exc


def ops_payload(ops: list[Op] | tuple[Op, ...]) -> Any:
    """Operations as an entry stores them, as JSON reads them back (lists, not tuples)."""
    payload = Entry(tuple(ops), 0.0, Writer("", "", 0), 0).to_payload()["ops"]
    return json.loads(json.dumps(payload))


def _sig_list(sig: Signature | SigTuple | bytes) -> list[int]:
    if isinstance(sig, bytes):
        return list(unpack_sig(sig))
    return list(sig) if isinstance(sig, tuple) else sig.to_list()
