#!/usr/bin/env bash
# ruff over the tree, mypy --strict over the installed shape of the package.
set -euo pipefail
# operator/ at the top of the tree must never shadow the standard library module.
export PYTHONSAFEPATH=1
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check kvol operator csi tests bench >/dev/null || {
  echo "ruff format would change files: run .venv/bin/ruff format" >&2; exit 1; }
# operator/ and csi/ install as kvol.operator and kvol.csi; mypy cannot follow the
# editable-install mapping, so check a staged copy laid out as installed.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r kvol "$stage/kvol"
cp -r operator "$stage/kvol/operator"
cp -r csi "$stage/kvol/csi"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
(cd "$stage" && "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" -p kvol)
