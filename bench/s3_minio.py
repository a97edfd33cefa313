"""One MinIO server on loopback shared by the S3 scenarios of a run, and rclone beside it.

The server is built by hack/install-minio.sh; rclone is the Debian package. Both talk to
the same server with the same credentials, so kvol and rclone are measured on one setup.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.minio import ACCESS_KEY, REGION, SECRET_KEY, MinioServer, free_port

#: The rclone remote name the scenarios use (configured by environment, no config file).
REMOTE = "kvolbench"

_server: MinioServer | None = None


def minio_binary() -> str:
    cache = Path(os.environ.get("KVOL_CACHE", Path.home() / ".cache" / "kvol"))
    path = cache / "bin" / "minio"
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"S3 scenarios need MinIO: run hack/install-minio.sh (looked in {path})")
    return str(path)


def server() -> MinioServer:
    """The run's MinIO, started on first use and stopped when the process exits."""
    global _server
    if _server is None:
        directory = Path(tempfile.mkdtemp(prefix="kvol-bench-minio-"))
        (directory / "data").mkdir()
        started = MinioServer(minio_binary(), directory / "data", free_port(), directory / "log")
        started.start()

        def stop() -> None:
            started.stop()
            shutil.rmtree(directory, ignore_errors=True)

        atexit.register(stop)
        _server = started
    return _server


def kvol_env() -> None:
    """Credentials for kvol's S3 store in this process (the URL carries none)."""
    os.environ.update(server().env)


def rclone_env() -> dict[str, str]:
    """rclone configured for the server by environment, ignoring any AWS or rclone
    configuration of the machine it runs on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    prefix = f"RCLONE_CONFIG_{REMOTE.upper()}_"
    env |= {
        "RCLONE_CONFIG": os.devnull,
        prefix + "TYPE": "s3",
        prefix + "PROVIDER": "Minio",
        prefix + "ENDPOINT": server().endpoint,
        prefix + "REGION": REGION,
        prefix + "ACCESS_KEY_ID": ACCESS_KEY,
        prefix + "SECRET_ACCESS_KEY": SECRET_KEY,
    }
    return env


def rclone(*args: str) -> float:
    """Run ``rclone ARGS`` against the server; its wall-clock seconds."""
    binary = shutil.which("rclone")
    if binary is None:
        raise RuntimeError("the rclone baseline needs rclone installed (Debian package rclone)")
    cmd: Sequence[str] = [binary, *args]
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, env=rclone_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"rclone {' '.join(args)} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return elapsed


def rclone_version() -> str:
    binary = shutil.which("rclone")
    if binary is None:
        return "missing"
    out = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"
