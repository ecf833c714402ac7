#!/usr/bin/env bash
# The project's single test command (see README): bash tests/run.sh
#
# 1. Makes sure target/sdk-venv holds the pinned official `openai` and
#    `anthropic` Python SDKs (used by the end-to-end SDK compatibility tests,
#    tests/sdk/openai_client.py and tests/sdk/anthropic_client.py) and exports
#    TOLLGATE_PYTHON pointing at that venv's interpreter.
# 2. Runs every Rust test target with plain `cargo test`, so its summary lines
#    close the output, and exits with cargo's status.
#
# Extra arguments are passed on to cargo test, e.g. a test-name filter:
#   bash tests/run.sh openai_sdk   or   bash tests/run.sh -- --nocapture
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

OPENAI_VERSION="3.57.0"
ANTHROPIC_VERSION="2.10.0"
VENV="$PWD/target/sdk-venv"
PY="$VENV/bin/python"
HOST_PYTHON="${PYTHON:-python3}"

sdk_ok() {
    [[ -x "$PY" ]] && "$PY" - "$OPENAI_VERSION" "$ANTHROPIC_VERSION" >/dev/null 2>&1 <<'PYEOF'
import sys
import anthropic, openai, pytest  # noqa: F401
ok = openai.__version__ == sys.argv[1] and anthropic.__version__ == sys.argv[2]
sys.exit(0 if ok else 1)
PYEOF
}

echo "==== Python SDK venv ($VENV, openai==$OPENAI_VERSION, anthropic==$ANTHROPIC_VERSION) ===="
if sdk_ok; then
    echo "up to date"
else
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$HOST_PYTHON" -m venv "$VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check \
        "openai==$OPENAI_VERSION" "anthropic==$ANTHROPIC_VERSION" pytest
    sdk_ok || { echo "openai or anthropic SDK not importable from $VENV" >&2; exit 1; }
fi
"$PY" -c 'import anthropic, openai, sys; print("python", sys.version.split()[0], "openai", openai.__version__, "anthropic", anthropic.__version__)'
export TOLLGATE_PYTHON="$PY"

echo "==== cargo test ===="
exec cargo test --locked --all-targets "$@"
