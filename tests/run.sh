#!/usr/bin/env bash
# The project's single test command (see README): bash tests/run.sh
#
# 1. Makes sure target/sdk-venv holds exactly the packages pinned (with their
#    hashes) in tests/sdk/requirements.lock: the official `openai` and
#    `anthropic` Python SDKs used by the end-to-end SDK compatibility tests
#    (tests/sdk/*.py), pytest, and every dependency of theirs. Exports
#    TOLLGATE_PYTHON pointing at that venv's interpreter. Then the same for
#    the official `openai` Node SDK: `npm ci` into tests/sdk/node/node_modules
#    from tests/sdk/node/package-lock.json when that lock changed; exports
#    TOLLGATE_NODE_SDK (node and npm must be installed).
# 2. Runs every Rust test target with `cargo test --no-fail-fast` (so one
#    failing target does not hide the others), then prints one closing
#    line, `tests/run.sh: N passed, M failed`. It exits with cargo's status,
#    and with 1 when no test ran at all (a filter that matches nothing is a
#    mistake, not a pass).
#
# Extra arguments are passed on to cargo test, e.g. a test-name filter:
#   bash tests/run.sh openai_sdk   or   bash tests/run.sh -- --nocapture
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOCK="$PWD/tests/sdk/requirements.lock"
VENV="$PWD/target/sdk-venv"
PY="$VENV/bin/python"
HOST_PYTHON="${PYTHON:-python3}"
LOCK_SUM=$(sha256sum "$LOCK" | cut -d' ' -f1)

# Up to date: built from this very lock file, and its SDKs import.
sdk_ok() {
    [[ -x "$PY" && -f "$VENV/.lock-sha256" ]] &&
        [[ "$(cat "$VENV/.lock-sha256")" == "$LOCK_SUM" ]] &&
        "$PY" -c 'import anthropic, openai, pytest' >/dev/null 2>&1
}

echo "==== Python SDK venv ($VENV, from tests/sdk/requirements.lock) ===="
if sdk_ok; then
    echo "up to date"
else
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$HOST_PYTHON" -m venv "$VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps -r "$LOCK"
    echo "$LOCK_SUM" >"$VENV/.lock-sha256"
    sdk_ok || { echo "openai or anthropic SDK not importable from $VENV" >&2; exit 1; }
fi
"$PY" -c 'import anthropic, openai, sys; print("python", sys.version.split()[0], "openai", openai.__version__, "anthropic", anthropic.__version__)'
export TOLLGATE_PYTHON="$PY"

# The official `openai` Node SDK (tests/sdk_node.rs), pinned in
# tests/sdk/node/package-lock.json and installed with `npm ci` into
# tests/sdk/node/node_modules only when that lock changed (the stamp holds
# its sha256). node and npm are required: no test is skipped for want of them.
NODE_DIR="$PWD/tests/sdk/node"
NODE_LOCK_SUM=$(sha256sum "$NODE_DIR/package-lock.json" | cut -d' ' -f1)
NODE_STAMP="$NODE_DIR/node_modules/.lock-sha256"
echo "==== Node SDK ($NODE_DIR/node_modules, from package-lock.json) ===="
for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "tests/run.sh: \`$tool\` is not installed; the Node SDK tests need node (18 or newer) and npm: run \`sh scripts/deps.sh --tests\`" >&2
        exit 1
    }
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 18)); then
    echo "tests/run.sh: node $(node --version) is too old; the Node SDK tests need node 18 or newer" >&2
    exit 1
fi
node_ok() {
    [[ -f "$NODE_STAMP" && "$(cat "$NODE_STAMP")" == "$NODE_LOCK_SUM" ]] &&
        (cd "$NODE_DIR" && node -e 'import("openai")') >/dev/null 2>&1
}
if node_ok; then
    echo "up to date"
else
    rm -rf "$NODE_DIR/node_modules"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund)
    echo "$NODE_LOCK_SUM" >"$NODE_STAMP"
    node_ok || { echo "the openai Node SDK is not importable from $NODE_DIR/node_modules" >&2; exit 1; }
fi
echo "node $(node --version) openai $(cd "$NODE_DIR" && node -p 'require("openai/version").VERSION')"
export TOLLGATE_NODE_SDK="$NODE_DIR"

echo "==== cargo test ===="
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
status=0
cargo test --locked --all-targets --no-fail-fast "$@" 2>&1 | tee "$OUT" || status=$?
# One `test result:` line per test target.
read -r passed failed < <(
    sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed;.*/\1 \2/p' "$OUT" |
        awk '{p += $1; f += $2} END {print p + 0, f + 0}'
)
if ((status == 0 && passed + failed == 0)); then
    echo "tests/run.sh: no test ran (does the filter match any test?)" >&2
    echo "tests/run.sh: 0 passed, 0 failed"
    exit 1
fi
echo "tests/run.sh: $passed passed, $failed failed"
exit "$status"
