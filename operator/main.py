"""``kvol-operator``: run the operator, or print its CRDs."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kvol.operator import crds
from kvol.operator.handlers import OperatorConfig
from kvol.operator.reconcile import Settings

_DESCRIPTION = """\
Reconcile kvol Volumes (kvol.dev/v1alpha1, namespaced) and VolumeBackends
(cluster-scoped) into their stores: a volume id and metadata in the backend, a
PersistentVolume and claim for pods, and a status kept true by a periodic pass.

commands:
  run     run the operator (the default when no command is given)
  crds    print the CustomResourceDefinitions as YAML (--write DIR for files)

The Kubernetes API is reached with the in-cluster service account, else the
kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config).
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
        "--peering",
        metavar="NAME",
        help="coordinate with other replicas through the kopf peering object NAME "
        "(default: standalone, one replica)",
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

    if args.kubeconfig:
        # kopf's own login reads the same file as our API client.
        os.environ["KUBECONFIG"] = args.kubeconfig
    config = OperatorConfig(
        settings=Settings(
            operator_namespace=args.operator_namespace, status_interval=args.status_interval
        ),
        kubeconfig=args.kubeconfig,
        workers=args.workers,
        max_backoff=args.max_backoff,
        metrics_port=args.metrics_port or None,
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
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    liveness = (
        f"http://{args.bind_address}:{args.liveness_port}/healthz" if args.liveness_port else None
    )
    kopf.run(
        registry=registry,
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )
    return 0


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
