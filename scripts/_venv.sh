# Sourced by scripts/serve and scripts/test: a virtualenv in .venv with the package installed.
# Usage: install_into_venv [EXTRAS]   e.g. install_into_venv "[dev]"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

install_into_venv() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "exporter needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --editable ".${1:-}"
}
