#!/usr/bin/env bash
# Create .venv and install kvol into it. Usage: hack/setup-venv.sh [extras]
# (extras: "test" for everything the tests need; nothing for the CLI alone)
set -euo pipefail
# operator/ at the top of the tree must never shadow the standard library module.
export PYTHONSAFEPATH=1
cd "$(dirname "$0")/.."
extras=${1:-}
python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "kvol needs Python 3.11 or newer"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
