#!/usr/bin/env bash
# Where a login's CPU goes: runs bench/compare.sh's throughput load
# (closed loop, 100 clients, 20,000 logins over 1,000 accounts, external
# auth through tests/fixtures/auth.py answering at once, reply_grace "0s")
# against the floor and against Gatehouse built with Cargo.toml's
# `profiling` profile (release code with line tables), in PAIRS
# interleaved pairs (a fresh server each run: floor, Gatehouse, floor, ...),
# and prints each pair's server CPU per login and ratio and the median
# ratio: one pair moves by 10-20 % on a virtual machine, the median of
# several much less. Then the load once more against Gatehouse measured by
# `perf record` (cpu-clock samples of the server process only), and the
# samples grouped by what they were doing.
# Usage: bench/profile.sh [tcp|starttls] [PAIRS]   (default tcp 5)
# Needs perf (Debian's linux-perf). The perf data is kept in the printed
# directory for `perf report -i DIR/perf.data`.
set -euo pipefail
cd "$(dirname "$0")/.."
transport=${1:-tcp}
pairs=${2:-5}
cargo build --profile profiling --quiet -p gatehouse -p gatehouse-loadgen -p gatehouse-floor
bin="${CARGO_TARGET_DIR:-target}/profiling"
ulimit -n "$(ulimit -Hn)"
. bench/lib.sh
work=$(mktemp -d /tmp/gatehouse-profile.XXXXXX)
server=""
trap 'stop_server' EXIT

# start NAME: a fresh server on a free port, pid in $server, port in $port.
start() {
    port=$(free_port)
    case $1 in
    gatehouse)
        storm_toml "$port" "$(free_port)" 0 > "$work/gatehouse.toml"
        RUST_LOG=warn "$bin/gatehouse" --config "$work/gatehouse.toml" 2> "$work/gatehouse.log" &
        ;;
    floor)
        "$bin/gatehouse-floor" --listen "127.0.0.1:$port" \
            --tls-cert "$PWD/examples/localhost.crt" --tls-key "$PWD/examples/localhost.key" \
            > "$work/floor.log" 2>&1 &
        ;;
    esac
    server=$!
    wait_port "$port"
}

# storm: the throughput load; prints server CPU ms per login.
storm() {
    "$bin/gatehouse-loadgen" --target "127.0.0.1:$port" --transport "$transport" \
        --server-pid "$server" --mode closed --concurrency 100 --count 20000 --users 1000 \
        --max-seconds 120 --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["server_cpu_seconds_per_1000"])'
}

warm() {
    "$bin/gatehouse-loadgen" --target "127.0.0.1:$port" --transport "$transport" \
        --mode closed --concurrency 100 --count 3000 --users 1000 --max-seconds 60 --json > /dev/null
}

ratios=()
for pair in $(seq "$pairs"); do
    start floor; warm; floor=$(storm); stop_server
    start gatehouse; warm; gatehouse=$(storm); stop_server
    ratio=$(python3 -c "print(round($gatehouse / $floor, 2))")
    ratios+=("$ratio")
    echo "transport $transport, pair $pair: server CPU ms per login: gatehouse $gatehouse," \
        "floor $floor, ratio $ratio"
done
echo "transport $transport: ratio to the floor over $pairs pairs: median" \
    "$(python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' "${ratios[@]}")," \
    "from $(printf '%s\n' "${ratios[@]}" | sort -n | head -1) to $(printf '%s\n' "${ratios[@]}" | sort -n | tail -1)"

start gatehouse; warm
perf record -e cpu-clock -F 1000 -p "$server" -o "$work/perf.data" 2> "$work/perf.log" &
perf=$!
sleep 0.5
storm > /dev/null
kill -INT "$perf"; wait "$perf" || true
stop_server

perf report -i "$work/perf.data" --no-children -g none --sort dso,sym 2>/dev/null |
    python3 bench/reports.py profile
echo "perf data: $work/perf.data"
