#!/usr/bin/env bash
# The whole suite, as `make test` runs it. The e2e tier spends most of its time waiting on
# a real cluster (pods starting, the kubelet's sync loop), so it runs beside the other
# tiers rather than after them; each tier's report is printed whole, and the run fails if
# either fails. Arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONSAFEPATH=1
e2e_log=$(mktemp)
e2e_tmp=$(mktemp -d)
trap 'rm -rf "$e2e_log" "$e2e_tmp"' EXIT
.venv/bin/python -m pytest -ra -p no:cacheprovider --basetemp="$e2e_tmp/pytest" \
  "$@" tests/e2e >"$e2e_log" 2>&1 &
e2e_pid=$!
.venv/bin/python -m pytest -ra --ignore=tests/e2e "$@" tests
rest=$?
wait "$e2e_pid"
e2e=$?
echo "================================ the e2e tier ================================"
cat "$e2e_log"
echo "e2e tier: exit $e2e; other tiers: exit $rest"
[ "$rest" = 0 ] && [ "$e2e" = 0 ]
