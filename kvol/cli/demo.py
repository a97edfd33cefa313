"""``kvol demo``: two writers share one volume, narrated, in a couple of seconds.

It runs on the embedded filesystem store (a temporary directory unless ``--store`` is
given), shows that files written by different copies all land, and that the same file
written by both ends with the last commit's content. It checks what it claims, and
exits non-zero if anything differs.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from kvol.catalog import Catalog
from kvol.cli.output import say
from kvol.errors import KvolError
from kvol.store import open_store


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "demo",
        help="watch two working copies share a volume",
        description="Create a volume, let two working copies write distinct files and one "
        "shared file, commit, reload, and show the result: distinct files all land, the "
        "shared file is last-write-wins.",
        epilog="example:\n  kvol demo\n  kvol demo --keep --store /tmp/kvol-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the volume and the working copies afterwards"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kvol.workcopy import WorkingCopy

    workdir = Path(tempfile.mkdtemp(prefix="kvol-demo-"))
    store_url = getattr(args, "store", None) or f"file://{workdir / 'store'}"
    store = open_store(store_url)
    args._store = store
    name = f"demo-{secrets.token_hex(3)}"
    catalog = Catalog(store)
    cleanup = not args.keep
    try:
        say(f"Store: {store.url}")
        meta = catalog.create(name)
        repo = catalog.repo(name)
        say(f"1. Created volume {name!r} (version {meta.version}).")

        alice_dir, bob_dir = workdir / "alice", workdir / "bob"
        alice = WorkingCopy.create(repo, alice_dir)
        bob = WorkingCopy.create(repo, bob_dir)
        say(
            f"2. Two working copies of it, as two pods would have:\n     alice: {alice_dir}\n     bob:   {bob_dir}"
        )

        (alice_dir / "results").mkdir()
        (alice_dir / "results" / "alice.csv").write_text("id,score\n1,0.91\n")
        (alice_dir / "shared.txt").write_text("written by alice\n")
        (bob_dir / "results").mkdir()
        (bob_dir / "results" / "bob.csv").write_text("id,score\n2,0.87\n")
        (bob_dir / "shared.txt").write_text("written by bob\n")
        say(
            "3. Each writes its own file (results/alice.csv, results/bob.csv) and both write shared.txt."
        )

        first = alice.commit("alice's results")
        second = bob.commit("bob's results")
        say(f"4. alice commits ({first.files} files) -> commit {first.seq}")
        say(f"   bob commits   ({second.files} files) -> commit {second.seq}  (the later commit)")

        alice.reload()
        bob.reload()
        say("5. Both reload. The volume now holds:")
        state = repo.state()
        for path in sorted(state.files):
            say(f"     /{path:<20} {state.files[path].size:>4} bytes")

        alice_sees = (alice_dir / "shared.txt").read_text().strip()
        bob_sees = (bob_dir / "shared.txt").read_text().strip()
        both_results = all(
            (d / "results" / f).exists()
            for d in (alice_dir, bob_dir)
            for f in ("alice.csv", "bob.csv")
        )
        say(f"6. Distinct files all landed: both copies hold alice.csv and bob.csv: {both_results}")
        say(f"   shared.txt is last-write-wins: alice sees {alice_sees!r}, bob sees {bob_sees!r}")
        alice.close()
        bob.close()

        if not both_results or alice_sees != "written by bob" or bob_sees != "written by bob":
            print("kvol: error: the demo did not end as expected", file=sys.stderr)
            return 1
        if args.keep:
            say(f"\nKept everything: try  kvol --store {store.url} volume ls {name} -l")
            say(f"                      cd {alice_dir} && kvol volume status")
        else:
            say("\nDone; the demo's volume and copies are removed (--keep keeps them).")
        return 0
    except KvolError:
        cleanup = False  # leave the evidence for whoever reads the error
        say(f"The demo's files are kept in {workdir}.")
        raise
    finally:
        if cleanup:
            if getattr(args, "store", None):
                catalog.delete(name, allow_missing=True)
            shutil.rmtree(workdir, ignore_errors=True)
