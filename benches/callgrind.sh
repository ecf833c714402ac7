#!/usr/bin/env bash
# Instructions per request of the release gateway, counted by callgrind: the
# figure in docs/benchmarks.md ("Where the time goes"), reproducible where
# wall-clock time is not.
#
#   benches/callgrind.sh [--requests N] [--warmup N] [--body FILE] [--no-build]
#                        [--keep] [--key-store] [--floor] [--tracing] [--cache]
#                        [--binary PATH]...
#
# For each binary (default target/release/tollgate) it starts the bench mock
# upstream (benches/mock_upstream.rs) and the gateway under
# `valgrind --tool=callgrind`, with the config of benches/load.sh (one
# thread; auth, alias rewrite, metrics and the access log on; health checks
# off, so nothing but requests runs while counting). It sends --warmup
# requests, zeroes the counters (`callgrind_control -z`), sends --requests
# keep-alive requests (default 2000) of the chat body, one at a time on one
# connection, dumps the counters (`callgrind_control -d`), and
# prints the user-space instructions (Ir) per measured request, all threads
# of the process together. With several binaries it prints each one's ratio
# to the first (e.g. a build with a setting changed, same commit otherwise).
# --key-store runs each binary three times: without a key store, with a
# SQLite `key_store` (and `admin_listen`) sending the same config key, and
# with it sending a runtime key created through the admin API.
# --tracing runs each binary twice: as above, then with a `tracing:`
# section (sample_ratio 1.0, every request traced) exporting to the bench
# mock, which answers 200 to the OTLP POSTs; the export thread's work is
# counted with the rest of the process.
# --cache runs each binary twice more with the response cache on for the
# alias (`cache: { ttl: ... }`, memory store): once with a 1 h ttl, so every
# measured request is a hit (checked: each answer says
# `x-tollgate-cache: hit`), and once with a 1 ms ttl and bodies that differ
# in their `user` value (same length), so every request misses and stores
# its answer (checked: `miss`). The hit's ratio to the floor and the miss's to the binary's own
# cache-off run are the figures issue 18 asks for.
# --floor measures the Pingora floor first (examples/passthrough: a plain
# ProxyHttp to the same mock, one thread, no body inspection), so every
# ratio is against it.
# The body is benches/load.sh's 1,213-byte chat request (its throughput
# body), or --body FILE (a chat request for the alias `fast`).
#
# Prints one markdown table; the last line is machine-readable:
#   RESULT <binary> ir_per_request=<n> [...]
# Exit status is non-zero if a request fails or a count is missing.
set -euo pipefail

usage() {
    sed -n '2,36p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

REQUESTS=2000
WARMUP=200
BUILD=1
KEEP=0
KEY_STORE=0
TRACING=0
CACHE=0
FLOOR=0
BODY=""
declare -a BINARIES=()
while (($#)); do
    case "$1" in
        --requests) REQUESTS=${2:?--requests needs N}; shift 2 ;;
        --warmup) WARMUP=${2:?--warmup needs N}; shift 2 ;;
        --binary) BINARIES+=("${2:?--binary needs PATH}"); shift 2 ;;
        --body) BODY=${2:?--body needs FILE}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        --key-store) KEY_STORE=1; shift ;;
        --tracing) TRACING=1; shift ;;
        --cache) CACHE=1; shift ;;
        --floor) FLOOR=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
