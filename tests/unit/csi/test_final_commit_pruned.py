"""A pod whose copy's base was pruned away while it ran still has its files committed
when it ends: the final commit reloads the copy (its changes kept) and commits again."""

from __future__ import annotations

from pathlib import Path

from kvol.repo import Repo
from kvol.retention import RetentionPolicy, prune_history
from kvol.workcopy import WorkingCopy
from tests.unit.csi.test_warm import (
    CountingStore,
    publish,
    repo_of,
    service,
    store,  # noqa: F401 (fixture)
    unpublish,
)


def test_the_final_commit_of_a_pod_whose_base_was_pruned_lands(
    tmp_path: Path,
    store: CountingStore,  # noqa: F811
) -> None:
    node = service(tmp_path, store, keep_warm_seconds=0)
    target = publish(node, tmp_path)
    (target / "from-pod.txt").write_text("mine\n")
    repo = repo_of(store)
    other = WorkingCopy.create(Repo(store, repo.volume_id), tmp_path / "other")
    for i in range(3):
        (other.root / "theirs.txt").write_text(f"v{i}\n")
        other.commit()
    other.close(final_commit=False)
    prune_history(repo, RetentionPolicy(keep_last=1))
    assert repo.horizon() == repo.head()

    unpublish(node, target)

    state = Repo(store, repo.volume_id).state()
    assert "from-pod.txt" in state.files and "theirs.txt" in state.files
    reader = repo.reader()
    try:
        assert reader.read(state.files["from-pod.txt"]) == b"mine\n"
        assert reader.read(state.files["theirs.txt"]) == b"v2\n"
    finally:
        reader.release()
