"""A volume's limits (kvol.model.Limits), checked before a commit publishes: a commit is
refused only for what it adds, so a volume over a limit can always be brought back
under it."""

from __future__ import annotations

from collections import Counter

from kvol import paths
from kvol.commit_journal import Put
from kvol.errors import LimitExceeded
from kvol.index import Index, record_size
from kvol.model import Limits


def check_limits(
    index: Index,
    limits: Limits,
    removed_dirs: set[str],
    file_deletes: list[str],
    puts: dict[str, Put],
    dirs_added: set[str],
) -> None:
    if limits == Limits():
        return
    for rel, (record, _, _) in puts.items():
        if limits.max_file_size is not None and record.size > limits.max_file_size:
            raise LimitExceeded(
                f"{rel} is {record.size:,} bytes, over the volume's file size limit of "
                f"{limits.max_file_size:,}; nothing was published and your files are unchanged"
            )
    # The files the volume would hold. A commit is refused only for what it adds: one
    # that adds no file, no byte and no directory entry is never refused (a volume over
    # a limit, as racing writers can leave it, can always be brought back under it),
    # and such a commit (most of them: a few files changed) looks at no other file.
    gone = set(file_deletes)
    under_removed = tuple(d + "/" for d in removed_dirs)
    if removed_dirs:
        gone.update(p for p in index.paths() if p in removed_dirs or p.startswith(under_removed))

    def recorded(p: str) -> bool:
        entry = index.entry(p)
        return entry is not None and entry.has_record

    new_files = [p for p in puts if not recorded(p)]
    removed = [p for p in gone if p not in puts and recorded(p)]
    if limits.max_files is not None and new_files:
        had = len(index.paths()) - len(index.without_record())
        count = had - len(removed) + len(new_files)
        if count > limits.max_files:
            raise LimitExceeded(
                f"the volume would hold {count:,} files, over its limit of "
                f"{limits.max_files:,}; nothing was published and your files are unchanged"
            )
    if limits.max_bytes is not None:
        replaced = [p for p in puts if recorded(p)]
        grows = sum(r.size for r, _, _ in puts.values()) - sum(
            record_size(index.entry_of(p)) for p in [*replaced, *removed]
        )
        if grows > 0:
            total = index.recorded_bytes() + grows
            if total > limits.max_bytes:
                raise LimitExceeded(
                    f"the volume would hold {total:,} bytes, over its limit of "
                    f"{limits.max_bytes:,}; nothing was published and your files are unchanged"
                )
    if limits.max_files_per_directory is not None and (new_files or dirs_added):
        # The directories as this commit leaves them: removed trees gone, new ones in,
        # and every one a file or directory implies.
        dirs = {d for d in index.dirs if d not in removed_dirs and not d.startswith(under_removed)}
        dirs |= dirs_added
        left_out = gone | set(index.without_record())
        kept = [p for p in index.paths() if p not in left_out and p not in puts]
        kept += puts
        counts = Counter(p.rpartition("/")[0] for p in kept)
        implied = set(counts) | {a for d in dirs for a in paths.ancestors(d)}
        for d in list(implied):
            implied.update(paths.ancestors(d))
        implied.discard("")
        for d in dirs | implied:
            counts[d.rpartition("/")[0]] += 1
        # Only directories this commit adds an entry to (or whose entries it adds).
        growing = {""}
        for added in [*new_files, *dirs_added]:
            growing.update(paths.ancestors(added))
        for directory in sorted(growing):
            count = counts.get(directory, 0)
            if count > limits.max_files_per_directory:
                raise LimitExceeded(
                    f"directory {directory or '/'} would hold {count:,} entries, over the volume's "
                    f"limit of {limits.max_files_per_directory:,} per directory; nothing was published"
                )
