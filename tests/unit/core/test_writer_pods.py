"""A commit names the pod whose copy made it, so a volume's writers are counted by pod."""

from __future__ import annotations

from kvol.model import Writer
from kvol.repo import Repo
from tests.unit.core.helpers import upload


def test_writers_are_counted_by_pod_not_by_copy(repo: Repo) -> None:
    writers = [
        Writer("copy-1", "node-a", 10, "ns/trainer"),
        Writer("copy-2", "node-a", 10, "ns/trainer"),  # the same pod's second mount
        Writer("copy-3", "node-a", 11, "ns/trainer"),  # ... after the plugin restarted
        Writer("copy-4", "node-b", 12, "ns/loader"),
        Writer("copy-5", "laptop", 13),  # the CLI: no pod
    ]
    for base, writer in enumerate(writers):
        repo.publish([upload(repo, f"f{base}", b"x")], base, writer=writer)
    assert repo.stats().writers_recent == 3
    assert [repo.read_entry(s).writer for s in (1, 5)] == [writers[0], writers[4]]  # type: ignore[union-attr]


def test_entries_without_a_pod_still_read() -> None:
    writer = Writer("copy", "host", 1)
    assert "pod" not in writer.to_dict()
    assert Writer("copy", "host", 1, "ns/p").to_dict()["pod"] == "ns/p"
