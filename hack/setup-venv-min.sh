#!/usr/bin/env bash
# Create .venv-min: kvol with its test extra, every runtime dependency pinned to the lowest
# version pyproject.toml allows (hack/min_constraints.py). Used by `make unit-min`.
set -euo pipefail
# operator/ at the top of the tree must never shadow the standard library module.
export PYTHONSAFEPATH=1
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=.venv-min
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  "$venv/bin/python" hack/min_constraints.py > "$venv/constraints.txt"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # Wheels only: a minimum that only installs by compiling is not one users get.
  "$venv/bin/python" -m pip install --quiet --only-binary=:all: \
    -c "$venv/constraints.txt" -e ".[test]"
  "$venv/bin/python" -m pip check
  touch "$stamp"
fi
