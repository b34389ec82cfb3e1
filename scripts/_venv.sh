# Sourced by scripts/serve and scripts/test: a virtualenv in .venv with the package installed.
# Usage: install_into_venv [EXTRAS]   e.g. install_into_venv "[dev]"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

install_into_venv() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "exporter needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  # pip takes about 5 s even when nothing changed: install only when pyproject.toml (the
  # dependencies, the entry points) or the C++ source it builds differs from the last
  # install with these extras. The install is editable, so changes to Python need none.
  local extras="${1:-}"
  local stamp=".venv/.installed-${extras:-base}"
  local wanted
  wanted="$(cat pyproject.toml exporter/*.cpp | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
      && .venv/bin/python -c 'import exporter' 2>/dev/null; then
    return 0
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --editable ".${extras}"
  echo "$wanted" > "$stamp"
}
