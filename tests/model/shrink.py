"""Turn a divergence the model exploration reported into a short replay.

    .venv/bin/python -m tests.model.shrink LOG [TEXT]   (from the repository root)

LOG holds pytest's output of a failed exploration. The first "Failing test case" listing
in it becomes ``replay()`` steps (see tests/model/machine.py); steps are then dropped, one
at a time, as long as the replay still fails with TEXT in its message (by default, the
first line of the first divergence in LOG). Prints the steps left, ready to paste into
tests/model/test_regressions.py. Runs on a filesystem store, with the layout of the
listing's machine (plain copies, or overlay ones).
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from kvol import publish_turns
from kvol.store import FilesystemStore, Store
from tests.model.machine import Env, replay

Step = tuple[str, dict[str, Any]]

#: Rules that draw a path from the copy's tree (``chosen`` in a replay).
DRAWING = {"rename", "delete", "edit", "sdk_rm", "rewrite_same"}
#: Rules hypothesis lists that only check.
CHECKS = {
    "bases_match",
    "copies_match",
    "head_matches",
    "records_are_the_volumes",
    "store_whole",
    "teardown",
}
#: Rules that are another name for the same step.
SAME_AS = {"commit_another": "commit", "reload_another": "reload"}


def _call_arguments(text: str) -> dict[str, Any]:
    """``i=0, path='a'`` as a dict, literals only."""
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call)
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}


def steps_of(log: str) -> list[Step]:
    """The steps of the first "Failing test case" listing in ``log``."""
    steps: list[Step] = []
    drawn: Any = None
    started = False
    for raw in log.splitlines():
        line = raw.strip().lstrip("E|").strip()
        # Only the listing's first line: a traceback's source lines may start so too.
        if line.startswith("state = VolumeMachine_"):
            if started:
                break
            started = True
            continue
        if not started:
            continue
        if found := re.match(r"Draw \d+ \(\w+\): (.*)$", line):
            drawn = ast.literal_eval(found.group(1))
            continue
        found = re.match(r"state\.(\w+)\((.*)\)$", line)
        if not found or found.group(1) in CHECKS:
            continue
        name = SAME_AS.get(found.group(1), found.group(1))
        arguments = _call_arguments(found.group(2).replace("data=data(...)", "").strip(", "))
        if name in DRAWING:
            if drawn is None:
                continue  # nothing to draw from: the rule did nothing
            arguments["chosen"] = drawn
        drawn = None
        steps.append((name, arguments))
    return steps


#: A note's argument names that are the rule's under another name.
_NOTE_NAMES = {"copy": "i", "keep_last": "keep"}
#: What a note's unnamed path is, by rule (the rest draw it as ``chosen``).
_NOTE_PATH = {"write": "path", "mkdir": "path"}


def steps_of_notes(log: str) -> list[Step]:
    """The steps of the first "steps so far:" block in ``log`` (the machine's own notes,
    which a divergence carries even when hypothesis could not replay its example)."""
    lines = log.splitlines()
    try:
        start = next(n for n, raw in enumerate(lines) if raw.strip(" E|") == "steps so far:")
    except StopIteration:
        raise SystemExit("no listing and no steps in the log") from None
    steps: list[Step] = []
    for raw in lines[start + 1 :]:
        line = raw.strip(" E|")
        if line.startswith("->"):
            continue
        found = re.match(r"(\w+)\((.*)\)$", line)
        if not found:
            break
        name, text = found.groups()
        text = re.sub(r"('[^']*') -> ('[^']*')", r"\1, dst=\2", text)
        text = re.sub(r"(^|, )(before|after)$", r"\1when='\2'", text)
        text = re.sub(r"^(copy=\d+), (.+)$", r"\2, \1", text)  # positional ones first
        call = ast.parse(f"f({text})", mode="eval").body
        assert isinstance(call, ast.Call)
        arguments = {
            _NOTE_NAMES.get(kw.arg, kw.arg): ast.literal_eval(kw.value)
            for kw in call.keywords
            if kw.arg
        }
        positional = [ast.literal_eval(a) for a in call.args]
        if name == "sdk_put":
            arguments["paths"] = set(positional.pop())
        if positional:
            arguments[_NOTE_PATH.get(name, "chosen")] = positional.pop()
        if name in ("kill_commit", "kill_reload"):
            name, arguments["op"] = "kill", name.removeprefix("kill_")
        if name == "commit" and steps and steps[-1] == (name, arguments):
            continue  # a commit refused, then retried after a reload: one step
        steps.append((name, arguments))
    return steps


def first_divergence(log: str) -> str:
    for line in log.splitlines():
        if found := re.search(r"(Divergence|AssertionError): (.*)$", line):
            return found.group(2).strip()
    raise SystemExit("no divergence in the log")


def layout_of(log: str) -> str:
    """The layout of the first listing's machine (``state = VolumeMachine_<kind>()``)."""
    found = re.search(r"state = VolumeMachine_(\w+)\(\)", log)
    if found is None:  # no listing: the failing test's name
        found = re.search(r"_ (test_\w+) _", log)
    return "overlay" if found and "overlay" in found.group(1) else "plain"


def _filesystem_env(base: Path, layout: str) -> Env:
    # As tests/model/conftest.py: overlay copies have a durable store, as on a node.
    durable = layout == "overlay"

    def new_store(directory: Path) -> tuple[Store, dict[str, Any]]:
        root = directory / "store"
        spec = {"kind": "fs", "root": str(root), "durable": durable}
        return FilesystemStore(root, durable=durable), spec

    kind = "fs" if layout == "plain" else f"fs_{layout}"
    return Env(kind, base, new_store, can_age=True, layout=layout)


def fails(env: Env, steps: list[Step], text: str) -> bool:
    """Does replaying ``steps`` fail with ``text`` (in the error or what it followed)?"""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            replay(env, steps)
    except Exception as exc:  # any failure is looked at
        error: BaseException | None = exc
        while error is not None:
            if text in str(error).split("steps so far")[0]:
                return True
            error = error.__context__
    return False


def shrink(env: Env, steps: list[Step], text: str) -> list[Step]:
    """Drop steps, last first, while the failure stays; again until none can go."""
    if not fails(env, steps, text):
        raise SystemExit("the listing does not fail when replayed (timing, or another store?)")
    dropped = True
    while dropped:
        dropped = False
        for i in reversed(range(len(steps))):
            trial = steps[:i] + steps[i + 1 :]
            if fails(env, trial, text):
                steps, dropped = trial, True
    return steps


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    log = Path(argv[0]).read_text()
    text = argv[1] if len(argv) > 1 else first_divergence(log)
    steps = steps_of(log) if "state = VolumeMachine_" in log else steps_of_notes(log)
    publish_turns.lock_dir()  # before any replay (see tests/model/conftest.py)
    with tempfile.TemporaryDirectory(prefix="kvol-shrink-") as base:
        env = _filesystem_env(Path(base), layout_of(log))
        for step in shrink(env, steps, text):
            print(f"            {step!r},")


if __name__ == "__main__":
    main(sys.argv[1:])
