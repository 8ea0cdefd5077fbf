#!/usr/bin/env bash
# Create (or refresh) the project's Python 3.12 virtual environment in .venv
# and install cp_combined with its pinned dependencies.  Idempotent: does
# nothing when the pins have not changed since the last successful run.
# Sourced by run_daily.sh and run_tests.sh, or by hand (`source
# scripts/bootstrap.sh`: the shell's own options are left as they were);
# may also be run directly.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CPCOMBINED_VENV:-$ROOT/.venv}"

find_python312() {
    local candidates=(python3.12)
    if command -v pyenv >/dev/null 2>&1; then
        candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12)
    fi
    candidates+=("$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12)
    local c
    for c in "${candidates[@]}"; do
        if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

stamp_value() {
    cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1
}

_cpcombined_install() (
    # In a subshell, so that `exit` stays inside; every step checked (errexit
    # does not apply to a function called as a condition).
    if [ ! -x "$VENV/bin/python" ]; then
        PY=$(find_python312) || { echo "bootstrap: Python 3.12 is required but was not found" >&2; exit 1; }
        echo "bootstrap: creating $VENV with $PY" >&2
        "$PY" -m venv "$VENV" || exit 1
    fi
    STAMP="$VENV/.cpcombined-installed"
    if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$(stamp_value)" ]; then
        echo "bootstrap: installing pinned dependencies into $VENV" >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip==26.3 setuptools==84.2.1 wheel || exit 1
        "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.txt" || exit 1
        "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" \
            --config-settings editable_mode=compat || exit 1
        stamp_value > "$STAMP" || exit 1
    fi
)
if ! _cpcombined_install; then
    echo "bootstrap: setting up $VENV failed (see above)" >&2
    return 1 2>/dev/null || exit 1
fi
# Environment an eups "setup cpcombined" would give (ups/cpcombined.table),
# plus what ctrl_bps expects from an eups install.
export CPCOMBINED_DIR="$ROOT"
export DAF_BUTLER_CONFIG_PATH="$ROOT/config${DAF_BUTLER_CONFIG_PATH:+:$DAF_BUTLER_CONFIG_PATH}"
export PATH="$VENV/bin:$PATH"
# numba caches compiled kernels next to the sources; keep them out of the
# tree in a per-user cache so fresh clones on this machine reuse them.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$HOME/.cache/cpcombined/numba}"
eval "$("$VENV/bin/python" -m lsst.cpcombined.env)"
