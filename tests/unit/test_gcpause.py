"""The collector's pause (kvol/gcpause.py): nested and overlapping pauses resume it
only when the last ends, and never turn it on if it was off."""

from __future__ import annotations

import gc
import threading

from kvol import gcpause


def test_nested_pauses_resume_collection_when_the_last_ends() -> None:
    assert gc.isenabled()
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_pauses_of_two_threads_overlapping_out_of_order() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with gcpause.paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with gcpause.paused():
            second_in.set()
            first_out.wait(10)
            seen.append(gc.isenabled())  # the first ended first: still paused for this one

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [False]
    assert gc.isenabled()


def test_a_pause_never_turns_on_a_collector_that_was_off() -> None:
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
