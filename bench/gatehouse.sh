#!/usr/bin/env bash
# Login-storm figures for Gatehouse alone, with the release build:
#   throughput  closed loop, 100 clients, 20,000 logins
#   held        10,000 sessions logged in and held (RSS per session)
#   overload    auth program answering in 20 ms with a pool of 4 (about
#               200 logins/s of capacity), offered 1,000 logins/s for 10 s
# Each line printed is the load generator's JSON report. Loopback only;
# every run is bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p gatehouse -p gatehouse-loadgen
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# start_server AUTH_ARGS QUEUE
start_server() {
    c2s=$(free_port); http=$(free_port)
    cat > "$work/gatehouse.toml" <<TOML
hosts = ["localhost"]
[c2s]
listen = "127.0.0.1:$c2s"
require_tls = false
backlog = 4096
[http]
listen = "127.0.0.1:$http"
[auth]
backend = "external"
[auth.external]
command = ["python3", "$PWD/tests/fixtures/auth.py" $1]
processes = 4
queue = $2
TOML
    target/release/gatehouse --config "$work/gatehouse.toml" 2> "$work/server.log" &
    server=$!
    for _ in $(seq 50); do
        python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "http://127.0.0.1:$http/health" 2>/dev/null && break
        sleep 0.1
    done
}
stop_server() { kill "$server"; wait "$server" || true; server=""; }
loadgen() { target/release/gatehouse-loadgen --target "127.0.0.1:$c2s" --server-pid "$server" --json "$@"; }

start_server "" 1024
echo "throughput $(loadgen --mode closed --concurrency 100 --count 20000 --users 1000 --max-seconds 120)"
echo "held $(loadgen --mode hold --count 10000 --concurrency 200 --users 10000 --max-seconds 120)"
stop_server

# Queue sized to capacity x acceptable wait: 200/s x 0.25 s = 50.
start_server ', "--delay", "0.02"' 50
echo "overload $(loadgen --mode open --rate 1000 --count 10000 --users 1000 --max-seconds 15)"
stop_server
