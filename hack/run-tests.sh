#!/usr/bin/env bash
# The whole suite, as `make test` runs it: every tier but e2e, then the e2e tier. The e2e
# tier spends most of its time waiting on a real cluster (pods starting, the kubelet's sync
# loop), so parts that need no cluster run beside it, in two lines: the bounded
# model-based explorations (tests/model/test_model.py) and the crash-point harness
# (tests/crashpoints); and the unit tests against the lowest dependency versions
# pyproject.toml declares (`make unit-min`), then the operator's tests (a kube-apiserver
# of their own: mostly waiting too). Their reports are printed whole after it, and the
# run fails if any part fails. Arguments go to the two main pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONSAFEPATH=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

BESIDE=(tests/model/test_model.py tests/crashpoints)
OPERATOR=(tests/integration/operator)

.venv/bin/python -m pytest -ra --ignore=tests/e2e "${BESIDE[@]/#/--ignore=}" \
  "${OPERATOR[@]/#/--ignore=}" "$@" tests
rest=$?

# Base directories of their own: pytest runs sharing one would prune each other's.
(.venv/bin/python -m pytest -ra -q -p no:cacheprovider --basetemp="$scratch/model" \
  "${BESIDE[@]}" >"$scratch/model.log" 2>&1
  echo $? >"$scratch/model.rc") &
explorations=$!
( (hack/setup-venv-min.sh && .venv-min/bin/python -m pytest -ra -q -p no:cacheprovider \
    --basetemp="$scratch/min" tests/unit) >"$scratch/unit-min.log" 2>&1
  echo $? >"$scratch/min.rc"
  .venv/bin/python -m pytest -ra -q -p no:cacheprovider --basetemp="$scratch/operator" \
    "${OPERATOR[@]}" >"$scratch/operator.log" 2>&1
  echo $? >"$scratch/operator.rc") &
others=$!
.venv/bin/python -m pytest -ra "$@" tests/e2e
e2e=$?
wait "$explorations" "$others"
model=$(cat "$scratch/model.rc" 2>/dev/null || echo 1)
min=$(cat "$scratch/min.rc" 2>/dev/null || echo 1)
operator=$(cat "$scratch/operator.rc" 2>/dev/null || echo 1)
echo "==================== model explorations and crash points ===================="
tail -n 80 "$scratch/model.log"
echo "==================== unit tests at the declared minimum versions ===================="
tail -n 40 "$scratch/unit-min.log"
echo "==================== the operator's tests ===================="
tail -n 60 "$scratch/operator.log"
echo "other tiers: exit $rest; e2e tier: exit $e2e; explorations, crash points: exit $model;" \
  "unit tests at minimum versions: exit $min; operator: exit $operator"
[ "$rest" = 0 ] && [ "$e2e" = 0 ] && [ "$model" = 0 ] && [ "$min" = 0 ] && [ "$operator" = 0 ]
