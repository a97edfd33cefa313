"""Locating the real test dependencies built by hack/ scripts.

A test that needs a missing tool fails (never skips) with the script that provides it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("KVOL_CACHE", Path.home() / ".cache" / "kvol"))
BIN = CACHE / "bin"
REPO = Path(__file__).resolve().parent.parent


def tool(name: str, script: str) -> str:
    """Absolute path of tool ``name``, built by ``hack/<script>``; fails the test if absent."""
    candidate = BIN / name
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found and os.environ.get("KVOL_ALLOW_SYSTEM_TOOLS") == "1":
        return found
    pytest.fail(
        f"{name} is missing: run hack/{script} (it builds and caches it in {BIN})", pytrace=False
    )


def run_kubectl(
    command: list[str], args: tuple[str, ...], *, input: str | None, check: bool, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run kubectl (``command``: the binary and its global flags) with ``args``; with
    ``check``, a failure fails the test with kubectl's error."""
    result = subprocess.run(
        [*command, *args], input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )
    return result


def stop_process(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], sig: signal.Signals
) -> None:
    """Send ``sig`` to a process still running, wait for it, and kill it after 30 s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: Ports handed out below the kernel's ephemeral range (bind to port 0 and the source
#: ports of outgoing connections come from that range).
_PORTS_BELOW_EPHEMERAL = 10_000


def free_port() -> int:
    """A loopback port free now, for a server started next. Not one the kernel picks: a
    port bind(0) returned and released can be taken again, before the server binds it, as
    the source port of any connection the other test tiers open meanwhile."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = secrets.randbelow(_PORTS_BELOW_EPHEMERAL) + max(1024, low - _PORTS_BELOW_EPHEMERAL)
        if port >= low:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")
