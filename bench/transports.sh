#!/usr/bin/env bash
# What a login storm costs Gatehouse over each client transport, a fresh
# server per transport and per config, on loopback:
#   throughput  closed loop, 100 clients, 20,000 logins
#   held        5,000 sessions logged in and held (RSS per session)
#   overload    auth answering in 20 ms with a pool of 4 (about 170
#               logins/s with the default reply_grace) and a queue of 50,
#               offered 1,000 logins/s for 10 s (tcp, websocket, bosh)
# Throughput and held use bench/reply_grace.sh's config (the fixture auth
# program answering at once, reply_grace = "0s"); overload uses
# bench/compare.sh's overload config. Both add the [web] listener (for
# websocket and bosh) and the Direct TLS listener (examples/localhost.*).
# Usage: bench/transports.sh [tcp] [tls] [websocket] [bosh]   (default: all)
# Prints one JSON report per run, then one Markdown table. Every run is
# bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
transports=("$@")
[ ${#transports[@]} -gt 0 ] || transports=(tcp tls websocket bosh)
cargo build --release --quiet -p gatehouse -p gatehouse-loadgen
bin="${CARGO_TARGET_DIR:-target}/release"
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
results="$work/results"
server=""
trap 'stop_server; rm -rf "$work"' EXIT
. bench/lib.sh

# start DELAY: a fresh server whose auth program answers in DELAY seconds;
# DELAY 0 is the throughput config, anything else the overload one.
start() {
    local delay=$1 pool
    c2s=$(free_port); tls=$(free_port); web=$(free_port); http=$(free_port)
    if [ "$delay" = 0 ]; then
        pool='reply_grace = "0s"'
    else
        # compare.sh's overload queue: capacity x acceptable wait.
        pool='queue = 50'
    fi
    cat > "$work/gatehouse.toml" <<TOML
$(listeners_toml "$c2s" "$tls" "$web")
$(fixture_toml "$http" 4 --delay "$delay")
$pool
TOML
    RUST_LOG=warn "$bin/gatehouse" --config "$work/gatehouse.toml" 2> "$work/log" &
    server=$!
    wait_healthy "$http" "$work/log"
}

run() { # TRANSPORT SCENARIO LOADGEN-ARGS...
    local transport=$1 scenario=$2 port report; shift 2
    case $transport in
        tcp) port=$c2s ;;
        tls) port=$tls ;;
        websocket | bosh) port=$web ;;
    esac
    report=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$port" --transport "$transport" \
        --server-pid "$server" --json "$@")
    echo "$transport $scenario $report" | tee -a "$results"
}

for t in "${transports[@]}"; do
    start 0
    run "$t" throughput --mode closed --concurrency 100 --count 20000 --users 1000 --max-seconds 120
    run "$t" held --mode hold --count 5000 --concurrency 200 --users 5000 --max-seconds 120
    stop_server
    [ "$t" != tls ] || continue
    start 0.02
    run "$t" overload --mode open --rate 1000 --count 10000 --users 1000 --max-seconds 15
    stop_server
done

python3 bench/reports.py transports "$results"
