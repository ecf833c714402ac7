#!/usr/bin/env bash
# TLS termination cost: Tollgate terminating TLS itself against nginx
# terminating TLS in front of the same mock upstream, on loopback.
#
#   benches/tls_load.sh [--threads N] [--duration S] [--conns C] [--no-build]
#
# Three cells per target, with wrk (TLS 1.3, ECDSA P-256 leaf):
#   plain      plaintext HTTP/1.1 keep-alive (the baseline without TLS);
#   keepalive  HTTPS, HTTP/1.1 keep-alive, C connections: requests/s and CPU
#              per request of the proxy process (utime+stime from /proc);
#   handshake  HTTPS with `Connection: close`, so every request is a new TLS
#              handshake (no session resumption on either side): handshakes/s
#              and CPU per handshake.
# Prints a markdown table. Everything it starts is stopped on exit.
set -euo pipefail

THREADS=1
DURATION=10
CONNS=32
BUILD=1
while (($#)); do
    case "$1" in
        --threads) THREADS=${2:?}; shift 2 ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --conns) CONNS=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) sed -n 2,12p "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
for tool in wrk openssl curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || { echo "needs nginx" >&2; exit 1; }
REL="${CARGO_TARGET_DIR:-target}/release"
if ((BUILD)); then
    cargo build --release --locked --bin tollgate --example bench_upstream >&2