((REQUESTS > 0)) || { echo "--requests must be positive" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REL="$ROOT/target/release"
KEY="sk-bench-0123456789abcdef"
((${#BINARIES[@]})) || BINARIES=("$REL/tollgate")
if ((FLOOR)); then
    BINARIES=("$REL/examples/passthrough" "${BINARIES[@]}")
fi

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in valgrind callgrind_control python3; do
    command -v "$tool" >/dev/null || die "$tool is required (apt-get install -y valgrind python3)"
done

if ((BUILD)); then
    log "building (cargo build --release --bin tollgate --example bench_upstream --example passthrough)"
    (cd "$ROOT" && cargo build --release --bin tollgate --example bench_upstream --example passthrough) >&2
fi
MOCK="$REL/examples/bench_upstream"
[[ -x "$MOCK" ]] || die "$MOCK is missing (run without --no-build)"
for b in "${BINARIES[@]}"; do
    [[ -x "$b" ]] || die "$b is missing"
done

TMP=$(mktemp -d /tmp/tollgate-callgrind.XXXXXX)
declare -a STARTED=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if ((KEEP)); then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# The chat body of benches/load.sh (chat.json), byte for byte.
if [[ -n $BODY ]]; then
    cp "$BODY" "$TMP/chat.json"
else
python3 - "$TMP/chat.json" <<'PY'
import json, sys
system = ("You are a careful assistant for an online bookshop. Answer in the customer's "
          "language, be concise, never invent stock levels, and when an order number "
          "is given, restate it before answering.")
msgs = [
    {"role": "system", "content": system},
    {"role": "user", "content": "Hi! I ordered two books last week (order #A-20931) and only one "
     "arrived. The missing one is \"The Left Hand of Darkness\", paperback. Can you check?"},
    {"role": "assistant", "content": "Thanks for the details. Order #A-20931 shipped in two parcels; "
     "the second one, with \"The Left Hand of Darkness\", left our warehouse on Friday and "
     "should arrive within three working days. Would you like the tracking link?"},
    {"role": "user", "content": "Yes please. Also, if it doesn't show up by Thursday, can I get "
     "a refund instead of a replacement? I need it for a book club on Saturday."},
    {"role": "assistant", "content": "Of course. Tracking: https://track.example/parcel/88412. If it has "
     "not arrived by Thursday, reply here and we will refund it the same day."},
    {"role": "user", "content": "Great, thanks. One last thing: do you have the sequel in stock?"},
]
b = {"model": "fast", "messages": msgs, "temperature": 0.7, "max_tokens": 256,
     "top_p": 1, "user": "customer-4411"}
open(sys.argv[1], "wb").write(json.dumps(b, ensure_ascii=False).encode())
PY
fi
BODY_BYTES=$(stat -c %s "$TMP/chat.json")

# Sends N requests of the body on one keep-alive connection, with KEY (or
# the one given); fails on any status but 200 or a closed connection, and,
# with EXPECT_CACHE set, on an answer whose x-tollgate-cache differs.
send() { # port n [key]
    python3 - "$1" "$2" "$TMP/chat.json" "${3:-$KEY}" "${EXPECT_CACHE:-}" <<'PY'
import http.client, os, sys
port, n, path, key, cache = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
body = open(path, "rb").read()
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
# A miss is measured with bodies that differ only in their `user` value,
# written at the same length, so no two requests share a cache key.
marker = b'"customer-4411"'
if cache == "miss" and marker not in body:
    sys.exit('--cache needs a body with "user": "customer-4411"')
tag = os.getpid() % 0x10000
for i in range(n):
    sent = body.replace(marker, b'"%04x%09d"' % (tag, i)) if cache == "miss" else body
    conn.request("POST", "/v1/chat/completions", sent, headers)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200 or r.will_close:
        sys.exit(f"request {i}: status {r.status}, close={r.will_close}: {data[:200]!r}")
    if cache and r.getheader("x-tollgate-cache") != cache:
        sys.exit(f"request {i}: x-tollgate-cache {r.getheader('x-tollgate-cache')!r}, expected {cache!r}")
PY
}

P_MOCK=$(free_port)
log "starting the mock upstream on :$P_MOCK"
"$MOCK" --listen "127.0.0.1:$P_MOCK" --threads 1 >"$TMP/mock.log" 2>&1 &
STARTED+=($!)
wait_port "$P_MOCK" 10 || die "mock upstream did not start (see $TMP/mock.log)"

# Creates a runtime key through the admin API on PORT; prints its secret.
create_key() { # admin-port
    python3 - "$1" <<'PY'
import http.client, json, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=120)
conn.request("POST", "/admin/keys", json.dumps({"name": "bench-runtime"}),
             {"Authorization": "Bearer admin-bench-0123456789", "Content-Type": "application/json"})
r = conn.getresponse()
body = r.read()
if r.status != 201:
    sys.exit(f"creating the runtime key: {r.status} {body[:200]!r}")
print(json.loads(body)["key"])
PY
}

declare -a NAMES=() IRS=()
run_one() { # binary index [store|runtime]
    local bin=$1 i=$2 variant=${3:-} port metrics dir pid admin key=$KEY cache="" expect=
    port=$(free_port)
    metrics=$(free_port)
    admin=$(free_port)
    dir="$TMP/run$i${variant:+-$variant}"
    mkdir -p "$dir"
    case $variant in
        cache-hit) cache="    cache: { ttl: 1h }" expect=hit ;;
        cache-miss) cache="    cache: { ttl: 1ms }" expect=miss ;;
    esac
    cat >"$dir/tollgate.yaml" <<EOF
listen: "127.0.0.1:$port"
metrics_listen: "127.0.0.1:$metrics"
server:
  threads: 1
  pid_file: $dir/tollgate.pid
  upgrade_sock: $dir/tollgate-upgrade.sock
  grace_period: 1s
  shutdown_timeout: 1s
access_log:
  enabled: true
  path: $dir/access.log
providers:
  bench:
    kind: openai
    base_url: http://127.0.0.1:$P_MOCK/v1
    api_key: sk-upstream-bench-key
    health_check:
      enabled: false
models:
  fast:
    routes:
      - provider: bench
        model: bench-model-1
$cache
keys:
  - name: bench
    key: $KEY
EOF
    if [[ $variant == tracing ]]; then
        cat >>"$dir/tollgate.yaml" <<EOF
tracing: { endpoint: "http://127.0.0.1:$P_MOCK", sample_ratio: 1.0 }
EOF
    elif [[ $variant == store || $variant == runtime ]]; then
        cat >>"$dir/tollgate.yaml" <<EOF
admin_listen: "127.0.0.1:$admin"
admin_key: admin-bench-0123456789
key_store: { sqlite: "$dir/keys.db" }
EOF
    fi
    log "[$i] $bin under callgrind on :$port"
    if [[ $(basename "$bin") == passthrough ]]; then
        valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
            "$bin" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$P_MOCK" --threads 1 \
            >"$dir/tollgate.log" 2>&1 &
    else
        valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
            "$bin" --config "$dir/tollgate.yaml" >"$dir/tollgate.log" 2>&1 &
    fi
    pid=$!
    STARTED+=("$pid")
    wait_port "$port" 120 || die "tollgate did not start under valgrind (see $dir/tollgate.log)"
    if [[ $variant == runtime ]]; then
        wait_port "$admin" 120 || die "no admin API (see $dir/tollgate.log)"
        key=$(create_key "$admin") || die "no runtime key (see $dir/tollgate.log)"
    fi
    log "[$i${variant:+ $variant}] $WARMUP warm-up requests"
    send "$port" "$WARMUP" "$key" || die "warm-up failed (see $dir/tollgate.log)"
    callgrind_control -z "$pid" >/dev/null 2>&1
    log "[$i${variant:+ $variant}] $REQUESTS measured requests"
    EXPECT_CACHE=$expect send "$port" "$REQUESTS" "$key" || die "measured requests failed (see $dir/tollgate.log)"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # The dump after zeroing holds the measured requests only. Its
    # `summary:` (or `totals:`) line is the Ir of every thread together.
    local dump ir
    dump=$(ls "$dir"/callgrind.out.* 2>/dev/null | sort -t. -k3 -n | head -1)
    [[ -n $dump ]] || die "no callgrind dump in $dir"
    ir=$(awk '$1 == "summary:" || $1 == "totals:" {print $2; exit}' "$dump")
    [[ -n $ir ]] || die "no instruction count in $dump"
    case $variant in
        store) NAMES+=("$bin+key_store") ;;
        tracing) NAMES+=("$bin+tracing") ;;
        cache-hit) NAMES+=("$bin+cache_hit") ;;
        cache-miss) NAMES+=("$bin+cache_miss") ;;
        runtime) NAMES+=("$bin+key_store,runtime_key") ;;
        *) NAMES+=("$bin") ;;
    esac
    IRS+=("$ir")
}

