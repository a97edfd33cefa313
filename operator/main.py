"""``kvol-operator``: run the operator, or print its CRDs."""

from __future__ import annotations

import argparse
import http.server
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading

from kvol import errors
from kvol.operator import crds
from kvol.operator.handlers import OperatorConfig
from kvol.operator.leader import LeaderElector, LeaseTiming
from kvol.operator.reconcile import Settings

log = logging.getLogger("kvol.operator")

_DESCRIPTION = """\
Reconcile kvol Volumes (kvol.dev/v1alpha1, namespaced) and VolumeBackends
(cluster-scoped) into their stores: a volume id and metadata in the backend, a
PersistentVolume and claim for pods, and a status kept true by a periodic pass.
Every --prune-interval, history outside a Volume's spec.retention is pruned and
garbage-collected, and its stored bytes measured (status.retention).

commands:
  run     run the operator (the default when no command is given)
  crds    print the CustomResourceDefinitions as YAML (--write DIR for files)

The Kubernetes API is reached with the in-cluster service account, else the
kubeconfig (--kubeconfig, else $KUBECONFIG, else ~/.kube/config).

Replicas elect a leader through a Lease in the operator namespace: only the
holder reconciles; a standby takes over once the holder stops renewing.
"""


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvol-operator run",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch Volumes in NS only (repeatable; globs like 'team-*' work)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch Volumes in every namespace (the default)",
    )
    parser.add_argument(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE", "kvol-system"),
        help="namespace of Secrets a VolumeBackend names without one "
        "(default: $POD_NAMESPACE or kvol-system)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file when not running in a cluster")
    parser.add_argument(
        "--status-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between the periodic passes that refresh each object's status (default 10)",
    )
    parser.add_argument(
        "--prune-interval",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds between the retention passes over each Volume: history outside its "
        "spec.retention pruned and garbage-collected as by `kvol volume gc`, and its stored "
        "bytes measured; 0 turns them off (default 3600)",
    )
    parser.add_argument(
        "--max-backoff",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait between retries of a failing reconciliation (default 60)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=16,
        help="threads running handlers; store calls block (default 16)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="port of the Prometheus /metrics endpoint; 0 turns it off (default 8080)",
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=8081,
        help="port of the /healthz liveness endpoint; 0 turns it off (default 8081)",
    )
    parser.add_argument(
        "--bind-address",
        default="0.0.0.0",
        help="address the metrics and liveness endpoints listen on (default 0.0.0.0)",
    )
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="act only while holding a coordination.k8s.io Lease, so that of several "
        "replicas exactly one reconciles and another takes over when it dies (default on)",
    )
    parser.add_argument(
        "--leader-elect-lease-name",
        default="kvol-operator",
        metavar="NAME",
        help="the Lease, in the operator namespace (default kvol-operator)",
    )
    parser.add_argument(
        "--leader-elect-lease-duration",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long a standby waits after the leader's last renewal before it takes over "
        "(default 15)",
    )
    parser.add_argument(
        "--leader-elect-renew-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long the leader keeps trying to renew before it stops acting (default 10)",
    )
    parser.add_argument(
        "--leader-elect-retry-period",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="pause between attempts to acquire or renew the Lease (default 2)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--debug", action="store_true", help="log everything, kopf internals too")
    parser.add_argument(
        "--log-format",
        choices=["plain", "full", "json"],
        default="full",
        help="log line format (default full)",
    )
    return parser


def run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    # kopf is imported only to run: `kvol-operator crds` works without a cluster library.
    import kopf

    from kvol.operator import handlers
    from kvol.operator.kube import Kube, load_config

    if not math.isfinite(args.prune_interval) or args.prune_interval < 0:
        print(
            f"kvol-operator: --prune-interval must be 0 (off) or more seconds, "
            f"not {args.prune_interval:g}",
            file=sys.stderr,
        )
        return 2
    try:
        timing = LeaseTiming(
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
        )
    except errors.InvalidArgument as exc:
        print(f"kvol-operator: {exc}", file=sys.stderr)
        return 2
    # One login for everything: this client configuration serves our own API calls and,
    # through the login handler, kopf's (no reading of $KUBECONFIG behind our back).
    api = load_config(args.kubeconfig)
    config = OperatorConfig(
        settings=Settings(
            operator_namespace=args.operator_namespace,
            status_interval=args.status_interval,
            prune_interval=args.prune_interval,
        ),
        kubeconfig=args.kubeconfig,
        api=api,
        workers=args.workers,
        max_backoff=args.max_backoff,
        # Served from the start, also while standing by, so every replica is scraped.
        metrics_port=None,
        metrics_address=args.bind_address,
    )
    kopf.configure(
        debug=args.debug,
        verbose=args.verbose,
        log_format={
            "plain": kopf.LogFormat.PLAIN,
            "full": kopf.LogFormat.FULL,
            "json": kopf.LogFormat.JSON,
        }[args.log_format],
    )
    if not (args.verbose or args.debug):
        # kopf logs every handler success at INFO; keep the operator's own lines.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.bind_address)
        log.info("metrics on http://%s:%d/metrics", args.bind_address, args.metrics_port)
    elector = None
    if args.leader_elect:
        elector = LeaderElector(
            Kube(api),
            args.operator_namespace,
            args.leader_elect_lease_name,
            identity=f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}",
            timing=timing,
            on_lost=_exit_now,
        )
        standby = _serve_liveness(args.bind_address, args.liveness_port)
        try:
            if not elector.acquire(_stop_on_signals()):
                return 0
        finally:
            if standby is not None:
                standby.shutdown()
                standby.server_close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        elector.start_renewing()
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    liveness = (
        f"http://{args.bind_address}:{args.liveness_port}/healthz" if args.liveness_port else None
    )
    try:
        kopf.run(
            registry=registry,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=liveness,
        )
    finally:
        if elector is not None:
            elector.release()
    return 0


def _exit_now() -> None:
    """The Lease is lost: another replica may act soon, so this one stops at once, in the
    middle of whatever it does (every reconciliation step is idempotent)."""
    logging.shutdown()
    os._exit(3)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, to stop standing by."""
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _serve_liveness(address: str, port: int) -> http.server.ThreadingHTTPServer | None:
    """/healthz while standing by: a standby replica is alive, only not acting."""
    if not port:
        return None

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?")[0] == "/healthz"
            body = b'{"standby": true}' if ok else b"not found"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, name="kvol-standby", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "crds":
        return crds.main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    elif argv and argv[0] in ("-h", "--help"):
        _run_parser().print_help()
        return 0
    elif argv and not argv[0].startswith("-"):
        print(f"kvol-operator: unknown command {argv[0]!r}; use run or crds", file=sys.stderr)
        return 2
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
