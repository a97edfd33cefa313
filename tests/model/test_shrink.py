"""The shrinker reads the failing example hypothesis listed, not a traceback around it."""

from __future__ import annotations

from tests.model.shrink import steps_of

LOG = """
    |   File "machine.py", line 52, in head_matches
    |     state = Repo(repo.store, repo.volume_id).state(seq)
    | kvol.errors.NotFound: volume v has no commit 3 (head is 2)
    | Failing test case: <state machine>
    | state = VolumeMachine_fs()
    | state.bases_match()
    | state.write(i=0, large=False, path='b/a/b', tag=5)
    | state.commit_another(i=0)
    | Draw 1 (path): 'b'
    | state.delete(data=data(...), i=2)
    | state.delete(data=data(...), i=1)
    | state.teardown()
"""


def test_the_steps_are_the_listings_and_a_traceback_line_does_not_start_it() -> None:
    assert steps_of(LOG) == [
        ("write", {"i": 0, "large": False, "path": "b/a/b", "tag": 5}),
        ("commit", {"i": 0}),
        ("delete", {"i": 2, "chosen": "b"}),
    ]
