#!/usr/bin/env bash
# Tollgate load benchmark: Tollgate against a direct upstream, nginx and a bare
# Pingora proxy ("the floor"), all on loopback, in one run. Prints one
# markdown table with absolute figures and ratios, and a pass/fail line per
# target (T1-T6). See docs/benchmarks.md.
#
#   benches/load.sh [--threads N] [--quick] [--peers] [--no-concurrency] [--out FILE]
#
# Everything it starts is stopped on exit. Default run: about 5 minutes
# (--quick: about 2 minutes), plus the release build. The concurrency phase
# (T6: 5,000 open streams, 10,000 connections) takes about 40 s of that.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benches/load.sh [options]

  --threads N        worker threads of every proxy (nginx workers, Pingora
                     threads, Tollgate server.threads, LiteLLM workers); default 1
  --mock-threads N   threads of the mock upstream; default 1
  --quick            short cells (about 1 minute, plus about 45 s for the
                     concurrency phase, which keeps its full sizes)
  --duration S       seconds per throughput cell (default 10; --quick: 3)
  --streams N        streaming requests per target (default 100; --quick: 30)
  --no-concurrency   skip the concurrency phase (RSS with --conc-streams open
                     streams, --conc-conns connections served at once)
  --conc-streams N   streams held open at once per target (default 5000)
  --conc-conns N     connections open at once per target (default 10000)
  --peers            also measure LiteLLM proxy 1.74.9 and Portkey gateway
                     1.15.2 (installed under target/bench-peers on first use;
                     needs the PyPI and npm registries)
  --out FILE         also write the report (markdown) to FILE
  --no-build         use the existing release build
  --keep             keep the temp dir (configs, logs, raw results)
  -h, --help         this help
EOF
}

THREADS=1
MOCK_THREADS=1
QUICK=0
PEERS=0
DURATION=""
STREAMS=""
CONCURRENCY=1
CONC_STREAMS=5000
CONC_CONNS=10000
OUT=""
BUILD=1
KEEP=0
while (($#)); do
    case "$1" in
        --threads) THREADS=${2:?--threads needs N}; shift 2 ;;
        --mock-threads) MOCK_THREADS=${2:?--mock-threads needs N}; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --streams) STREAMS=${2:?--streams needs N}; shift 2 ;;
        --no-concurrency) CONCURRENCY=0; shift ;;
        --conc-streams) CONC_STREAMS=${2:?--conc-streams needs N}; shift 2 ;;
        --conc-conns) CONC_CONNS=${2:?--conc-conns needs N}; shift 2 ;;
        --peers) PEERS=1; shift ;;
        --out) OUT=${2:?--out needs FILE}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ((QUICK)); then
    : "${DURATION:=3}" "${STREAMS:=30}"
else
    : "${DURATION:=10}" "${STREAMS:=100}"
