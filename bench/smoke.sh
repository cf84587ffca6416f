#!/usr/bin/env bash
# A short smoke run of gatehouse-loadgen against Gatehouse (the full
# comparison is not a CI job): a closed-loop storm and a hold run over plain
# TCP, and short closed-loop storms over Direct TLS and over WebSocket
# (RFC 7395), all of which must succeed completely; then 5 pairs exchanging
# 2,000 chat messages with stream management, none lost or duplicated. Then
# against the floor (bench/floor, which bench/compare.sh measures Gatehouse
# against): short closed-loop storms over plain TCP and STARTTLS, every
# login of which must succeed.
# Uses the debug build (in $CARGO_TARGET_DIR if set); ends on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p gatehouse --bin gatehouse
cargo build --quiet -p gatehouse-loadgen --bin gatehouse-loadgen
cargo build --quiet -p gatehouse-floor --bin gatehouse-floor
bin="${CARGO_TARGET_DIR:-target}/debug"

work=$(mktemp -d)
. bench/lib.sh
c2s=$(free_port)
http=$(free_port)
direct_tls=$(free_port)
web=$(free_port)
cat > "$work/gatehouse.toml" <<TOML
$(listeners_toml "$c2s" "$direct_tls" "$web")
$(fixture_toml "$http" 2)
TOML
"$bin/gatehouse" --config "$work/gatehouse.toml" 2> "$work/server.log" &
server=$!
trap 'stop_server; rm -rf "$work"' EXIT
wait_healthy "$http" "$work/server.log"

check() { # JSON report, expected successes, expected transport
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); n=r["outcomes"].get("success",0); print(sys.argv[1]); sys.exit(0 if n==int(sys.argv[2]) and r["transport"]==sys.argv[3] else 1)' "$1" "$2" "$3"
}
closed=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$c2s" --mode closed --concurrency 20 --count 300 --server-pid "$server" --max-seconds 60 --json)
check "$closed" 300 tcp
held=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$c2s" --mode hold --count 200 --server-pid "$server" --max-seconds 60 --json)
check "$held" 200 tcp
tls=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$direct_tls" --transport tls --mode closed --concurrency 10 --count 100 --server-pid "$server" --max-seconds 60 --json)
check "$tls" 100 tls
websocket=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$web" --transport websocket --mode closed --concurrency 10 --count 100 --server-pid "$server" --max-seconds 60 --json)
check "$websocket" 100 websocket
messages=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$c2s" --mode messages --pairs 5 --window 4 --messages 400 --sm --server-pid "$server" --seconds 60 --json)
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(sys.argv[1]); sys.exit(0 if r["delivered"]==2000 and r["lost"]==r["duplicated"]==r["errors"]==0 else 1)' "$messages"
stop_server

floor_c2s=$(free_port)
"$bin/gatehouse-floor" --listen "127.0.0.1:$floor_c2s" \
    --tls-cert "$PWD/examples/localhost.crt" --tls-key "$PWD/examples/localhost.key" > "$work/floor.log" 2>&1 &
server=$!
wait_port "$floor_c2s"
plain=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$floor_c2s" --mode closed --concurrency 10 --count 100 --server-pid "$server" --max-seconds 60 --json)
check "$plain" 100 tcp
starttls=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$floor_c2s" --transport starttls --mode closed --concurrency 10 --count 50 --server-pid "$server" --max-seconds 60 --json)
check "$starttls" 50 starttls
echo "loadgen smoke: ok"
