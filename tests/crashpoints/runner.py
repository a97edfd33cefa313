"""The processes of the crash harness.

A *zygote* (one per parallel job) imports kvol once and then, for each crash point it is
asked to run, forks a *point process*, which

1. enters a mount namespace of its own (CSI scenarios), so every mount a point makes
   disappears with it, whatever happened;
2. forks the *operation* child: it builds the scenario's volume, then runs the operation
   with every event counted, and (for a kill point) sends itself SIGKILL at that event;
3. forks the *oracle* child, a fresh process that judges what the kill left;
4. writes what happened to ``reply.json`` in the point's directory.

Forking from an interpreter that already imported everything makes a point cost what its
operation costs, not an interpreter start; the zygote never starts a thread, so a fork
copies no lock held by another thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import select
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

OP_TIMEOUT = 120.0
ORACLE_TIMEOUT = 240.0
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def preload() -> None:
    """Import everything a point uses, without starting any thread."""
    for module in (
        "kvol.content",
        "kvol.csi.node",
        "kvol.csi.proto.csi_pb2",
        "kvol.csi.resolver",
        "kvol.overlay",
        "kvol.store.s3",
        "kvol.volume",
        "tests.crashpoints.instrument",
        "tests.crashpoints.scenarios",
    ):
        importlib.import_module(module)

    if threading.active_count() != 1:
        raise RuntimeError(f"the zygote must have one thread, has {threading.enumerate()}")


def serve() -> None:
    """The zygote: one JSON request per line on stdin, one JSON reply per line on stdout."""
    preload()
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = run_point(request)
        except Exception:
            reply = {"error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def run_point(request: dict[str, Any]) -> dict[str, Any]:
    d = Path(request["dir"])
    if d.exists():
        shutil.rmtree(d)  # a previous run's: every point starts from nothing
    d.mkdir(parents=True)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            # Never the zygote's pipes: a child must not read requests or write replies.
            _detach(d / "point.log")
            _point_process(request, d)
            code = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                (d / "point-error.txt").write_text(traceback.format_exc())
        finally:
            os._exit(code)
    status = _wait(pid, OP_TIMEOUT + ORACLE_TIMEOUT + 60)
    reply_path = d / "reply.json"
    if reply_path.exists():
        reply: dict[str, Any] = json.loads(reply_path.read_text())
    else:
        error = d / "point-error.txt"
        reply = {"error": error.read_text() if error.exists() else f"point process ended: {status}"}
    reply["seconds"] = time.monotonic() - started
    return reply


def _wait(pid: int, timeout: float) -> str:
    """Wait for a child; SIGKILL it after ``timeout``. Returns how it ended."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def _private_mounts() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed (needs root)")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making / private failed")


def _fork(fn: Any, *args: Any) -> int:
    pid = os.fork()
    if pid == 0:
        code = 71
        try:
            code = fn(*args)
        except BaseException:
            with contextlib.suppress(BaseException):
                sys.stderr.write(traceback.format_exc())
                sys.stderr.flush()
        finally:
            os._exit(code)
    return pid


def _detach(log: Path) -> None:
    """stdin from /dev/null, stdout and stderr to ``log``."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _logs_to(log)


def _logs_to(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = sys.stderr = open(1, "w", closefd=False)  # noqa: SIM115 (for the process's life)


def _point_process(request: dict[str, Any], d: Path) -> None:
    from kvol.mounting import mounts_under, umount

    if request.get("mounts"):
        _private_mounts()
    op_status = _wait(_fork(_op_child, request, d), OP_TIMEOUT)
    killed_path = d / "killed.txt"
    killed = killed_path.read_text().strip() if killed_path.exists() else None
    events_path = d / "events.json"
    events = json.loads(events_path.read_text()) if events_path.exists() else None
    op_error_path = d / "op-error.txt"
    op_error = op_error_path.read_text() if op_error_path.exists() else None
    oracle_status = _wait(_fork(_oracle_child, request, d), ORACLE_TIMEOUT)
    oracle_path = d / "oracle.json"
    if oracle_path.exists():
        oracle = json.loads(oracle_path.read_text())
    else:
        log = d / "oracle.log"
        oracle = {
            "outcome": "?",
            "problems": [
                f"the oracle process ended ({oracle_status}) without a verdict: "
                + (log.read_text()[-2000:] if log.exists() else "")
            ],
        }
    if request.get("mounts"):
        for point in mounts_under(d):
            with contextlib.suppress(OSError):
                umount(point, 2)  # MNT_DETACH; the namespace goes with this process anyway
    reply = {
        "op_status": op_status,
        "killed": killed,
        "events": events,
        "op_error": op_error,
        "oracle": oracle,
    }
    (d / "reply.json").write_text(json.dumps(reply))


def _ctx(request: dict[str, Any], d: Path) -> Any:
    from tests.crashpoints.scenarios import Ctx

    return Ctx(d, request["store"], bool(request.get("long")), request.get("params", {}))


def _op_child(request: dict[str, Any], d: Path) -> int:
    from tests.crashpoints import instrument
    from tests.crashpoints.scenarios import SCENARIOS

    _logs_to(d / "op.log")
    ctx = _ctx(request, d)
    scenario = SCENARIOS[request["scenario"]]
    prepared = scenario.setup(ctx)
    kill = request.get("kill")
    report_fd = os.open(d / "killed.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    rec = instrument.install(
        instrument.KillAt(kill[0], kill[1], kill[2]) if kill else None, report_fd, str(d)
    )
    code = 0
    rec.active = True
    try:
        scenario.op(ctx, prepared)
    except BaseException:
        rec.active = False
        (d / "op-error.txt").write_text(traceback.format_exc())
        code = 1
    rec.active = False
    (d / "events.json").write_text(json.dumps(instrument.events_as_json(rec)))
    return code


def _oracle_child(request: dict[str, Any], d: Path) -> int:
    from tests.crashpoints.scenarios import SCENARIOS, Checker

    _logs_to(d / "oracle.log")
    ctx = _ctx(request, d)
    check = Checker()
    try:
        SCENARIOS[request["scenario"]].oracle(ctx, check)
    except Exception:
        check.problems.append(f"oracle raised: {traceback.format_exc()[-1500:]}")
    (d / "oracle.json").write_text(
        json.dumps({"outcome": check.outcome, "problems": check.problems})
    )
    return 0


if __name__ == "__main__":
    serve()