for i in "${!BINARIES[@]}"; do
    run_one "${BINARIES[$i]}" "$i"
    if ((KEY_STORE)); then
        run_one "${BINARIES[$i]}" "$i" store
        run_one "${BINARIES[$i]}" "$i" runtime
    fi
    if ((TRACING)) && [[ $(basename "${BINARIES[$i]}") != passthrough ]]; then
        run_one "${BINARIES[$i]}" "$i" tracing
    fi
    if ((CACHE)) && [[ $(basename "${BINARIES[$i]}") != passthrough ]]; then
        run_one "${BINARIES[$i]}" "$i" cache-hit
        run_one "${BINARIES[$i]}" "$i" cache-miss
    fi
done

printf '\n%s requests of the %s-byte chat body after %s warm-up, keep-alive, one connection:\n\n' \
    "$REQUESTS" "$BODY_BYTES" "$WARMUP"
printf '| Binary | Ir total | Ir / request | vs first |\n|---|---:|---:|---:|\n'
first=${IRS[0]}
result="RESULT"
for i in "${!NAMES[@]}"; do
    ir=${IRS[$i]}
    per=$(python3 -c "print(f'{$ir / $REQUESTS:.0f}')")
    ratio=$(python3 -c "print(f'{$ir / $first:.4f}')")
    printf '| %s | %s | %s | %s× |\n' "${NAMES[$i]}" "$ir" "$per" "$ratio"
    result+=" ${NAMES[$i]} ir_per_request=$per"
done
echo
echo "$result"
