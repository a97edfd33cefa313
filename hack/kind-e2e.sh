#!/usr/bin/env bash
# `make e2e-kind`: the e2e tier (tests/e2e) on a real three-node kind cluster, with no
# registry. Brings the cluster up (KVOL_KIND_OFFLINE=1 hack/kind-up.sh: local node image,
# local kvol image loaded into every node, the chart, the examples), runs the same pytest
# suite as the one-node tier against it (KVOL_E2E_TARGET=kind; tests/e2e/conftest.py), and
# removes everything again (cluster, MinIO, private Docker, its network namespace) unless
# KVOL_KIND_KEEP=1.
#
# Beside the one-node tests, tests/e2e/test_multinode.py runs here only: a pod on kvol-worker
# commits and a pod on kvol-worker2, started before, sees the file after reload(); a pod's
# final commit on one worker is read on the other; cluster DNS answers a pod on a worker.
# Prints pytest's summary (counts, slowest tests, what is not run on kind and why) and the
# time of each phase; exits non-zero if a phase or a test failed.
#
# Needs root. Environment: KVOL_KIND_CLUSTER (kvol), KVOL_KIND_KEEP (0); arguments are
# passed to pytest (e.g. -k sharing, -x).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"

say() { printf '[kind-e2e] %s\n' "$*" >&2; }

started=$SECONDS
up_time=- tests_time=-
teardown() {
  local rc=$? t=$SECONDS
  if [ "${KVOL_KIND_KEEP:-0}" = 1 ]; then
    say "cluster kept (KVOL_KIND_KEEP=1): run again with KVOL_E2E_TARGET=kind .venv/bin/python -m pytest tests/e2e;"
    say "remove it with KVOL_KIND_OFFLINE=1 hack/kind-up.sh down"
  else
    KVOL_KIND_OFFLINE=1 "$ROOT/hack/kind-up.sh" down || rc=1
    say "torn down in $((SECONDS - t))s"
  fi
  say "times: cluster up ${up_time}s, tests ${tests_time}s, total $((SECONDS - started))s"
  exit "$rc"
}
trap teardown EXIT

t=$SECONDS
KVOL_KIND_OFFLINE=1 "$ROOT/hack/kind-up.sh"
up_time=$((SECONDS - t))
say "cluster up in ${up_time}s"

t=$SECONDS
cd "$ROOT"
status=0
KVOL_E2E_TARGET=kind .venv/bin/python -m pytest -ra --durations=10 "$@" tests/e2e || status=$?
tests_time=$((SECONDS - t))
say "e2e tests on kind done in ${tests_time}s (pytest exit $status)"
exit "$status"
