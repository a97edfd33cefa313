"""A copy whose base lags behind other writers does not re-probe taken log positions."""

from __future__ import annotations

from collections.abc import Callable

from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import CountingStore, write


def test_commits_after_a_lost_position_start_past_it(
    store: CountingStore, make_wc: Callable[[str], WorkingCopy]
) -> None:
    a, b = make_wc("a"), make_wc("b")
    for i in range(5):
        write(b.root, f"b{i}", str(i))
        b.commit()
    write(a.root, "a0", "x")
    first = a.commit()
    assert first.seq == 6  # lost positions 1-5 to b, once
    store.reset()
    for i in range(1, 4):
        write(a.root, f"a{i}", "y")
        assert a.commit().seq == 6 + i
    # One conditional write per commit: nothing taken is tried again.
    assert store.count("put_if_absent", a.repo.keys.log_prefix) == 3
