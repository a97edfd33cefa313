"""kill -9 of a committing process at many points: the store never shows partial state,
and the next commit from the same working copy publishes every change."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvol.layout import parse_seq
from kvol.repo import Repo
from kvol.store import FilesystemStore
from kvol.workcopy import WorkingCopy
from tests.unit.core.helpers import tree, volume_tree, write

CHUNK = 512 * 1024
BIG_CHUNKS = 16
KILLS = 18

# The child reports each object it has written to the store, so kills land at chosen
# steps of the commit (before any upload, between uploads, around the log entry), each
# followed by a random delay that lands the kill inside the next step.
COMMIT = """
import sys
from kvol.store import FilesystemStore


class Reporting(FilesystemStore):
    def _put(self, key, data):
        super()._put(key, data)
        print("wrote", key, flush=True)

    def _put_staged(self, key, data):
        super()._put_staged(key, data)
        print("wrote", key, flush=True)

    def _put_if_absent(self, key, data):
        created = super()._put_if_absent(key, data)
        print("wrote", key, flush=True)
        return created


from kvol.workcopy import WorkingCopy
wc = WorkingCopy.open(sys.argv[1], store=Reporting(sys.argv[2]))
print("ready", flush=True)
wc.commit()
print("done", flush=True)
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONSAFEPATH": "1"}


def start_commit(root: Path, store_root: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", COMMIT, str(root), str(store_root)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root.parent,
        env=child_env(),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def change(root: Path, rng: random.Random, round_no: int) -> None:
    """A round of work: small files edited, added and removed, the large file rewritten
    in part, so every commit uploads chunks and a pack and deletes something."""
    for i in rng.sample(range(300), 40):
        write(root, f"small/{i % 10}/{i}", os.urandom(rng.randint(100, 5000)))
    for i in range(10):
        write(root, f"new/{round_no}/{i}", f"round {round_no} file {i}")
    victims = sorted((root / "small").rglob("*"))
    files = [p for p in victims if p.is_file()]
    if files:
        rng.choice(files).unlink()
    big = root / "big.bin"
    with open(big, "r+b") as f:
        for _ in range(4):
            f.seek(rng.randrange(0, BIG_CHUNKS * CHUNK))
            f.write(os.urandom(CHUNK // 2))


def check_store(store: FilesystemStore, repo: Repo) -> None:
    """Every log entry parses, and the head's every file reads back verified."""
    log_dir = store.root / repo.keys.log_prefix
    seqs = sorted(s for s in (parse_seq(p.name) for p in log_dir.iterdir()) if s is not None)
    assert seqs == list(range(1, len(seqs) + 1)), f"log has gaps: {seqs}"
    for seq in seqs:
        assert repo.read_entry(seq) is not None
    assert repo.head() == len(seqs)
    volume_tree(repo)  # raises CorruptData on any missing or damaged content


def test_kill_9_at_many_points_of_a_commit(tmp_path: Path) -> None:
    rng = random.Random(20240607)
    store_root = tmp_path / "store"
    # The children commit with fsync as in production; this process only checks.
    store = FilesystemStore(store_root, durable=False)
    repo = Repo.create(store, chunk_size=CHUNK)
    root = tmp_path / "wc"
    wc = WorkingCopy.create(repo, root)
    for i in range(300):
        write(root, f"small/{i % 10}/{i}", os.urandom(rng.randint(100, 5000)))
    write(root, "big.bin", os.urandom(BIG_CHUNKS * CHUNK))
    wc.commit()
    wc.close(final_commit=False)

    # How many objects a commit writes, counted on a complete one.
    change(root, rng, 0)
    child = start_commit(root, store_root)
    assert child.stdout is not None
    steps = sum(1 for line in child.stdout if line.startswith("wrote"))
    assert child.wait(timeout=120) == 0
    assert steps >= 5, "a commit of this tree writes chunks, a pack and a log entry"
    assert volume_tree(repo) == tree(root)

    outcomes = {"killed": 0, "finished": 0}
    for n in range(KILLS):
        change(root, rng, n + 1)
        child = start_commit(root, store_root)
        assert child.stdout is not None
        after = n % (steps + 1)  # 0: while scanning and hashing, before any write
        for _ in range(after):
            if not child.stdout.readline().startswith("wrote"):
                break
        time.sleep(rng.uniform(0, 0.03))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            outcomes["killed"] += 1
        else:
            outcomes["finished"] += 1
        child.wait(timeout=60)

        check_store(store, repo)
        again = WorkingCopy.open(root, store=store)
        again.commit()
        again.close(final_commit=False)
        assert volume_tree(repo) == tree(root), f"after kill {n} (after {after} writes)"

    print(f"{steps} writes per commit; {outcomes}")
    assert outcomes["killed"] >= KILLS * 2 // 3, outcomes
