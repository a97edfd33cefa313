"""``python -m bench``: run the benchmarks, progress on stderr, one JSON document out.

    python -m bench [--only NAME] [--store URL] [--out FILE] [--quick] [--workdir DIR]

Without ``--store``, store-bound scenarios run twice: on a durable filesystem store and
on one with ``fsync=false``, both in the scratch directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.environment import describe
from bench.harness import Sizes, discover, run_scenario, select


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only scenarios with this name, name prefix (core) or glob (core.commit_*); repeatable",
    )
    parser.add_argument(
        "--store",
        action="append",
        metavar="URL",
        help="store to run store-bound scenarios against; repeatable "
        "(default: a durable and an fsync=false filesystem store in the scratch directory)",
    )
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument(
        "--workdir", type=Path, help="where scratch data goes (default: the system temp dir)"
    )
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed or a scenario fails"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios, import_errors = discover()
    for error in import_errors:
        print(f"bench: cannot load {error['module']}: {error['error']}", file=sys.stderr)
    scenarios = select(scenarios, args.only)
    if args.list:
        for s in scenarios:
            print(f"{s.name}\t{'per store' if s.per_store else 'once'}\t{s.description}")
        return 0
    if not scenarios:
        print(f"bench: no scenario matches {args.only}", file=sys.stderr)
        return 2

    sizes = Sizes.quick() if args.quick else Sizes.full()
    started = time.time()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvol-bench-", dir=args.workdir) as tmp:
        root = Path(tmp)
        stores = args.store or [f"file://{root}/store", f"file://{root}/store-nofsync?fsync=false"]
        results: list[dict[str, Any]] = []
        for scenario in scenarios:
            for url in stores if scenario.per_store else [None]:
                results += run_scenario(scenario, url, sizes, root=root, quick=args.quick)
        environment = describe(root)

    document = {
        "kvol_bench": 1,
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(),
        "duration_seconds": round(time.time() - started, 3),
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "stores": stores,
        "environment": environment,
        "results": results,
        "load_errors": import_errors,
        "summary": _summary(results),
    }
    text = json.dumps(document, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"bench: wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    summary = document["summary"]
    print(f"bench: {summary}", file=sys.stderr)
    if args.check and (summary["failed"] or summary["errors"] or import_errors):
        return 1
    return 0


def _summary(results: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "results": len(results),
        "passed": sum(1 for r in results if r.get("passed") is True),
        "failed": sum(1 for r in results if r.get("passed") is False),
        "report_only": sum(1 for r in results if "error" not in r and r.get("passed") is None),
        "errors": sum(1 for r in results if "error" in r),
    }


if __name__ == "__main__":
    sys.exit(main())