fi
HALF=$(((DURATION + 1) / 2))
WARMUP=2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/benches"
REL="$ROOT/target/release"
KEY="sk-bench-0123456789abcdef"
AUTH="Bearer $KEY"
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --------------------------------------------------------------------------
# Tools
need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing ${need[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    else
        die "missing ${need[*]}: apt-get install -y ${need[*]}"
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null || die "python3 is required"

# --------------------------------------------------------------------------
# File limit. The concurrency phase holds 10,000 client connections: the
# client needs one descriptor per connection, a proxy two per stream (client
# and upstream side). Raise the limit for everything started from here on:
# 65536 if allowed (root with CAP_SYS_RESOURCE), else the hard limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
if ((CONCURRENCY)); then
    # Room for the proxy's listeners, logs, pools and the mock's connections.
    max_streams=$(((NOFILE - 1024) / 2))
    max_conns=$((NOFILE - 1024))
    if ((CONC_STREAMS > max_streams)); then
        log "file limit $NOFILE: concurrency streams reduced from $CONC_STREAMS to $max_streams"
        CONC_STREAMS=$max_streams
    fi
    if ((CONC_CONNS > max_conns)); then
        log "file limit $NOFILE: concurrency connections reduced from $CONC_CONNS to $max_conns"
        CONC_CONNS=$max_conns
    fi
    ((CONC_STREAMS > 0 && CONC_CONNS > 0)) || die "file limit $NOFILE is too low for the concurrency phase (use --no-concurrency)"
fi
NGINX_CONNS=$((NOFILE < 65536 ? NOFILE : 65536))

# --------------------------------------------------------------------------
# Processes, cleanup
TMP=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
declare -a STARTED=()

# All descendants of $1 (and $1), breadth first.
proc_tree() {
    local -A kids=()
    local f line rest pid ppid
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        pid=${line%% *}
        rest=${line##*) }
        read -r _ ppid _ <<<"$rest"
        kids[$ppid]+=" $pid"
    done
    local -a queue=("$1") out=()
    while ((${#queue[@]})); do
        local p=${queue[0]}
        queue=("${queue[@]:1}")
        out+=("$p")
        # shellcheck disable=SC2206
        queue+=(${kids[$p]:-})
    done
    echo "${out[@]}"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid all=()
    for pid in "${STARTED[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        # shellcheck disable=SC2207
        all+=($(proc_tree "$pid"))
    done
    if ((${#all[@]})); then
        kill -TERM "${all[@]}" 2>/dev/null || true
        for _ in $(seq 30); do
            local alive=0
            for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        kill -KILL "${all[@]}" 2>/dev/null || true
    fi
    if ((KEEP)); then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
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

# utime+stime ticks of a process tree.
ticks() {
    local total=0 pid line rest
    for pid in $(proc_tree "$1"); do
        { read -r line <"/proc/$pid/stat"; } 2>/dev/null || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

# Sum of a /proc/PID/status field (kB) over a process tree.
status_kb() { # pid field
    local total=0 pid v
    for pid in $(proc_tree "$1"); do
        v=$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# --------------------------------------------------------------------------
# Build
if ((BUILD)); then
    log "building release binaries (cargo build --release --bin tollgate --examples)"
    (cd "$ROOT" && cargo build --release --bin tollgate --examples) >&2
fi
for b in "$REL/tollgate" "$REL/examples/passthrough" "$REL/examples/bench_upstream"; do
    [[ -x "$b" ]] || die "$b is missing (run without --no-build)"
done

# --------------------------------------------------------------------------
# Request bodies
log "writing request bodies"
python3 - "$TMP" <<'PY'
import json, sys
d = sys.argv[1]
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
def body(extra_user=None, stream=False):
    m = list(msgs)
    if extra_user is not None:
        m.append({"role": "user", "content": extra_user})
    b = {"model": "fast", "messages": m, "temperature": 0.7, "max_tokens": 256,
         "top_p": 1, "user": "customer-4411"}
    if stream:
        b["stream"] = True
    return json.dumps(b, ensure_ascii=False).encode()
para = ("Chapter notes: the expedition crosses the ice in winter; \"shifgrethor\" is explained "
        "again, with tabs\tand unicode \u00e9\u00e8 and newlines\n. ")
def big(size):
    text = para * (size // len(para) + 1)
    b = body(text)
    over = len(b) - size
    return body(text[: len(text) - over]) if over > 0 else b
open(f"{d}/chat.json", "wb").write(body())
open(f"{d}/chat_stream.json", "wb").write(body(stream=True))
open(f"{d}/chat_100k.json", "wb").write(big(100 * 1024))
open(f"{d}/chat_8m.json", "wb").write(big(8 * 1024 * 1024))
PY
SMALL_BYTES=$(stat -c %s "$TMP/chat.json")

# --------------------------------------------------------------------------
# Servers
P_MOCK=$(free_port)
P_NGINX=$(free_port)
P_FLOOR=$(free_port)
P_TG=$(free_port)
P_TG_METRICS=$(free_port)

log "starting mock upstream on :$P_MOCK ($MOCK_THREADS threads)"
"$REL/examples/bench_upstream" --listen "127.0.0.1:$P_MOCK" --threads "$MOCK_THREADS" \
    >"$TMP/mock.log" 2>&1 &
STARTED+=($!)
PID_MOCK=$!
wait_port "$P_MOCK" 10 || die "mock upstream did not start (see $TMP/mock.log)"

log "starting nginx on :$P_NGINX ($THREADS workers)"
mkdir -p "$TMP/nginx"
NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes $THREADS;
worker_rlimit_nofile $NOFILE;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections $NGINX_CONNS; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 16m;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream mock {
        server 127.0.0.1:$P_MOCK;
        keepalive 256;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
EOF
"$NGINX" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" -g 'daemon off;' \
    >"$TMP/nginx/stdout.log" 2>&1 &
STARTED+=($!)
PID_NGINX=$!
wait_port "$P_NGINX" 10 || die "nginx did not start (see $TMP/nginx/error.log)"

log "starting passthrough (Pingora floor) on :$P_FLOOR ($THREADS threads)"
"$REL/examples/passthrough" --listen "127.0.0.1:$P_FLOOR" --upstream "127.0.0.1:$P_MOCK" \
    --threads "$THREADS" >"$TMP/passthrough.log" 2>&1 &
STARTED+=($!)
PID_FLOOR=$!
wait_port "$P_FLOOR" 10 || die "passthrough did not start (see $TMP/passthrough.log)"

log "starting tollgate on :$P_TG ($THREADS threads)"
cat >"$TMP/tollgate.yaml" <<EOF
listen: "127.0.0.1:$P_TG"
metrics_listen: "127.0.0.1:$P_TG_METRICS"
server:
  threads: $THREADS
  pid_file: $TMP/tollgate.pid
  upgrade_sock: $TMP/tollgate-upgrade.sock
  grace_period: 1s
  shutdown_timeout: 1s
access_log:
  enabled: true
  path: $TMP/access.log
providers:
  bench:
    kind: openai
    base_url: http://127.0.0.1:$P_MOCK/v1
    api_key: sk-upstream-bench-key
    health_check:
      enabled: true
      interval: 5s
      path: /health
models:
  fast:
    routes:
      - provider: bench
        model: bench-model-1
keys:
  - name: bench
    key: $KEY
EOF
"$REL/tollgate" --config "$TMP/tollgate.yaml" >"$TMP/tollgate.log" 2>&1 &
STARTED+=($!)
PID_TG=$!
wait_port "$P_TG" 20 || die "tollgate did not start (see $TMP/tollgate.log)"

# Targets: name port pid extra-headers
declare -a T_NAME=(direct nginx floor tollgate)
declare -A T_PORT=([direct]=$P_MOCK [nginx]=$P_NGINX [floor]=$P_FLOOR [tollgate]=$P_TG)
declare -A T_PID=([direct]=$PID_MOCK [nginx]=$PID_NGINX [floor]=$PID_FLOOR [tollgate]=$PID_TG)
declare -A T_HDR=()

# --------------------------------------------------------------------------
# Optional peers: LiteLLM proxy and Portkey gateway.
if ((PEERS)); then
    PEER_DIR="$ROOT/target/bench-peers"
    mkdir -p "$PEER_DIR"
    VENV="$PEER_DIR/litellm-venv"
    if [[ ! -x "$VENV/bin/litellm" ]]; then
        log "installing LiteLLM proxy 1.74.9 into $VENV"
        python3 -m venv "$VENV" >&2
        "$VENV/bin/pip" install -q 'litellm[proxy]==1.74.9' >&2 || log "LiteLLM install failed"
    fi
    if [[ -x "$VENV/bin/litellm" ]]; then
        P_LITELLM=$(free_port)
        cat >"$TMP/litellm.yaml" <<EOF
model_list:
  - model_name: fast
    litellm_params:
      model: openai/bench-model-1
      api_base: http://127.0.0.1:$P_MOCK/v1
      api_key: sk-upstream-bench-key
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
general_settings:
  master_key: $KEY
EOF
        log "starting LiteLLM on :$P_LITELLM ($THREADS workers)"
        LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
            "$VENV/bin/litellm" --config "$TMP/litellm.yaml" --host 127.0.0.1 \
            --port "$P_LITELLM" --num_workers "$THREADS" --telemetry False \
            >"$TMP/litellm.log" 2>&1 &
        STARTED+=($!)
        if wait_port "$P_LITELLM" 180; then
            T_NAME+=(litellm)
            T_PORT[litellm]=$P_LITELLM
            T_PID[litellm]=${STARTED[-1]}
        else
            log "LiteLLM did not start (see $TMP/litellm.log); skipping it"
        fi
    fi
    PK_DIR="$PEER_DIR/portkey"
    PK_PKG="$PK_DIR/node_modules/@portkey-ai/gateway"
    if [[ ! -d "$PK_PKG" ]]; then
        log "installing Portkey gateway 1.15.2 into $PK_DIR"
        mkdir -p "$PK_DIR"
        (cd "$PK_DIR" && npm install --no-audit --no-fund --silent '@portkey-ai/gateway@1.15.2') >&2 ||
            log "Portkey install failed"
    fi
    PK_MAIN=""
    for c in build/start-server.js dist/start-server.js start-server.js; do
        [[ -f "$PK_PKG/$c" ]] && PK_MAIN="$PK_PKG/$c" && break
    done
    if command -v node >/dev/null && [[ -n "$PK_MAIN" ]]; then
        P_PORTKEY=$(free_port)
        log "starting Portkey on :$P_PORTKEY (node, single-threaded)"
        (cd "$PK_DIR" && exec node "$PK_MAIN" --port="$P_PORTKEY") >"$TMP/portkey.log" 2>&1 &
        STARTED+=($!)
        if wait_port "$P_PORTKEY" 60; then
            T_NAME+=(portkey)
            T_PORT[portkey]=$P_PORTKEY
            T_PID[portkey]=${STARTED[-1]}
            T_HDR[portkey]="x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:$P_MOCK/v1"
        else
            log "Portkey did not start (see $TMP/portkey.log); skipping it"
        fi
    else
        log "Portkey is not installed or its server script was not found; skipping it"
    fi
fi

# --------------------------------------------------------------------------
# Functional check: every target answers the small request with a completion.
for t in "${T_NAME[@]}"; do
    hdrs=(-H "Content-Type: application/json" -H "Authorization: $AUTH")
    IFS='|' read -r -a extra <<<"${T_HDR[$t]:-}"
    for h in "${extra[@]}"; do [[ -n "$h" ]] && hdrs+=(-H "$h"); done
    ok=0
    for _ in $(seq 50); do
        code=$(curl -s -o "$TMP/check-$t.out" -w '%{http_code}' "${hdrs[@]}" \
            --data-binary "@$TMP/chat.json" "http://127.0.0.1:${T_PORT[$t]}/v1/chat/completions" || true)
        if [[ $code == 200 ]] && grep -q 'chat.completion' "$TMP/check-$t.out"; then ok=1; break; fi
        sleep 0.2
    done
    ((ok)) || die "$t does not answer correctly (last status $code: $(head -c 300 "$TMP/check-$t.out"))"
done
log "all targets answer: ${T_NAME[*]}"

RES="$TMP/results.tsv"
: >"$RES"
for t in "${T_NAME[@]}"; do
    printf '%s\tidle\trss_kb=%s\n' "$t" "$(status_kb "${T_PID[$t]}" VmRSS)" >>"$RES"
done

# One wrk run. Appends "target<TAB>cell<TAB>k=v ..." to $RES.
run_wrk() { # target cell conns seconds body [sample_rss]
    local t=$1 cell=$2 c=$3 d=$4 body=$5 sample=${6:-0}
    local pid=${T_PID[$t]} out="$TMP/wrk-$t-$cell.out"
    local t0 t1 rss=0
    t0=$(ticks "$pid")
    BENCH_BODY="$body" BENCH_AUTH="$AUTH" BENCH_HEADERS="${T_HDR[$t]:-}" \
        wrk -t1 -c"$c" -d"${d}s" --timeout 10s -s "$BENCH/wrk_post.lua" \
        "http://127.0.0.1:${T_PORT[$t]}" >"$out" 2>&1 &
    local wpid=$!
    if ((sample)); then
        sleep "$(((d + 1) / 2))"
        rss=$(status_kb "$pid" VmRSS)
    fi
    wait "$wpid" || true
    t1=$(ticks "$pid")
    local line
    line=$(grep '^RESULT ' "$out" | head -1 | cut -d' ' -f2- || true)
    if [[ -z $line ]]; then
        log "wrk failed for $t/$cell: $(tail -3 "$out" | tr '\n' ' ')"
        line="failed=1"
    fi
    printf '%s\t%s\t%s cpu_ticks=%s rss_kb=%s\n' "$t" "$cell" "$line" "$((t1 - t0))" "$rss" >>"$RES"
}

log "warm-up (${WARMUP}s per target)"
for t in "${T_NAME[@]}"; do
    run_wrk "$t" warmup 32 "$WARMUP" "$TMP/chat.json"
done

log "small body (${SMALL_BYTES} B), 32 connections, ${DURATION}s per target"
for t in "${T_NAME[@]}"; do run_wrk "$t" small_c32 32 "$DURATION" "$TMP/chat.json" 1; done
log "small body, 1 connection, ${DURATION}s per target"
for t in "${T_NAME[@]}"; do run_wrk "$t" small_c1 1 "$DURATION" "$TMP/chat.json"; done
log "100 KiB body, 32 connections, ${HALF}s per target"
for t in "${T_NAME[@]}"; do run_wrk "$t" b100k_c32 32 "$HALF" "$TMP/chat_100k.json"; done
log "8 MiB body, 2 connections, ${HALF}s per target"
for t in "${T_NAME[@]}"; do run_wrk "$t" b8m_c2 2 "$HALF" "$TMP/chat_8m.json"; done

log "streams: $STREAMS sequential streaming requests per target"
for t in "${T_NAME[@]}"; do
    out=$(python3 "$BENCH/stream_client.py" --port "${T_PORT[$t]}" --body "$TMP/chat_stream.json" \
        --auth "$AUTH" --headers "${T_HDR[$t]:-}" -n "$STREAMS" 2>>"$TMP/stream-$t.err" || true)
    [[ -n $out ]] || out='{"errors": -1}'
    printf '%s\tstream\t%s\n' "$t" "$out" >>"$RES"
done

for t in "${T_NAME[@]}"; do
    printf '%s\tend\thwm_kb=%s rss_kb=%s\n' "$t" "$(status_kb "${T_PID[$t]}" VmHWM)" \
        "$(status_kb "${T_PID[$t]}" VmRSS)" >>"$RES"
done
# --------------------------------------------------------------------------
# Concurrency (T6): after the "end" sample, so the peak above is not theirs.
# Only the four base targets: the peers would take minutes to open 5,000
# streams, if they managed at all.
CONC_META=()
if ((CONCURRENCY)); then
    log "concurrency: $CONC_STREAMS open streams, then $CONC_CONNS connections, per target (file limit $NOFILE)"
    for t in direct nginx floor tollgate; do
        for mode in streams conns; do
            if [[ $mode == streams ]]; then
                n=$CONC_STREAMS body="$TMP/chat_stream.json"
            else
                n=$CONC_CONNS body="$TMP/chat.json"
            fi
            out=$(python3 "$BENCH/concurrency.py" --mode "$mode" --port "${T_PORT[$t]}" \
                --body "$body" --auth "$AUTH" --headers "${T_HDR[$t]:-}" -n "$n" \
                --pid "${T_PID[$t]}" --release-port "$P_MOCK" --timeout 120 --label "$t" || true)
            [[ -n $out ]] || out='{"errors": -1}'
            printf '%s\tconc_%s\t%s\n' "$t" "$mode" "$out" >>"$RES"
            # Let closed connections drain (TIME_WAIT, pools) before the next.
            sleep 1
        done
    done
    CONC_META=(--meta "conc_streams=$CONC_STREAMS" --meta "conc_conns=$CONC_CONNS" --meta "nofile=$NOFILE")
fi

ACCESS_LINES=$(wc -l <"$TMP/access.log" 2>/dev/null || echo 0)

CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
python3 "$BENCH/report.py" "$RES" \
    --meta "threads=$THREADS" --meta "mock_threads=$MOCK_THREADS" \
    --meta "duration=$DURATION" --meta "half=$HALF" --meta "streams=$STREAMS" \
    --meta "small_bytes=$SMALL_BYTES" --meta "clk_tck=$CLK_TCK" \
    --meta "nproc=$(nproc)" --meta "cpu=$CPU_MODEL" --meta "kernel=$(uname -r)" \
    --meta "access_log_lines=$ACCESS_LINES" "${CONC_META[@]}" --meta "nginx=$("$NGINX" -v 2>&1 | sed 's/.*: //')" \
    | if [[ -n $OUT ]]; then tee "$OUT"; else cat; fi
