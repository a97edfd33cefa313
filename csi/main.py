"""``kvol-csi``: the kvol CSI node plugin."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from prometheus_client import start_http_server

from kvol import metrics
from kvol.csi import registration
from kvol.csi.events import EventReporter
from kvol.csi.identity import DRIVER_NAME, IdentityService
from kvol.csi.node import NodeConfig, NodeService
from kvol.csi.resolver import DEFAULT_AUTOCOMMIT_SECONDS, StaticResolver
from kvol.csi.server import build_server, socket_path
from kvol.errors import KvolError
from kvol.store import STORE_ENV

log = logging.getLogger("kvol.csi")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvol-csi",
        description=(
            "The kvol CSI node plugin: publishes working copies of kvol volumes into pods, "
            "commits them in the background and when the pod ends, and serves a control "
            "socket (.kvol/control.sock) inside every mount."
        ),
    )
    p.add_argument(
        "--endpoint",
        default=os.environ.get("CSI_ENDPOINT", "unix:///csi/csi.sock"),
        help="CSI socket, unix:///path (default: $CSI_ENDPOINT or %(default)s)",
    )
    p.add_argument(
        "--node-id",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="this node's name as Kubernetes knows it (default: $NODE_NAME or the host name)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/kvol"),
        help="host directory for working copies, snapshots, the content cache and the "
        "plugin's state (default: %(default)s)",
    )
    p.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        help=f"store URL holding the volumes, file:///dir or s3://bucket/prefix (default: ${STORE_ENV})",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on this port (0: off, the default)",
    )
    p.add_argument(
        "--metrics-address", default="0.0.0.0", help="address for metrics (default: %(default)s)"
    )
    p.add_argument("--driver-name", default=DRIVER_NAME, help="CSI driver name (%(default)s)")
    p.add_argument(
        "--layout",
        choices=("auto", "overlay", "plain"),
        default="auto",
        help="working copies as copy-on-write overlays (needs root and overlayfs) or plain "
        "copies; auto picks overlay where possible",
    )
    p.add_argument(
        "--autocommit-seconds",
        type=float,
        default=DEFAULT_AUTOCOMMIT_SECONDS,
        help="background commit interval when the volume does not set one (%(default)s)",
    )
    p.add_argument(
        "--keep-warm-seconds",
        type=_seconds,
        default=NodeConfig.keep_warm_seconds,
        help="keep a volume's read-only snapshot on the node this long after its last pod "
        "here ended, so the next pod of the volume publishes without rebuilding it "
        "(0: drop it with the last pod; default: %(default)s)",
    )
    p.add_argument(
        "--cache-max-bytes",
        type=_size,
        default=NodeConfig.cache_max_bytes,
        help="trim the node's content cache to this size, least recently used first, "
        "never evicting what a snapshot uses; bytes or with a Ki, Mi, Gi or Ti suffix "
        "(0: no limit; default: %(default)s bytes)",
    )
    p.add_argument(
        "--lazy-fetch",
        action="store_true",
        help="experimental: publish a volume before its content is on the node; files are "
        "fetched when first read and in the background (overlay layout; needs kernel 6.14+ "
        "and a state directory on ext4, xfs or btrfs; see docs/kubernetes.md for its limits)",
    )
    p.add_argument(
        "--lazy-fetch-as",
        default="auto",
        choices=("auto", "image", "entries"),
        help="how --lazy-fetch works: image (a snapshot is an image mounted at once whose "
        "data is fetched range by range as it is read), entries (a placeholder file per "
        "file in the content cache, fetched whole on first open) or auto (image where the "
        "kernel mounts one from a file, Linux 6.12+; default)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    registration.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.store:
        print(f"kvol-csi: --store (or ${STORE_ENV}) is required", file=sys.stderr)
        return 2
    try:
        socket_path(args.endpoint)
        resolver = StaticResolver(args.store, args.autocommit_seconds)
        node = NodeService(
            NodeConfig(
                node_id=args.node_id,
                state_dir=args.state_dir,
                layout=args.layout,
                keep_warm_seconds=args.keep_warm_seconds,
                cache_max_bytes=args.cache_max_bytes,
                lazy_fetch=args.lazy_fetch,
                lazy_fetch_as=args.lazy_fetch_as,
            ),
            resolver,
            EventReporter.in_cluster(args.node_id),
        )
    except KvolError as exc:
        print(f"kvol-csi: {exc}", file=sys.stderr)
        return exc.exit_code
    ready = threading.Event()
    identity = IdentityService(args.driver_name, ready=ready.is_set)
    if args.metrics_port:
        metrics.NODE.watch(args.state_dir, node.copy_samples)
        start_http_server(args.metrics_port, addr=args.metrics_address)
    failed = node.readopt()
    if failed:
        log.warning("%d publication(s) not re-adopted; kubelet retries will", len(failed))
    node.start_janitor()
    server = build_server(
        args.endpoint, {"Identity": identity, "Node": node}, driver_name=args.driver_name
    )
    ready.set()
    # After the CSI socket answers: the kubelet calls it as soon as it registers the driver.
    extras = registration.start(args, args.driver_name, args.endpoint, socket_path(args.endpoint))
    log.info(
        "serving %s on %s (node %s, %s working copies, state in %s)",
        args.driver_name,
        args.endpoint,
        args.node_id,
        node.layout,
        args.state_dir,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    extras.stop()
    log.info("stopping: mounts stay in place for the next plugin process")
    server.stop(grace=10).wait()
    node.shutdown()
    return 0


_SIZE_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def _size(value: str) -> int:
    """Bytes, as a number or with a binary suffix (``10Gi``), as Kubernetes writes them."""
    text = value.strip()
    unit = text[-2:] if text[-2:] in _SIZE_UNITS else ""
    number = text[: len(text) - len(unit)]
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size in bytes (e.g. 10Gi): {value!r}")
    return int(number) * _SIZE_UNITS[unit]


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds (0 or more): {value!r}")
    return seconds


if __name__ == "__main__":
    sys.exit(main())