fi
CLK_TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d /tmp/tollgate-tls-bench.XXXXXX)
declare -a STARTED=()
cleanup() {
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
# utime+stime ticks of a process and its threads (nginx: master + workers).
ticks() {
    local total=0 pid
    for pid in "$@"; do
        local line rest
        { read -r line <"/proc/$pid/stat"; } 2>/dev/null || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

# A throwaway CA and an ECDSA P-256 leaf for localhost.
openssl ecparam -name prime256v1 -genkey -noout -out "$TMP/ca.key" 2>/dev/null
openssl req -x509 -new -key "$TMP/ca.key" -subj "/CN=bench CA" -days 2 -out "$TMP/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$TMP/leaf.key.ec" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$TMP/leaf.key.ec" -out "$TMP/leaf.key"
openssl req -new -key "$TMP/leaf.key" -subj "/CN=localhost" -out "$TMP/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$TMP/ext"
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -extfile "$TMP/ext" -out "$TMP/leaf.pem" 2>/dev/null

P_MOCK=$(free_port)
"$REL/examples/bench_upstream" --listen "127.0.0.1:$P_MOCK" --threads 2 >"$TMP/mock.log" 2>&1 &
STARTED+=($!)
wait_port "$P_MOCK" || { echo "mock did not start" >&2; exit 1; }

P_NGINX=$(free_port)
P_NGINX_PLAIN=$(free_port)
mkdir -p "$TMP/nginx"
NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes $THREADS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/cb;
    proxy_temp_path $TMP/nginx/p;
    fastcgi_temp_path $TMP/nginx/f;
    uwsgi_temp_path $TMP/nginx/u;
    scgi_temp_path $TMP/nginx/s;
    keepalive_requests 10000000;
    upstream mock { server 127.0.0.1:$P_MOCK; keepalive 256; }
    server {
        listen 127.0.0.1:$P_NGINX ssl;
        listen 127.0.0.1:$P_NGINX_PLAIN;
        ssl_certificate $TMP/leaf.pem;
        ssl_certificate_key $TMP/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
"$NGINX" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" -g 'daemon off;' \
    >"$TMP/nginx/out.log" 2>&1 &
STARTED+=($!)
PID_NGINX=$!
wait_port "$P_NGINX" || { echo "nginx did not start" >&2; cat "$TMP/nginx/error.log" >&2; exit 1; }

P_TG=$(free_port)
P_TG_PLAIN=$(free_port)
KEY="tg-bench-key-0001"
cat >"$TMP/tollgate.yaml" <<EOF
listen: "127.0.0.1:$P_TG"
plain_listen: "127.0.0.1:$P_TG_PLAIN"
tls: { cert: "$TMP/leaf.pem", key: "$TMP/leaf.key", min_version: "1.2", http2: true }
server: { threads: $THREADS, pid_file: $TMP/tg.pid, upgrade_sock: $TMP/tg.sock, grace_period: 1s, shutdown_timeout: 1s }
access_log: { enabled: true, path: $TMP/access.log }
providers:
  bench:
    kind: openai
    base_url: http://127.0.0.1:$P_MOCK/v1
    api_key: sk-upstream-bench-key
    health_check: { enabled: true, interval: 5s, path: /health }
models:
  fast: { routes: [ { provider: bench, model: bench-model-1 } ] }
keys:
  - { name: bench, key: $KEY }
EOF
"$REL/tollgate" --config "$TMP/tollgate.yaml" >"$TMP/tollgate.log" 2>&1 &
STARTED+=($!)
PID_TG=$!
wait_port "$P_TG" || { echo "tollgate did not start" >&2; cat "$TMP/tollgate.log" >&2; exit 1; }

printf '{"model":"fast","messages":[{"role":"user","content":"Hello there"}]}' >"$TMP/body.json"
export BENCH_BODY="$TMP/body.json" BENCH_AUTH="Bearer $KEY"

# run NAME PORT PIDS... ; CLOSE=1 for a handshake per request.
run() {
    local name=$1 port=$2
    shift 2
    local pids=("$@")
    local headers="" scheme=https
    ((${CLOSE:-0})) && headers="Connection: close"
    ((${PLAIN:-0})) && scheme=http
    curl -fsS --cacert "$TMP/ca.pem" -H "Authorization: Bearer $KEY" -d @"$TMP/body.json" \
        "$scheme://localhost:$port/v1/chat/completions" >/dev/null
    local t0 t1 out reqs
    t0=$(ticks "${pids[@]}")
    out=$(BENCH_HEADERS="$headers" wrk -t2 -c"$CONNS" -d"${DURATION}s" -s benches/wrk_post.lua \
        "$scheme://127.0.0.1:$port/v1/chat/completions" 2>&1)
    t1=$(ticks "${pids[@]}")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    local non2xx
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    local rps cpu_us
    rps=$(awk -v r="$reqs" -v d="$DURATION" 'BEGIN {printf "%.0f", r / d}')
    cpu_us=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v r="$reqs" 'BEGIN {printf "%.1f", t / hz * 1e6 / r}')
    echo "$name|$rps|$cpu_us|${non2xx:-0}"
}

NGINX_PIDS=$(pgrep -P "$PID_NGINX" | tr '\n' ' ')
echo "| cell | target | req/s | CPU µs/req | non-2xx |"
echo "|---|---|---|---|---|"
for cell in plain keepalive handshake; do
    CLOSE=0 PLAIN=0 np=$P_NGINX tp=$P_TG
    [[ $cell == handshake ]] && CLOSE=1
    [[ $cell == plain ]] && PLAIN=1 np=$P_NGINX_PLAIN tp=$P_TG_PLAIN
    export CLOSE PLAIN
    # shellcheck disable=SC2086
    IFS='|' read -r _ n_rps n_cpu n_err <<<"$(run nginx "$np" "$PID_NGINX" $NGINX_PIDS)"
    IFS='|' read -r _ t_rps t_cpu t_err <<<"$(run tollgate "$tp" "$PID_TG")"
    echo "| $cell | nginx | $n_rps | $n_cpu | $n_err |"
    echo "| $cell | tollgate | $t_rps | $t_cpu | $t_err |"
    awk -v a="$t_cpu" -v b="$n_cpu" -v c="$cell" 'BEGIN {printf "| %s | tollgate / nginx CPU | | %.2fx | |\n", c, a / b}'
done
