#!/usr/bin/env bash
# What auth.external.reply_grace costs a login: Gatehouse (release build)
# with the fixture auth program (4 processes, answering at once), for each
# grace window, measured twice with gatehouse-loadgen:
#   one client  — logins one after another: the latency a login pays;
#   100 clients — closed loop: the throughput a pool of 4 keeps, since each
#                 process is held for the window after every answer.
# Usage: bench/reply_grace.sh [GRACE ...]   (default: 0s 2ms 5ms)
set -euo pipefail
cd "$(dirname "$0")/.."
graces=("$@")
[ ${#graces[@]} -gt 0 ] || graces=(0s 2ms 5ms)
cargo build --release --quiet -p gatehouse -p gatehouse-loadgen

work=$(mktemp -d)
. bench/lib.sh
server=""
trap 'stop_server; rm -rf "$work"' EXIT

results="$work/results"
for grace in "${graces[@]}"; do
    c2s=$(free_port)
    http=$(free_port)
    cat > "$work/gatehouse.toml" <<TOML
hosts = ["localhost"]
[c2s]
listen = "127.0.0.1:$c2s"
require_tls = false
backlog = 1024
$(fixture_toml "$http" 4)
reply_grace = "$grace"
TOML
    RUST_LOG=warn target/release/gatehouse --config "$work/gatehouse.toml" 2> "$work/log" &
    server=$!
    wait_healthy "$http" "$work/log"
    one=$(target/release/gatehouse-loadgen --target "127.0.0.1:$c2s" --server-pid "$server" --json \
        --mode closed --concurrency 1 --count 2000 --users 1000 --max-seconds 120)
    many=$(target/release/gatehouse-loadgen --target "127.0.0.1:$c2s" --server-pid "$server" --json \
        --mode closed --concurrency 100 --count 20000 --users 1000 --max-seconds 120)
    echo "$grace $one" >> "$results"
    echo "$grace $many" >> "$results"
    stop_server
done

python3 - "$results" <<'PY'
import json, sys
lines = [l.split(" ", 1) for l in open(sys.argv[1])]
def lat(r, q):
    return r["latency_ms"]["success"][q]
print("| reply_grace | one client: p50 ms | p99 ms | 100 clients: logins/s | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|")
for (grace, one), (_, many) in zip(lines[0::2], lines[1::2]):
    one, many = json.loads(one), json.loads(many)
    print(f"| {grace} | {lat(one, 'p50'):.2f} | {lat(one, 'p99'):.2f} | {many['logins_per_second']:.0f} "
          f"| {lat(many, 'p50'):.1f} | {lat(many, 'p99'):.1f} |")
PY
