# Shared by scripts/test, scripts/demo and scripts/upgrade-deps: make .venv hold exactly
# the locked install (uv.lock) of this checkout.
#
# The lock is uv's (https://docs.astral.sh/uv/concepts/projects/sync/): one resolution of
# every extra, the local engine's torch stack included, so a fresh machine gets the versions
# the suite passed with. uv itself is pinned (pyproject.toml's [tool.uv] required-version) and lives in $VENV/.uv, outside the
# environment it manages, because `uv sync` removes whatever the lock does not name (pip too).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VOICESLOT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
UV_VERSION="$(sed -n 's/^required-version = "==\(.*\)"$/\1/p' "$ROOT/pyproject.toml")"
UV="$VENV/.uv/bin/uv"

# Never let uv fetch a Python of its own: the venv's interpreter is the one we use.
export UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT="$VENV"

ensure_uv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV from uv.lock (the local engine pulls torch: a few minutes the first time)" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  if [ "$("$UV" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
      --target "$VENV/.uv" "uv==$UV_VERSION" >"$VENV/uv-install.log" 2>&1 || {
      grep -v "^WARNING: Location" "$VENV/uv-install.log" >&2
      echo "installing uv $UV_VERSION failed; full log: $VENV/uv-install.log" >&2
      return 1
    }
  fi
}

# uv sync for one extra. --locked fails, naming the reason, when pyproject.toml changed
# without the lock being refreshed (scripts/upgrade-deps). The test environment (`dev`) is
# made to equal the lock exactly; other extras only add to the venv, because the README's
# two commands share one .venv and `dev` already holds everything the demo needs.
uv_sync() {
  local extra="$1"
  local mode=()
  [ "$extra" = dev ] || mode=(--inexact)
  (cd "$ROOT" && "$UV" sync --locked --python "$VENV/bin/python" --extra "$extra" ${mode[@]+"${mode[@]}"})
}

# Syncs every time: when nothing changed, uv checks the venv against the lock in a few
# milliseconds, and a venv changed by hand is put back (no stamp that could go stale).
ensure_venv() {
  local extras="$1"
  ensure_uv
  local log="$VENV/install.log"
  if ! uv_sync "$extras" >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing voiceslot[$extras] from uv.lock failed; full log: $log" >&2
    return 1
  fi
  if grep -qE "^ *[-+~] " "$log"; then
    echo "synced $VENV with uv.lock (voiceslot[$extras]; $log lists the changes)" >&2
  fi
}
