# Shared by scripts/test and scripts/demo: make .venv hold this checkout's install.
# Re-installs only when pyproject.toml changes (its hash is kept inside the venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VOICESLOT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  local extras="$1"
  local stamp="$VENV/.voiceslot-install"
  local want
  want="$extras $(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing voiceslot[$extras] into $VENV (the local engine pulls torch: a few minutes the first time)" >&2
    local log="$VENV/pip-install.log"
    # pip's own output goes to a log (shown on failure): some machines' pip configs warn
    # about every package, which would bury the test output.
    if ! { "$VENV/bin/python" -m pip install --quiet --upgrade pip &&
           "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$extras]"; } >"$log" 2>&1; then
      grep -v "^WARNING: Location" "$log" >&2
      echo "installing voiceslot[$extras] failed; full log: $log" >&2
      return 1
    fi
    echo "$want" > "$stamp"
  fi
}
