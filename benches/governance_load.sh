#!/usr/bin/env bash
# Governance under load: the same Tollgate release build in front of the
# bench mock upstream, with no limits, with a key's rpm and concurrency, and
# with every level set (key rpm/tpm/concurrency and a spend budget, team
# budgets, alias tpm); and, if redis-server is installed, the same limits in
# Redis. Prints one markdown table (wrk, one connection set per row).
#
#   benches/governance_load.sh [--duration S] [--connections N] [--no-build]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=8
CONNS=32
BUILD=1
while (($#)); do
    case "$1" in
        --duration) DURATION=${2:?}; shift 2 ;;
        --connections) CONNS=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
TARGET=${CARGO_TARGET_DIR:-target}
if ((BUILD)); then
    cargo build --locked --release --bin tollgate --example bench_upstream
fi
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

UP=$(port)
"$TARGET/release/examples/bench_upstream" --listen "127.0.0.1:$UP" --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP"

REDIS_PORT=""
if command -v redis-server >/dev/null; then
    REDIS_PORT=$(port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
    PIDS+=($!)
    wait_port "$REDIS_PORT"
fi

cat >"$TMP/body.json" <<'JSON'
{"model":"m","max_tokens":256,"messages":[{"role":"system","content":"You are a careful assistant for an online bookshop. Be concise."},{"role":"user","content":"Order A-20931 arrived with one book missing. The parcel had two books in it and the invoice lists three. Can you check where the third one is and when it will arrive?"}]}
JSON

config() { # $1 listen, $2 store, $3 alice's extra, $4 extra top level, $5 "capped": alias tpm
    local model_limits=""
    [[ "$5" == capped ]] && model_limits="    limits: { tpm: $BIG }
"
    cat <<YAML
listen: "$1"
server: { threads: 1, pid_file: "$TMP/t.pid", upgrade_sock: "$TMP/u.sock" }
access_log: { enabled: false }
limits_store: $2
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:$UP/v1", api_key: sk, health_check: { enabled: false } }
models:
  m:
$model_limits    routes: [ { provider: up, model: gpt-4o-mini, price: { input: 0.15, output: 0.6 } } ]
keys:
  - { name: alice, key: sk-bench-alice$3 }
$4
YAML
}

BIG=1000000000000
ALL_KEY=", team: t, limits: { rpm: $BIG, tpm: $BIG, concurrency: 100000 }, budgets: [ { usd: 1000000, window: day } ]"
TEAMS="teams: { t: { budgets: [ { usd: 1000000, window: month }, { tokens: $BIG, window: 30d } ] } }"
MODEL=capped
ROWS=(
    "no limits|memory|||"
    "key rpm + concurrency|memory|, limits: { rpm: $BIG, concurrency: 100000 }||"
    "every level (memory)|memory|$ALL_KEY|$TEAMS|$MODEL"
)
if [[ -n "$REDIS_PORT" ]]; then
    ROWS+=("every level (redis)|{ redis: { url: \"redis://127.0.0.1:$REDIS_PORT\" } }|$ALL_KEY|$TEAMS|$MODEL")
fi

echo "| limits | req/s | p50 | p99 |"
echo "|---|---|---|---|"
for row in "${ROWS[@]}"; do
    IFS='|' read -r name store key top model <<<"$row"
    GW=$(port)
    config "127.0.0.1:$GW" "$store" "$key" "$top" "$model" >"$TMP/gw.yaml"
    "$TARGET/release/tollgate" --config "$TMP/gw.yaml" >"$TMP/gw.log" 2>&1 &
    GPID=$!
    wait_port "$GW" || { cat "$TMP/gw.log"; exit 1; }
    out=$(BENCH_BODY="$TMP/body.json" BENCH_AUTH="Bearer sk-bench-alice" \
        wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s benches/wrk_post.lua \
        "http://127.0.0.1:$GW" 2>&1)
    kill "$GPID"; wait "$GPID" 2>/dev/null || true
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    [[ -z "$non2xx" ]] || echo "warning: $name: $non2xx non-2xx responses" >&2
    echo "| $name | $rps | $p50 | $p99 |"
done
