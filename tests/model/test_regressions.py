"""Minimal examples the model-based test found, kept as plain tests (each replays the
steps hypothesis reported, with every invariant checked after each step)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.model.machine import Env, horizon_check_point, replay

Step = tuple[str, dict[str, Any]]

pytestmark = pytest.mark.model


def test_reload_keeps_a_local_file_where_another_writer_made_a_directory(fs_env: Env) -> None:
    # Copy 1's uncommitted file "b" must survive copy 0's directory "b" arriving.
    replay(
        fs_env,
        [
            ("write", {"i": 0, "path": "b/a", "tag": 0, "large": False}),
            ("commit", {"i": 0}),
            ("write", {"i": 1, "path": "b", "tag": 1, "large": False}),
            ("reload", {"i": 1}),
            ("commit", {"i": 1}),
            ("reload", {"i": 0}),
        ],
    )


def test_rm_r_keeps_files_another_writer_added_under_the_directory(fs_env: Env) -> None:
    # Copy 1 removes "a" as it saw it ("a/a"); copy 2's "a/b", committed meanwhile, stays.
    replay(
        fs_env,
        [
            ("write", {"i": 0, "path": "a/a", "tag": 1, "large": False}),
            ("commit", {"i": 0}),
            ("reload", {"i": 1}),
            ("write", {"i": 2, "path": "a/b", "tag": 2, "large": False}),
            ("commit", {"i": 2}),
            ("delete", {"i": 1, "chosen": "a"}),
            ("commit", {"i": 1}),
            ("reload", {"i": 1}),
        ],
    )


def test_an_empty_directory_another_writer_made_survives_rm_r_of_its_parent(
    fs_env: Env,
) -> None:
    replay(
        fs_env,
        [
            ("mkdir", {"i": 0, "path": "b"}),
            ("commit", {"i": 0}),
            ("reload", {"i": 2}),
            ("mkdir", {"i": 2, "path": "b/a/b"}),
            ("commit", {"i": 2}),
            ("delete", {"i": 0, "chosen": "b"}),
            ("commit", {"i": 0}),
        ],
    )


def _killed_at_every_point(env: Env, before: list[Step], op: Step, after: list[Step]) -> int:
    """Replay with the kill of ``op`` at each of its points in turn, until it finishes."""
    for k in range(1, 200):
        for when in ("before", "after"):
            name, args = op
            notes = replay(env, [*before, (name, {**args, "k": k, "when": when}), *after])
            if any("-> finished" in note for note in notes):
                return k
    raise AssertionError("the operation never finished")


def test_a_killed_reload_never_makes_the_next_commit_revert_other_writers(fs_env: Env) -> None:
    # Whatever point kills copy 1's reload, its next commit must not send back the old
    # "a" over copy 0's newer one (the files it downloaded are not its changes).
    points = _killed_at_every_point(
        fs_env,
        [
            ("write", {"i": 0, "path": "a", "tag": 1, "large": False}),
            ("write", {"i": 0, "path": "b/a", "tag": 2, "large": False}),
            ("write", {"i": 0, "path": "b/b", "tag": 4, "large": True}),
            ("commit", {"i": 0}),
        ],
        ("kill", {"i": 1, "op": "reload"}),
        [
            ("write", {"i": 0, "path": "a", "tag": 3, "large": False}),
            ("commit", {"i": 0}),
            ("commit", {"i": 1}),
            ("reload", {"i": 1}),
            ("reload", {"i": 0}),
        ],
    )
    assert points > 3


def test_reload_brings_many_new_files_of_new_directories(fs_env: Env) -> None:
    # An upload records no directories; the parallel downloads of a reload create them,
    # several at once, and none may fail for it.
    upload = {f"c/d{n % 3}/f{n}" for n in range(24)}
    for _ in range(4):
        replay(
            fs_env,
            [
                ("sdk_put", {"paths": upload, "tag": 0, "large": False}),
                ("reload", {"i": 1}),
                ("reload", {"i": 2}),
            ],
        )


def test_a_file_rewritten_with_the_same_bytes_is_not_a_local_change(fs_env: Env) -> None:
    # A commit right after the rewrite publishes nothing ("touched, not changed"); a
    # reload must agree, and let the other writer's deletion through.
    replay(
        fs_env,
        [
            ("write", {"i": 0, "path": "a", "tag": 0, "large": False}),
            ("commit", {"i": 0}),
            ("rewrite_same", {"i": 0, "chosen": "a"}),
            ("sdk_rm", {"chosen": "a"}),
            ("reload", {"i": 0}),
            ("commit", {"i": 0}),
        ],
    )


def test_reload_removes_a_directory_another_writer_removed(fs_env: Env) -> None:
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a"}, "tag": 0, "large": False}),
            ("reload", {"i": 0}),
            ("sdk_rm", {"chosen": "a"}),
            ("reload", {"i": 0}),
            ("commit", {"i": 0}),
        ],
    )


def test_a_commit_keeps_the_directory_whose_last_file_it_removed(fs_env: Env) -> None:
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a"}, "tag": 0, "large": False}),
            ("reload", {"i": 2}),
            ("delete", {"i": 2, "chosen": "a/a"}),
            ("commit", {"i": 2}),
        ],
    )


def test_deleting_a_local_file_that_hid_a_remote_directory_brings_the_directory_back(
    fs_env: Env,
) -> None:
    # Copy 0 never had "a/a" (its own file "a" hid it), so its commit must not delete it
    # and its next reload must bring it.
    replay(
        fs_env,
        [
            ("write", {"i": 1, "path": "a/a", "tag": 0, "large": False}),
            ("commit", {"i": 1}),
            ("write", {"i": 0, "path": "a", "tag": 1, "large": False}),
            ("reload", {"i": 0}),
            ("delete", {"i": 0, "chosen": "a"}),
            ("commit", {"i": 0}),
            ("reload", {"i": 0}),
        ],
    )


def test_a_file_a_killed_reload_wrote_and_the_user_then_deleted_stays_deleted(
    fs_env: Env,
) -> None:
    # Copy 1's reload is killed after moving "a/b" into place; the user deletes it before
    # anything settles the reload, and the next reload must keep that deletion.
    replay(
        fs_env,
        [
            ("reload", {"i": 0}),
            ("mkdir", {"i": 2, "path": "a/a/a"}),
            ("kill", {"i": 0, "op": "commit", "k": 10, "when": "before"}),
            ("write", {"i": 2, "path": "b/a", "tag": 2, "large": False}),
            ("write", {"i": 2, "path": "a/a/a", "tag": 3, "large": True}),
            ("kill", {"i": 0, "op": "commit", "k": 32, "when": "after"}),
            ("commit", {"i": 2}),
            ("sdk_put", {"paths": {"a/b"}, "tag": 3, "large": False}),
            ("sdk_rm", {"chosen": "a/a/a"}),
            ("kill", {"i": 1, "op": "reload", "k": 12, "when": "before"}),
            ("mkdir", {"i": 1, "path": "b/b"}),
            ("reload", {"i": 2}),
            ("reload", {"i": 0}),
            ("mkdir", {"i": 1, "path": "a/a"}),
            ("commit", {"i": 2}),
            ("delete", {"i": 1, "chosen": "a/b"}),
            ("gc", {}),
            ("reload", {"i": 0}),
            ("reload", {"i": 1}),
            ("commit", {"i": 1}),
        ],
    )


def test_a_reload_killed_while_a_file_replaces_a_directory_recovers(fs_env: Env) -> None:
    # Killed between removing directory "a" and moving file "a" in: the copy settles with
    # neither, and its next reload writes the file.
    replay(
        fs_env,
        [
            ("mkdir", {"i": 2, "path": "a/a/a"}),
            ("commit", {"i": 2}),
            ("mkdir", {"i": 0, "path": "b/b"}),
            ("commit", {"i": 0}),
            ("sdk_rm", {"chosen": "a"}),
            ("sdk_put", {"paths": {"a"}, "tag": 0, "large": False}),
            ("kill", {"i": 2, "op": "reload", "k": 10, "when": "before"}),
            ("reload", {"i": 2}),
            ("commit", {"i": 2}),
            ("reload", {"i": 1}),
        ],
    )


def test_reload_keeps_a_directory_the_copy_emptied_itself(fs_env: Env) -> None:
    # Copy 1 deletes "a/a" and keeps "a"; another writer deletes "a/a" too. The empty "a"
    # is copy 1's own change (its commit would publish it), so its reload keeps it.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a", "b"}, "tag": 0, "large": False}),
            ("reload", {"i": 1}),
            ("sdk_rm", {"chosen": "a"}),
            ("delete", {"i": 1, "chosen": "a/a"}),
            ("reload", {"i": 1}),
            ("commit", {"i": 1}),
        ],
    )


def test_a_directory_kept_after_removing_the_one_below_it_is_published(fs_env: Env) -> None:
    # "a" is in the volume only because of "a/b"; copy 1 removes "a/b" and keeps "a", so
    # its commit must publish "a" as a directory, or the volume would lose it.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a"}, "tag": 0, "large": False}),
            ("reload", {"i": 0}),
            ("mkdir", {"i": 0, "path": "a/b"}),
            ("commit", {"i": 0}),
            ("sdk_rm", {"chosen": "a/a"}),
            ("reload", {"i": 1}),
            ("delete", {"i": 1, "chosen": "a/b"}),
            ("commit", {"i": 1}),
            ("reload", {"i": 0}),
        ],
    )


def test_a_file_the_copy_never_had_written_with_its_bytes_is_published(fs_env: Env) -> None:
    # Copy 2's local file "b" keeps the volume's "b/a" out; the user replaces "b" by "b/a"
    # with the very bytes the volume has. The copy never had that file, so this is a new
    # write, published, and not mistaken for an untouched file.
    replay(
        fs_env,
        [
            ("write", {"i": 2, "path": "b", "tag": 2, "large": False}),
            ("sdk_put", {"paths": {"b/a"}, "tag": 4, "large": False}),
            ("reload", {"i": 2}),
            ("write", {"i": 2, "path": "b/a", "tag": 4, "large": False}),
            ("commit", {"i": 2}),
            ("reload", {"i": 0}),
        ],
    )


def test_a_killed_reload_records_the_directories_it_made_for_its_files(fs_env: Env) -> None:
    # "b/a" is in the volume only because of "b/a/b". Wherever copy 2's reload is killed,
    # the directories it made for the files it wrote are the volume's, not new local ones
    # for the next commit to publish.
    points = _killed_at_every_point(
        fs_env,
        [("sdk_put", {"paths": {"b/a/b", "a"}, "tag": 4, "large": False})],
        ("kill", {"i": 2, "op": "reload"}),
        [("commit", {"i": 2}), ("reload", {"i": 0})],
    )
    assert points > 3


def test_files_of_a_directory_the_copy_made_where_its_file_was_stay(fs_env: Env) -> None:
    # Copy 0 replaces its file "a" by a directory; the volume then does too (files under
    # "a"). A record of the old file "a" must not outlive the reload and later hide "a/a".
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a"}, "tag": 0, "large": False}),
            ("reload", {"i": 0}),
            ("mkdir", {"i": 0, "path": "a"}),
            ("sdk_put", {"paths": {"a/a", "a/b", "b"}, "tag": 5, "large": False}),
            ("reload", {"i": 0}),
            ("sdk_put", {"paths": {"a/b"}, "tag": 4, "large": False}),
            ("reload", {"i": 0}),
            ("commit", {"i": 0}),
        ],
    )


def test_a_new_local_file_with_the_bytes_another_writer_committed_is_no_change(
    fs_env: Env,
) -> None:
    # Copy 0 writes "a/a" with the bytes copy 1 commits there. After copy 0's reload the
    # file is the volume's, so a later deletion by another writer is not undone by copy 0.
    replay(
        fs_env,
        [
            ("write", {"i": 1, "path": "a/a", "tag": 1, "large": False}),
            ("write", {"i": 0, "path": "a/a", "tag": 1, "large": False}),
            ("commit", {"i": 1}),
            ("reload", {"i": 0}),
            ("sdk_rm", {"chosen": "a/a"}),
            ("commit", {"i": 0}),
            ("reload", {"i": 0}),
        ],
    )


def test_directories_hidden_by_a_local_file_survive_its_deletion(fs_env: Env) -> None:
    # Copy 0's local file "b" stands where copy 2 committed directories "b" and "b/a".
    # Copy 0 never had them: deleting its file must not remove them from the volume.
    replay(
        fs_env,
        [
            ("write", {"i": 2, "path": "b", "tag": 0, "large": False}),
            ("commit", {"i": 2}),
            ("mkdir", {"i": 2, "path": "b/a"}),
            ("write", {"i": 0, "path": "a/a/a", "tag": 5, "large": False}),
            ("sdk_rm", {"chosen": "b"}),
            ("commit", {"i": 0}),
            ("rename", {"i": 0, "chosen": "a/a/a", "dst": "b"}),
            ("commit", {"i": 2}),
            ("reload", {"i": 0}),
            ("delete", {"i": 0, "chosen": "b"}),
            ("commit", {"i": 0}),
            ("reload", {"i": 0}),
        ],
    )


def test_a_directory_the_copy_emptied_is_kept_where_another_writer_put_a_file(
    fs_env: Env,
) -> None:
    # Copy 2 empties directory "a" (its own change); copy 0 commits a file "a". The
    # reload keeps the local directory, as it keeps any local change over a newer file.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a", "b"}, "tag": 0, "large": False}),
            ("reload", {"i": 2}),
            ("rename", {"i": 2, "chosen": "a", "dst": "b"}),
            ("delete", {"i": 2, "chosen": "b/a"}),
            ("rename", {"i": 2, "chosen": "b", "dst": "a"}),
            ("write", {"i": 0, "path": "a", "tag": 0, "large": False}),
            ("commit", {"i": 0}),
            ("reload", {"i": 2}),
            ("commit", {"i": 2}),
        ],
    )


def test_a_directory_removed_here_stays_removed_when_a_reload_touches_it(fs_env: Env) -> None:
    # Copy 1's commit (made directories "b", "b/a") landed after someone else's, so its
    # base stayed behind; the user then removes "b". The reload that brings both commits
    # must not make "b" again: the removal is the copy's newer change.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"b"}, "tag": 0, "large": False}),
            ("write", {"i": 1, "path": "b/a/b", "tag": 0, "large": False}),
            ("commit", {"i": 1}),
            ("delete", {"i": 1, "chosen": "b"}),
            ("reload", {"i": 1}),
            ("commit", {"i": 1}),
        ],
    )


def test_a_directory_a_copy_made_stays_its_own_after_a_reload_killed_before_its_journal(
    fs_env: Env,
) -> None:
    # Copy 2 made "b" (by writing "b/a"); the volume has "b" too. Its reload dies before
    # journaling, so "b" is still the copy's: emptied, the commit publishes it.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a", "b"}, "tag": 0, "large": False}),
            ("write", {"i": 1, "path": "b/a/b", "tag": 1, "large": False}),
            ("sdk_rm", {"chosen": "a"}),
            ("kill", {"i": 1, "op": "commit", "k": 10, "when": "before"}),
            ("write", {"i": 2, "path": "b/a", "tag": 2, "large": False}),
            ("kill", {"i": 2, "op": "reload", "k": 5, "when": "before"}),
            ("delete", {"i": 2, "chosen": "b/a"}),
            ("commit", {"i": 2}),
        ],
    )


def test_a_directory_a_killed_reload_emptied_is_not_published_as_made_by_the_copy(
    fs_env: Env,
) -> None:
    # The reload removed "a/a" and died before replacing directory "a" with a file: "a"
    # is still the volume's directory to the copy, not one it made.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a"}, "tag": 0, "large": False}),
            ("reload", {"i": 2}),
            ("sdk_rm", {"chosen": "a"}),
            ("sdk_put", {"paths": {"a"}, "tag": 1, "large": False}),
            ("kill", {"i": 2, "op": "reload", "k": 7, "when": "before"}),
            ("mkdir", {"i": 2, "path": "a/a/a"}),
            ("sdk_rm", {"chosen": "a"}),
            ("sdk_put", {"paths": {"a/a", "b"}, "tag": 2, "large": False}),
            ("commit", {"i": 2}),
            ("sdk_rm", {"chosen": "a/a"}),
        ],
    )


# Pruning: a retention policy keeping the last N commits (the "prune" rules of the machine;
# on a filesystem store time passes before each, so history before an earlier horizon is
# deleted and its content collected; on MinIO only the horizon moves).


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.s3)])
def either_env(request: pytest.FixtureRequest) -> Env:
    env: Env = request.getfixturevalue(f"{request.param}_env")
    return env


def test_a_stale_writer_is_refused_then_reloads_and_commits_keeping_its_changes(
    either_env: Env,
) -> None:
    # Copy 1's base (commit 1) is pruned away, then deleted from the store. Its commits
    # publish nothing (StaleBase) and keep its file; after a reload it commits, and copy
    # 0's newer "a/b" stays.
    notes = replay(
        either_env,
        [
            ("write", {"i": 0, "path": "a", "tag": 1, "large": False}),
            ("commit", {"i": 0}),
            ("reload", {"i": 1}),
            ("write", {"i": 1, "path": "b", "tag": 2, "large": True}),
            ("write", {"i": 0, "path": "a", "tag": 2, "large": False}),
            ("commit", {"i": 0}),
            ("prune", {"keep": 1}),
            ("commit_another", {"i": 1}),
            ("write", {"i": 0, "path": "a/b", "tag": 3, "large": False}),
            ("commit", {"i": 0}),
            ("prune", {"keep": 1}),
            ("commit", {"i": 1}),
            ("reload", {"i": 0}),
        ],
    )
    assert notes.count("  -> StaleBase") == 2


def test_a_commit_racing_a_prune_is_refused_or_lands_with_its_content(either_env: Env) -> None:
    # Copy 1 (based on commit 2) renames "b", which copy 0 deleted at commit 3: its commit
    # reuses content that only commits 1 and 2 name, and that time made old enough to
    # collect. Stopped at a point while gc prunes to commit 4 and collects: before its
    # horizon check it is refused, then reloads and commits; after it, its entry lands,
    # and the content is still there (the pruned commits stay in the store a grace).
    before: list[Step] = [
        ("write", {"i": 0, "path": "a", "tag": 1, "large": False}),
        ("write", {"i": 0, "path": "b", "tag": 2, "large": True}),
        ("commit", {"i": 0}),
        ("reload", {"i": 1}),
        ("reload", {"i": 2}),
        ("write", {"i": 0, "path": "a", "tag": 3, "large": False}),
        ("commit", {"i": 0}),
        ("reload", {"i": 1}),
        ("delete", {"i": 0, "chosen": "b"}),
        ("commit", {"i": 0}),
        ("write", {"i": 0, "path": "a", "tag": 4, "large": False}),
        ("commit", {"i": 0}),
        ("rename", {"i": 1, "chosen": "b", "dst": "a/b"}),
        ("gc", {}),
    ]
    check = horizon_check_point(either_env, before, 1)
    outcomes = []
    for k, when in [(check, "after"), (check + 1, "before")]:
        notes = replay(
            either_env,
            [
                *before,
                ("race", {"i": 1, "keep": 1, "k": k, "when": when}),
                ("commit", {"i": 1}),
                ("prune", {"keep": 1}),
                ("reload", {"i": 2}),
            ],
        )
        outcomes.append(next(n for n in notes if n.startswith("  -> ")))
    assert outcomes == ["  -> paused, StaleBase", "  -> paused, seq 5"], outcomes


def test_a_copy_made_on_an_empty_volume_reloads_after_its_history_was_deleted(
    fs_env: Env,
) -> None:
    # Copy 1 was made when the volume had no commit. Commits 1 and 2 land, a prune keeps
    # the last one, and a later one (time passed) deletes commit 1. The copy must reload
    # from the retained state (and so commit what it has).
    replay(
        fs_env,
        [
            ("write", {"i": 0, "path": "a", "tag": 1, "large": False}),
            ("commit", {"i": 0}),
            ("write", {"i": 0, "path": "a", "tag": 2, "large": False}),
            ("commit", {"i": 0}),
            ("prune", {"keep": 1}),
            ("prune", {"keep": 1}),
            ("write", {"i": 1, "path": "b", "tag": 3, "large": False}),
            ("commit", {"i": 1}),
        ],
    )


def test_a_killed_commit_that_landed_at_the_horizon_is_not_published_again(
    fs_env: Env,
) -> None:
    # Copy 1's commit of "b" is killed right after its entry (commit 2) landed. Copy 0
    # then commits a newer "b" (3), and a prune keeps the last two: the horizon is 2, so
    # copy 1's entry is retained history. Its next commit must recognise it (nothing to
    # publish); taking it as not landed would publish the old "b" again over copy 0's.
    before: list[Step] = [
        ("write", {"i": 0, "path": "a", "tag": 1, "large": False}),
        ("commit", {"i": 0}),
        ("reload", {"i": 1}),
        ("write", {"i": 1, "path": "b", "tag": 2, "large": False}),
        ("kill", {"i": 1, "op": "commit", "k": 7, "when": "after"}),
    ]
    assert replay(fs_env, before)[-1] == "  -> killed, entry landed"
    replay(
        fs_env,
        [
            *before,
            ("write", {"i": 0, "path": "b", "tag": 3, "large": False}),
            ("commit", {"i": 0}),
            ("prune", {"keep": 2}),
            ("commit", {"i": 1}),
            ("reload", {"i": 2}),
        ],
    )


def test_a_file_deleted_after_a_reload_was_killed_is_a_deletion_to_commit(fs_env: Env) -> None:
    # Copy 0's reload (to the commit that replaced directory "a" with a file) dies before
    # it reaches "a/b"; then "a/b" is deleted in the copy. Settling the reload must not
    # take that for the reload's own removal: the commit deletes "a/b", the last write.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/b", "b"}, "tag": 4, "large": False}),
            ("write", {"i": 2, "path": "b", "tag": 2, "large": False}),
            ("rename", {"i": 2, "chosen": "b", "dst": "a"}),
            ("reload", {"i": 0}),
            ("commit", {"i": 2}),
            ("kill", {"i": 0, "op": "reload", "k": 4, "when": "after"}),
            ("write", {"i": 0, "path": "a/a", "tag": 0, "large": True}),
            ("delete", {"i": 0, "chosen": "a/b"}),
            ("sdk_put", {"paths": {"a/b", "b/a/b", "b"}, "tag": 3, "large": True}),
            ("commit", {"i": 0}),
        ],
    )


def test_a_directory_left_only_with_files_the_copy_deleted_goes_when_a_reload_empties_it(
    fs_env: Env,
) -> None:
    # Copy 1 deletes "a/a" (uncommitted); another writer deletes "a/b". The volume still
    # has "a" through "a/a" alone, which the copy deleted: its tree has nothing there.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a", "a/b"}, "tag": 0, "large": False}),
            ("reload", {"i": 1}),
            ("delete", {"i": 1, "chosen": "a/a"}),
            ("sdk_rm", {"chosen": "a/b"}),
            ("reload", {"i": 1}),
            ("commit", {"i": 1}),
        ],
    )


@pytest.mark.parametrize("k", [14, 15])
def test_directories_a_killed_reload_made_for_files_it_never_wrote_are_not_published(
    fs_env: Env, k: int
) -> None:
    # Copy 1's reload dies after making "a/a" and "b" for files it had not written yet:
    # they are the volume's, not the copy's, and its commit has nothing to publish.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a", "a/b", "b/a/b", "b"}, "tag": 0, "large": False}),
            ("write", {"i": 2, "path": "a/a", "tag": 1, "large": False}),
            ("sdk_rm", {"chosen": "a"}),
            ("commit", {"i": 2}),
            ("sdk_put", {"paths": {"a", "a/a/a"}, "tag": 3, "large": False}),
            ("sdk_put", {"paths": {"a", "b/a/b", "b/b", "a/a"}, "tag": 2, "large": False}),
            ("sdk_put", {"paths": {"a/a/a", "a/b", "b/a", "b"}, "tag": 3, "large": False}),
            ("kill", {"i": 1, "op": "reload", "k": k, "when": "after"}),
            ("commit", {"i": 1}),
        ],
    )


def test_a_directory_the_volume_no_longer_records_goes_once_the_copy_emptied_it(
    fs_env: Env,
) -> None:
    # Copy 0 published "a" as a directory; another writer removed it and put "a/b" again;
    # copy 0 moved its "a/b" away. "a" was never a change of copy 0's since its commit,
    # and the volume now has it only through the "a/b" copy 0 deleted: it goes.
    replay(
        fs_env,
        [
            ("write", {"i": 0, "path": "a/b", "tag": 0, "large": False}),
            ("commit", {"i": 0}),
            ("sdk_rm", {"chosen": "a"}),
            ("sdk_put", {"paths": {"a/b", "b/a/b"}, "tag": 1, "large": False}),
            ("rename", {"i": 0, "chosen": "a/b", "dst": "b/a/b"}),
            ("reload", {"i": 0}),
            ("commit", {"i": 0}),
        ],
    )


def test_directories_a_copy_made_over_another_writers_file_stay_its_own(fs_env: Env) -> None:
    # Copy 2 makes "b/a/b" (so "b" too) while the volume gets a file "b/a"; its local
    # directory keeps that file out, so "b" was never the volume's as copy 2 saw it: its
    # commit publishes "b", which stays when "b/a" is removed.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a", "b/a"}, "tag": 0, "large": False}),
            ("mkdir", {"i": 2, "path": "b/a/b"}),
            ("reload", {"i": 2}),
            ("commit", {"i": 2}),
            ("sdk_rm", {"chosen": "b/a"}),
        ],
    )


def test_a_copy_that_removes_its_version_of_a_file_deletes_the_volumes_file(
    fs_env: Env,
) -> None:
    # Copy 2's reload keeps its own "b/b" over the volume's; the copy has seen the
    # volume's "b/b" from then on, so moving its own away publishes the deletion.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a", "a/b", "b/a", "b/b"}, "tag": 0, "large": False}),
            ("write", {"i": 2, "path": "b/b", "tag": 1, "large": False}),
            ("reload", {"i": 2}),
            ("rename", {"i": 2, "chosen": "b/b", "dst": "a"}),
            ("commit", {"i": 2}),
        ],
    )


def test_a_directory_made_after_a_killed_reload_is_the_copys_own(fs_env: Env) -> None:
    # Whatever point kills the reload that brings "a/a", the "a" made afterwards, before
    # the copy commits, is a change of the copy's (the reload is settled when the copy is
    # opened again, so its journal cannot claim the directory).
    points = _killed_at_every_point(
        fs_env,
        [("sdk_put", {"paths": {"a/a"}, "tag": 0, "large": False})],
        ("kill", {"i": 0, "op": "reload"}),
        [("mkdir", {"i": 0, "path": "a"}), ("commit", {"i": 0})],
    )
    assert points > 5


def test_a_reload_after_committing_behind_others_replays_their_directory_removals(
    fs_env: Env,
) -> None:
    # Copy 2 commits "a/b" after another writer removed "a" (its base stays behind), then
    # deletes "a" itself; "a" is removed again and a file "a" arrives. Replaying the log on
    # a state already holding "a/b" would keep "a" as a directory of the volume, and the
    # reload would take the copy's new empty directory "a" for it and replace it.
    replay(
        fs_env,
        [
            ("mkdir", {"i": 2, "path": "a/a"}),
            ("commit", {"i": 2}),
            ("sdk_rm", {"chosen": "a"}),
            ("mkdir", {"i": 2, "path": "a/b"}),
            ("commit", {"i": 2}),
            ("reopen", {"i": 2, "crash": False}),  # what the index keeps of it
            ("delete", {"i": 2, "chosen": "a"}),
            ("sdk_rm", {"chosen": "a"}),
            ("reload", {"i": 2}),
            ("mkdir", {"i": 2, "path": "a"}),
            ("sdk_put", {"paths": {"a", "b/b"}, "tag": 5, "large": False}),
            ("reload", {"i": 2}),
        ],
    )


def test_a_file_committed_over_a_directory_the_copy_never_had_replaces_it(
    fs_env: Env,
) -> None:
    # Copy 0's file "a" is kept over copy 1's directory "a" (the stale commit is refused,
    # the copy reloads and commits again); once "a" is removed from the volume, a reload
    # must not bring back the directory the file replaced.
    replay(
        fs_env,
        [
            ("write", {"i": 0, "path": "a", "tag": 0, "large": False}),
            ("mkdir", {"i": 1, "path": "a"}),
            ("commit", {"i": 1}),
            ("prune", {"keep": 1}),
            ("commit", {"i": 0}),
            ("sdk_rm", {"chosen": "a"}),
            ("reload", {"i": 0}),
        ],
    )


def test_a_directory_the_copy_emptied_stays_when_its_base_was_pruned(fs_env: Env) -> None:
    # Copy 0 deletes "b/a/b" and keeps the emptied "b/a" (its own change), while the volume
    # removes the same files and prunes the copy's base: the reload from the retained
    # state keeps "b/a" and "b", and the next commit publishes them.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a/a", "a/b", "b/a/b", "b/b"}, "tag": 0, "large": False}),
            ("reload", {"i": 0}),
            ("sdk_rm", {"chosen": "b/a/b"}),
            ("sdk_rm", {"chosen": "b"}),
            ("prune", {"keep": 1}),
            ("prune", {"keep": 3}),
            ("delete", {"i": 0, "chosen": "b/a/b"}),
            ("commit", {"i": 0}),
        ],
    )


def test_removing_a_directory_the_volume_only_implied_does_not_remove_it_once_made(
    fs_env: Env,
) -> None:
    # Copy 2 removes "a/a" (its file "a/a/a" was all that made it); copy 0 meanwhile
    # writes a newer "a/a/a" into a directory "a/a" it made itself. Copy 2's deletion of
    # the file is the later write, but it never removed a directory of the volume's: the
    # reload makes "a/a".
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/a/a", "a/b", "b/a/b", "b/b"}, "tag": 0, "large": False}),
            ("reload", {"i": 2}),
            ("reload", {"i": 0}),
            ("delete", {"i": 0, "chosen": "a"}),
            ("commit", {"i": 0}),
            ("rename", {"i": 0, "chosen": "b/a/b", "dst": "a/a/a"}),
            ("commit", {"i": 0}),
            ("delete", {"i": 2, "chosen": "a/a"}),
            ("reload", {"i": 2}),
        ],
    )


def test_a_directory_removed_here_stays_gone_when_only_a_file_deleted_here_implies_it(
    fs_env: Env,
) -> None:
    # Copy 2 moves "b" away while another writer replaces "b" with a file and copy 0 then
    # commits a newer "b/a" (which makes "b" a directory again). Copy 2's deletion of
    # "b/a" is the later write, and nothing else makes "b": its reload does not make it.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"b/a", "a/a", "b/b", "a/a/a"}, "tag": 0, "large": False}),
            ("reload", {"i": 2}),
            ("reload", {"i": 0}),
            ("edit", {"i": 0, "large": False, "tag": 0, "chosen": "b/a"}),
            ("sdk_rm", {"chosen": "b"}),
            ("sdk_put", {"paths": {"b/a", "b"}, "tag": 0, "large": False}),
            ("rename", {"dst": "a", "i": 2, "chosen": "b"}),
            ("commit", {"i": 0}),
            ("reload", {"i": 2}),
        ],
    )


def test_a_file_a_grouped_pod_made_and_committed_takes_a_newer_commit_on_reload(
    overlay_env: Env,
) -> None:
    # A mount group's view shows committed files group-writable (0664 for 0644); copy 1
    # made "b/a/b" 0644 itself. Its reload, within the racy window, took that mode for a
    # local change: the newer put was "kept local" and the next commit reverted it.
    replay(
        overlay_env,
        [
            ("replace_pod", {"i": 1, "reuse": False, "grouped": True}),
            ("write", {"i": 1, "path": "b/a/b", "tag": 4, "large": True}),
            ("commit", {"i": 1}),
            ("sdk_put", {"paths": {"a/b", "b/a/b"}, "tag": 3, "large": False}),
            ("reload", {"i": 1}),
            ("commit", {"i": 1}),
        ],
    )


#: Another writer removes "a" (and "a/b", which implied it); copy 1's reload of that is
#: killed after removing "a/b", right before removing the emptied "a".
_RELOAD_KILLED_BEFORE_AN_EMPTIED_DIR: list[Step] = [
    ("sdk_put", {"paths": {"a/b", "b/b"}, "tag": 0, "large": False}),
    ("replace_pod", {"i": 1, "reuse": False, "grouped": False}),
    ("sdk_rm", {"chosen": "a"}),
    ("kill", {"i": 1, "op": "reload", "k": 5, "when": "before"}),
]


def test_a_directory_a_killed_reload_emptied_goes_when_the_reload_is_settled(
    fs_env: Env,
) -> None:
    # Settled, "a" passed for a directory copy 1 emptied itself: the next reload kept it
    # and the next commit published it again, over the other writer's removal.
    replay(fs_env, [*_RELOAD_KILLED_BEFORE_AN_EMPTIED_DIR, ("reload", {"i": 1})])


def test_a_reopened_overlay_copy_settles_a_killed_reload_before_anything_else(
    overlay_env: Env,
) -> None:
    # Re-adopted (as a restarted node plugin does), the copy left the killed reload for
    # its next lock; then the emptied "a" passed for the copy's own, and the pod's final
    # commit (with its own deletion of "b/b") published it again.
    replay(
        overlay_env,
        [
            *_RELOAD_KILLED_BEFORE_AN_EMPTIED_DIR,
            ("delete", {"i": 1, "chosen": "b/b"}),
            ("replace_pod", {"i": 1, "reuse": False}),
        ],
    )


def test_a_reload_killed_midway_never_takes_a_file_the_copy_was_made_with_for_a_deletion(
    fs_env: Env,
) -> None:
    # The copy's creation left its records of the files it landed ("a/b"). Copy 0 then
    # deleted "a/b" and committed; another writer put a new "a/b"; settling copy 0's
    # killed reload read the old record as "landed, then deleted here", and the next
    # commit deleted the other writer's new file.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a/b"}, "tag": 0, "large": False}),
            ("replace_pod", {"i": 0, "reuse": False}),
            ("delete", {"i": 0, "chosen": "a/b"}),
            ("commit", {"i": 0}),
            ("sdk_put", {"paths": {"a/b"}, "tag": 2, "large": True}),
            ("kill", {"i": 0, "op": "reload", "k": 5, "when": "before"}),
            ("commit", {"i": 0}),
        ],
    )


def test_a_reload_retrying_what_a_kept_local_file_blocked_never_takes_that_directory(
    fs_env: Env,
) -> None:
    # Copy 1's edited file "a" kept out the volume's new directory "a" (with "a/b"). The
    # next reload retried "a/b" and recorded "a" as a directory it had, although the local
    # file still stood there; once the volume removed "a" and copy 1 made its own
    # directory "a" in place of its file, a reload removed that directory as the volume's.
    replay(
        fs_env,
        [
            ("sdk_put", {"paths": {"a", "b"}, "tag": 0, "large": False}),
            ("reload", {"i": 1}),
            ("edit", {"i": 1, "chosen": "a", "tag": 0, "large": False}),
            ("sdk_put", {"paths": {"a/b"}, "tag": 1, "large": False}),
            ("reload", {"i": 1}),
            ("reload", {"i": 1}),
            ("sdk_rm", {"chosen": "a"}),
            ("delete", {"i": 1, "chosen": "a"}),
            ("mkdir", {"i": 1, "path": "a"}),
            ("reload", {"i": 1}),
        ],
    )


def test_a_file_after_an_empty_one_reads_whole_through_an_image_snapshot(
    image_env: Env,
) -> None:
    # The empty "a" took no room in the blob, where "b"'s content starts: "b" read as
    # zeros through the new pod's image snapshot, and its next commit published them.
    replay(
        image_env,
        [
            ("sdk_put", {"paths": {"a", "b"}, "tag": 5, "large": False}),
            ("replace_pod", {"i": 0, "reuse": False, "grouped": False}),
            ("commit", {"i": 0}),
        ],
    )


def test_a_reload_leaves_no_directory_implied_only_by_one_this_copy_deleted(
    fs_env: Env,
) -> None:
    # Copy 2 made and committed "b/a", then deleted it without committing; copy 0's
    # commit removed "b/b". Copy 2's reload removed "b/b" and kept "b" as an empty
    # directory, though in its tree (the volume's plus its own deletion of "b/a") nothing
    # implies "b": the volume's explicit "b/a" counted as still there.
    replay(
        fs_env,
        [
            ("sdk_put", {"large": False, "paths": {"a", "a/a", "a/b", "b/b"}, "tag": 3}),
            ("replace_pod", {"grouped": False, "i": 2, "reuse": True}),
            ("mkdir", {"i": 2, "path": "b/a"}),
            ("commit", {"i": 2}),
            ("replace_pod", {"grouped": True, "i": 0, "reuse": True}),
            ("delete", {"i": 2, "chosen": "b/a"}),
            ("delete", {"i": 0, "chosen": "b/b"}),
            ("commit", {"i": 0}),
            ("reload", {"i": 2}),
        ],
    )


def test_a_copy_that_removed_a_directory_behind_another_writer_reloads_it_as_kept(
    fs_env: Env,
) -> None:
    # Copy 1 removed "b" (with the explicit "b/a") in a commit that landed after copy 0's
    # "b/a/b": in the log the removal came second and left "b" and "b/a" standing (not
    # empty then), but copy 1 had recorded them removed, and its reload replayed copy 0's
    # entry under its own commit, so "b/a" stayed implied only. When copy 1 then deleted
    # "b/a", its commit removed "b/a/b" but not the explicit "b/a", which the volume kept.
    replay(
        fs_env,
        [
            ("mkdir", {"i": 2, "path": "b/a"}),
            ("commit", {"i": 2}),
            ("prune", {"keep": 3}),
            ("reload", {"i": 1}),
            ("delete", {"i": 1, "chosen": "b"}),
            ("mkdir", {"i": 0, "path": "b/a/b"}),
            ("replace_pod", {"grouped": False, "i": 0, "reuse": False}),
            ("commit", {"i": 1}),
            ("reload", {"i": 1}),
            ("delete", {"i": 1, "chosen": "b/a"}),
            ("replace_pod", {"grouped": True, "i": 1, "reuse": False}),
        ],
    )


def test_removing_a_tree_keeps_an_explicit_directory_this_copy_never_had(fs_env: Env) -> None:
    # Copy 0 made "a/a" (explicit); copy 1's uncommitted file "a/a" kept it out. Copy 1
    # then deleted "a": its commit removed the volume's "a/a" and "a", which it never
    # had (another writer's directories lost).
    replay(
        fs_env,
        [
            ("mkdir", {"i": 0, "path": "a/a"}),
            ("write", {"i": 1, "large": False, "path": "a/a", "tag": 0}),
            ("commit", {"i": 0}),
            ("reload", {"i": 1}),
            ("delete", {"i": 1, "chosen": "a"}),
            ("replace_pod", {"grouped": False, "i": 1, "reuse": False}),
        ],
    )


def test_a_copy_reloads_the_explicit_directory_it_never_had_after_removing_its_parent(
    fs_env: Env,
) -> None:
    # As above, the copy kept: after its commit its index had forgotten that the volume
    # still has "a" and "a/a", so its reload never made them, and a later removal of "a"
    # by it named nothing.
    replay(
        fs_env,
        [
            ("mkdir", {"i": 0, "path": "a/a"}),
            ("write", {"i": 1, "large": False, "path": "a/a", "tag": 0}),
            ("commit", {"i": 0}),
            ("reload", {"i": 1}),
            ("delete", {"i": 1, "chosen": "a"}),
            ("commit", {"i": 1}),
            ("reload", {"i": 1}),
            ("delete", {"i": 1, "chosen": "a"}),
            ("commit", {"i": 1}),
            ("reload", {"i": 2}),
        ],
    )


def test_a_commit_after_a_cut_short_reload_keeps_the_directories_it_knows(
    fs_env: Env,
) -> None:
    # Copy 1's reload, killed, left "b" and "b/a" as directories it knows as the volume's
    # though nothing implies them; its commit publishes them not, and keeps them. The
    # model's own check of a commit (its ops rebuild the copy's tree) left those out and
    # stopped explorations here; kvol was right.
    replay(
        fs_env,
        [
            ("write", {"i": 1, "large": False, "path": "b/a/b", "tag": 0}),
            ("rename", {"dst": "a", "i": 1, "chosen": "b/a/b"}),
            ("sdk_put", {"large": True, "paths": {"a/a", "b/b", "a", "b/a/b"}, "tag": 2}),
            ("kill", {"i": 1, "k": 6, "keep": 2, "op": "reload", "when": "before"}),
            ("commit", {"i": 1}),
            ("reload", {"i": 1}),
            ("reload", {"i": 0}),
            ("commit", {"i": 1}),
        ],
    )


def test_a_reload_removes_every_directory_a_local_deletion_left_implied_by_nothing(
    fs_env: Env,
) -> None:
    # Copy 1 committed "a/a/a" (with "a" and "a/a" explicit) and deleted it without
    # committing; meanwhile the volume dropped the tree and copy 2 wrote "a/a/a" again
    # (implied directories only). Copy 1's reload kept its deletion and removed the empty
    # "a/a", but not "a": it held "a/a" when emptiness was looked at.
    replay(
        fs_env,
        [
            ("write", {"i": 1, "large": True, "path": "a/a/a", "tag": 5}),
            ("commit", {"i": 1}),
            ("reload", {"i": 2}),
            ("sdk_rm", {"chosen": "a"}),
            ("edit", {"i": 2, "large": True, "tag": 2, "chosen": "a/a/a"}),
            ("commit", {"i": 2}),
            ("delete", {"i": 1, "chosen": "a/a/a"}),
            ("reload", {"i": 1}),
        ],
    )


def test_a_commit_removes_an_explicit_directory_it_moved_away_over_a_file_it_never_had(
    fs_env: Env,
) -> None:
    # Copy 2's local file "a/a" kept the volume's "a/a/a" out; copy 2 then moved its whole
    # "a" away and, after another writer removed "a/a/a", committed. Its commit must remove
    # the explicit "a" it saw and removed: it published nothing for "a" because "a" held a
    # file it never had, and the volume kept an empty "a".
    replay(
        fs_env,
        [
            ("mkdir", {"i": 0, "path": "a/b"}),
            ("commit", {"i": 0}),
            ("write", {"i": 2, "path": "a/a", "tag": 0, "large": False}),
            ("sdk_put", {"paths": {"a/a/a"}, "tag": 0, "large": False}),
            ("reload", {"i": 2}),
            ("rename", {"i": 2, "chosen": "a", "dst": "b/b"}),
            ("sdk_rm", {"chosen": "a/a"}),
            ("commit", {"i": 2}),
        ],
    )


def test_a_commit_removes_the_explicit_directories_of_a_tree_holding_a_file_it_never_had(
    fs_env: Env,
) -> None:
    # Copy 2's uncommitted directory "b/a/b" kept out copy 0's file "b/a/b"; copy 2 then
    # removed "b". Its commit must publish the removal of the explicit "b" and "b/a" it
    # saw (a no-op while "b/a/b" is there); it published nothing, so a later removal of
    # "b/a/b" would have left both behind. (Long runs reported this after a prune racing
    # a commit, which had nothing to do with it.)
    replay(
        fs_env,
        [
            ("write", {"i": 0, "path": "b/a/b", "tag": 5, "large": False}),
            ("commit", {"i": 0}),
            ("mkdir", {"i": 2, "path": "b/a/b"}),
            ("reload", {"i": 2}),
            ("delete", {"i": 2, "chosen": "b"}),
            ("commit", {"i": 2}),
        ],
    )


# Copy 0's local file "a" kept the volume's "a/a" and "a/b" out. Copy 0 then moved "b" to
# "a/b" (its file "a" became a directory), reloaded, and moved "a/b" away. The reload
# looked again only at kept-out files missing here, so "a/b" stayed recorded as one the
# copy never had, and the commit left the volume's "a/b" in place although the copy had
# it (its own file over the volume's) and moved it away.
_KEPT_OUT_THEN_REPLACED: list[Step] = [
    ("write", {"i": 0, "large": False, "path": "a", "tag": 0}),
    ("sdk_put", {"large": False, "paths": {"a/a", "a/b", "b"}, "tag": 3}),
    ("reload", {"i": 0}),
    ("rename", {"dst": "a/b", "i": 0, "chosen": "b"}),
    ("reload", {"i": 0}),
    ("rename", {"dst": "a/a/a", "i": 0, "chosen": "a/b"}),
    ("commit", {"i": 0}),
]


def test_a_file_kept_out_then_replaced_by_a_local_one_is_deleted_by_the_copys_commit(
    fs_env: Env,
) -> None:
    replay(fs_env, _KEPT_OUT_THEN_REPLACED)


def test_the_same_on_an_overlay_copy(overlay_env: Env) -> None:
    replay(overlay_env, _KEPT_OUT_THEN_REPLACED)


# Copy 1 moved "b" (with the volume's file "b/a/b") away and wrote a file "b/a"; copy 2
# made "b/a/b" a directory. Copy 1's reload kept its file "b/a", so "b/a/b" was not made
# here, and its record of the file "b/a/b" stayed in the index although the volume no
# longer had it. Pruned past that file's commit, the pack holding it was collected, and
# copy 1's commit of the moved file reused that record's pack: the volume named content
# that was gone (a data loss: the file published could no longer be read).
_RECORD_KEPT_UNDER_A_LOCAL_FILE: list[Step] = [
    ("sdk_put", {"large": False, "paths": {"b/a/b"}, "tag": 1}),
    ("reload", {"i": 1}),
    ("mkdir", {"i": 2, "path": "b/a/b"}),
    ("rename", {"dst": "a/a/a", "i": 1, "chosen": "b"}),
    ("commit", {"i": 2}),
    ("write", {"i": 1, "large": False, "path": "b/a", "tag": 2}),
    ("prune", {"keep": 1}),
    ("prune", {"keep": 1}),
    ("replace_pod", {"grouped": False, "i": 1, "reuse": False}),
]


def test_a_reload_forgets_a_file_the_volume_made_a_directory_under_a_kept_local_file(
    fs_env: Env,
) -> None:
    replay(fs_env, _RECORD_KEPT_UNDER_A_LOCAL_FILE)


def test_the_same_with_an_overlay_copy(overlay_env: Env) -> None:
    replay(overlay_env, _RECORD_KEPT_UNDER_A_LOCAL_FILE)


def test_a_reload_removes_a_directory_left_empty_by_one_the_volume_dropped(
    fs_env: Env,
) -> None:
    # Copy 0 moved its "a" (holding the explicit "a/a" and "a/b") away and made "a/a"
    # again; another writer removed "a/a". Copy 0's reload removed the unchanged "a/a" but
    # kept "a", which nothing implied any more (the volume had it only through "a/b", which
    # this copy had moved away): its commit then published it.
    replay(
        fs_env,
        [
            ("sdk_put", {"large": False, "paths": {"a"}, "tag": 0}),
            ("prune", {"keep": 3}),
            ("sdk_put", {"large": False, "paths": {"a/b", "b/a/b", "a/a"}, "tag": 0}),
            ("mkdir", {"i": 2, "path": "a/a"}),
            ("mkdir", {"i": 0, "path": "a/b"}),
            ("replace_pod", {"grouped": True, "i": 2, "reuse": True}),
            ("mkdir", {"i": 1, "path": "b/a/b"}),
            ("commit", {"i": 0}),
            ("replace_pod", {"grouped": True, "i": 1, "reuse": False}),
            ("prune", {"keep": 1}),
            ("sdk_rm", {"chosen": "a/a"}),
            ("rename", {"dst": "b", "i": 0, "chosen": "a"}),
            ("mkdir", {"i": 0, "path": "a/a"}),
            ("replace_pod", {"grouped": True, "i": 0, "reuse": False}),
        ],
    )


# Copy 0 made "b/a/b" a directory and another copy's commit published it; copy 0 then
# removed "b" while copy 1 (whose local file "b/a/b" hid the volume's explicit directory)
# deleted that file. Copy 0's commit removed "b", "b/a" and "b/a/b" as it saw them; copy
# 1's next commit had "b" and "b/a" here only for the directory it never had, which no
# longer made them the volume's: it had to publish them as made, and published neither.
_DIRS_HELD_ONLY_BY_A_KEPT_OUT_DIRECTORY: list[Step] = [
    ("sdk_put", {"large": False, "paths": {"a"}, "tag": 0}),
    ("prune", {"keep": 3}),
    ("sdk_put", {"large": False, "paths": {"b/a/b", "a/b", "a/a"}, "tag": 0}),
    ("mkdir", {"i": 2, "path": "a/a"}),
    ("replace_pod", {"grouped": False, "i": 0, "reuse": False}),
    ("commit", {"i": 2}),
    ("mkdir", {"i": 0, "path": "b/a/b"}),
    ("replace_pod", {"grouped": False, "i": 0, "reuse": True}),
    ("edit", {"i": 2, "large": False, "tag": 0, "chosen": "b/a/b"}),
    ("prune", {"keep": 1}),
    ("commit", {"i": 2}),
    ("reload", {"i": 1}),
    ("reload", {"i": 0}),
    ("delete", {"i": 0, "chosen": "b"}),
    ("delete", {"i": 1, "chosen": "b/a/b"}),
    ("replace_pod", {"grouped": False, "i": 0, "reuse": True}),
    ("reload", {"i": 1}),
]


def test_a_commit_makes_the_directories_only_a_kept_out_directory_held(fs_env: Env) -> None:
    replay(fs_env, _DIRS_HELD_ONLY_BY_A_KEPT_OUT_DIRECTORY)


def test_the_same_over_an_overlay_copy(overlay_env: Env) -> None:
    replay(overlay_env, _DIRS_HELD_ONLY_BY_A_KEPT_OUT_DIRECTORY)


def test_a_directory_a_killed_reload_made_can_be_moved_away_and_committed(
    overlay_env: Env,
) -> None:
    # Copy 2's reload, killed, made "b" (the volume's through "b/b") and no file in it;
    # copy 2 then moved "b" to "a" and committed. The model still counted "b" among the
    # directories the copy knew though nothing implied them, and its own check failed.
    replay(
        overlay_env,
        [
            ("write", {"i": 0, "large": False, "path": "b", "tag": 0}),
            ("commit", {"i": 0}),
            ("sdk_put", {"large": True, "paths": {"b/b", "a"}, "tag": 0}),
            ("kill", {"i": 2, "k": 21, "keep": 2, "op": "reload", "when": "after"}),
            ("rename", {"dst": "a", "i": 2, "chosen": "b"}),
            ("commit", {"i": 2}),
        ],
    )


# Copy 1 moved its only file of "a/a" away (to "b/a/b"), and the volume deleted that
# file too; a reload of copy 1 was killed. Settling it forgot the file (deleted on both
# sides) but kept "a/a" on record as the volume's, so the copy's commit did not publish
# the emptied "a/a" that it kept, as it does after a reload that finished.
_EMPTIED_HERE_UNDER_A_KILLED_RELOAD: list[Step] = [
    ("sdk_put", {"large": False, "paths": {"a/b", "b", "a/a/a"}, "tag": 5}),
    ("reload", {"i": 1}),
    ("sdk_rm", {"chosen": "a/a/a"}),
    ("sdk_put", {"large": True, "paths": {"a/b", "b/a/b", "a"}, "tag": 0}),
    ("rename", {"dst": "b/a/b", "i": 1, "chosen": "a/a/a"}),
    ("kill", {"i": 1, "k": 11, "keep": 1, "op": "reload", "when": "before"}),
    ("commit", {"i": 1}),
]


def test_a_settled_reload_leaves_a_directory_emptied_here_to_the_next_commit(
    fs_env: Env,
) -> None:
    replay(fs_env, _EMPTIED_HERE_UNDER_A_KILLED_RELOAD)


def test_the_same_for_a_killed_reload_of_an_overlay_copy(overlay_env: Env) -> None:
    replay(overlay_env, _EMPTIED_HERE_UNDER_A_KILLED_RELOAD)


def test_a_file_moved_in_a_grouped_pod_keeps_its_mode(overlay_env: Env) -> None:
    # Copy 0, over a mount group's view, moved the file "b/a/a" (committed 0644, shown
    # 0664) to "a/a/a" and committed: it published 0664, the view's mode. Copy 2's own
    # "a/a/a", the same bytes at 0644, then read as a change of mode and stayed when the
    # volume deleted the file; as a move keeps its mode, it is the volume's file.
    replay(
        overlay_env,
        [
            ("write", {"i": 2, "large": False, "path": "a/a/a", "tag": 2}),
            ("write", {"i": 0, "large": True, "path": "a/a/a", "tag": 5}),
            ("write", {"i": 1, "large": False, "path": "a/a/a", "tag": 3}),
            ("replace_pod", {"grouped": False, "i": 0, "reuse": True}),
            ("rename", {"dst": "b/b", "i": 0, "chosen": "a"}),
            ("edit", {"i": 1, "large": False, "tag": 2, "chosen": "b/a/a"}),
            ("replace_pod", {"grouped": False, "i": 1, "reuse": True}),
            ("replace_pod", {"grouped": True, "i": 0, "reuse": True}),
            ("rename", {"dst": "a", "i": 0, "chosen": "b"}),
            ("kill", {"i": 0, "k": 5, "keep": 3, "op": "race", "when": "after"}),
            ("reload", {"i": 2}),
            ("sdk_rm", {"chosen": "a"}),
            ("reload", {"i": 2}),
        ],
    )


_A_DELETED_FILE_OF_ITS_OWN = [
    ("write", {"i": 1, "large": True, "path": "b/a", "tag": 3}),
    ("write", {"i": 2, "large": True, "path": "b/a/b", "tag": 1}),
    ("kill", {"i": 1, "k": 12, "keep": 3, "op": "race", "when": "after"}),
    ("kill", {"i": 2, "k": 37, "keep": 4, "op": "commit", "when": "before"}),
    ("write", {"i": 1, "large": True, "path": "b/a", "tag": 3}),
    ("reload", {"i": 1}),
    ("write", {"i": 0, "large": False, "path": "b/a", "tag": 3}),
    ("write", {"i": 1, "large": False, "path": "b", "tag": 0}),
    ("kill", {"i": 0, "k": 11, "keep": 1, "op": "race", "when": "before"}),
    ("write", {"i": 1, "large": False, "path": "b/b", "tag": 4}),
    ("reload", {"i": 1}),
    ("commit", {"i": 1}),
]


def test_a_reload_brings_the_volumes_file_where_the_copy_deleted_one_it_never_published(
    fs_env: Env,
) -> None:
    # Copy 1's own file "b/a" stood in the way of the volume's directory "b/a" (a reload
    # kept it: a new file, no record of the volume's). Copy 1 then deleted it, and copy 0
    # published a file "b/a". Copy 1's reload took the deletion for one of a file of the
    # volume's: it kept the volume's file out and recorded it, so its next commit would
    # have deleted copy 0's file, which it never saw (a long plain model run).
    replay(fs_env, _A_DELETED_FILE_OF_ITS_OWN)


def test_the_same_in_an_overlay_copy(overlay_env: Env) -> None:
    replay(overlay_env, _A_DELETED_FILE_OF_ITS_OWN)


_A_KILLED_RELOAD_THEN_A_KILLED_COMMIT = [
    ("mkdir", {"i": 0, "path": "b/a/b"}),
    ("replace_pod", {"grouped": False, "i": 0, "reuse": True}),
    ("sdk_put", {"large": False, "paths": {"b/b", "b/a/b", "a"}, "tag": 0}),
    ("mkdir", {"i": 1, "path": "a/b"}),
    ("commit", {"i": 1}),
    ("sdk_rm", {"chosen": "b/a"}),
    ("sdk_put", {"large": False, "paths": {"b/a", "b/b", "a/b", "a"}, "tag": 1}),
    ("prune", {"keep": 3}),
    ("kill", {"i": 0, "k": 12, "keep": 2, "op": "reload", "when": "after"}),
    ("kill", {"i": 0, "k": 18, "keep": 1, "op": "commit", "when": "after"}),
]


def test_a_settled_reload_forgets_a_directory_it_removed_for_a_file_it_never_wrote(
    fs_env: Env,
) -> None:
    # The volume replaced copy 0's directory "b/a" by a file. Copy 0's reload removed the
    # directory and was killed before writing the file; settling it kept "b/a" on record
    # as a directory, which then read as one the copy had removed: its next commit
    # published that removal (here refused as stale, the volume having been pruned past
    # its base; a long plain model run).
    replay(fs_env, _A_KILLED_RELOAD_THEN_A_KILLED_COMMIT)


def test_the_same_when_an_overlay_copy_settles_it(overlay_env: Env) -> None:
    replay(overlay_env, _A_KILLED_RELOAD_THEN_A_KILLED_COMMIT)
