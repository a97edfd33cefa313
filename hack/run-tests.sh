#!/usr/bin/env bash
# The whole suite, as `make test` runs it: every tier but e2e, then the e2e tier. The e2e
# tier spends most of its time waiting on a real cluster (pods starting, the kubelet's sync
# loop), so the unit tests against the lowest dependency versions pyproject.toml declares
# (`make unit-min`) run beside it; their report is printed whole after it, and the run
# fails if any part fails. Arguments go to the two main pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONSAFEPATH=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

.venv/bin/python -m pytest -ra --ignore=tests/e2e "$@" tests
rest=$?

# A base directory of its own: two pytest runs sharing one would prune each other's.
(hack/setup-venv-min.sh && .venv-min/bin/python -m pytest -ra -q -p no:cacheprovider \
  --basetemp="$scratch/pytest" tests/unit) >"$scratch/unit-min.log" 2>&1 &
min_pid=$!
.venv/bin/python -m pytest -ra "$@" tests/e2e
e2e=$?
wait "$min_pid"
min=$?
echo "==================== unit tests at the declared minimum versions ===================="
tail -n 40 "$scratch/unit-min.log"
echo "other tiers: exit $rest; e2e tier: exit $e2e; unit tests at minimum versions: exit $min"
[ "$rest" = 0 ] && [ "$e2e" = 0 ] && [ "$min" = 0 ]
