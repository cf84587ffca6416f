#!/usr/bin/env bash
# What a chat message load costs Gatehouse (release build), a fresh server
# per variant, on loopback, with a demo-like config (examples/gatehouse.toml:
# carbons, CSI, stream management at its defaults, which are the demo's —
# ack_every = 10; plain TCP allowed; the fixture auth program, 4 processes
# answering at once, reply_grace = "0s"):
#   messages  gatehouse-loadgen --mode messages: 50 pairs of users, each
#             side sending to the other's full JID with 4 messages in
#             flight, for 20 s (then up to 5 s for what is on its way);
#             messages/s, latency, server CPU per 1000 messages, RSS
#   storm     closed loop, 100 clients, 20,000 logins (README's main storm);
#             logins/s, server CPU per login
# Server CPU and RSS are measured by the load generator (--server-pid) over
# the measured window only: for messages, from the moment every side is
# logged in until every side stopped.
# Usage: bench/messages.sh [VARIANT ...]   (default: every variant below)
# PostgreSQL variants use $GATEHOUSE_TEST_POSTGRES if set, else a throwaway
# server of their own (.ci/postgres, fsync off); each run gets a new
# database. Prints one JSON report per run, then the tables. Every run is
# bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

# One line per run: NAME|SCENARIO|STORAGE|CLIENT FLAGS|EXTRA TOML
#   SCENARIO  messages or storm
#   STORAGE   none, sqlite or postgres ([storage], and [offline] with it)
#   EXTRA     TOML appended to the config (\n for new lines): another
#             dimension is one more line, e.g. an archive on top of SQLite:
#             sqlite-sm-archive|messages|sqlite|--sm|[archive]\nenabled = true
RUNS='
memory-sm|messages|none|--sm|
sqlite-sm|messages|sqlite|--sm|
postgres-sm|messages|postgres|--sm|
memory-nosm|messages|none||
storm-memory-smoff|storm|none||[stream_management]\nenabled = false
storm-memory-sm|storm|none||
storm-sqlite-sm|storm|sqlite||
storm-postgres-sm|storm|postgres||
'
MESSAGES=(--mode messages --pairs 50 --window 4 --seconds 20 --drain 5)
STORM=(--mode closed --concurrency 100 --count 20000 --users 1000 --max-seconds 120)

selected=("$@")
wanted() { [ ${#selected[@]} -eq 0 ] || [[ " ${selected[*]} " == *" $1 "* ]]; }
cargo build --release --quiet -p gatehouse -p gatehouse-loadgen
bin="${CARGO_TARGET_DIR:-target}/release"
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
results="$work/results"
server=""
pgdir=""
cleanup() {
    stop_server
    [ -z "$pgdir" ] || GATEHOUSE_POSTGRES_DIR="$pgdir" .ci/postgres stop
    rm -rf "$work"
}
trap cleanup EXIT
. bench/lib.sh

# storage KIND NAME: the [storage] and [offline] sections for KIND, with a
# new SQLite file or PostgreSQL database named after the run.
storage() {
    case $1 in
    none) ;;
    sqlite)
        printf '[storage]\nsqlite = "%s"\nmax_connections = 4\n[offline]\nenabled = true\n' \
            "$work/$2.sqlite" ;;
    postgres)
        if [ -z "${GATEHOUSE_TEST_POSTGRES:-}" ]; then
            pgdir=$(mktemp -d /tmp/gatehouse-bench-postgres.XXXXXX)
            eval "$(GATEHOUSE_POSTGRES_DIR="$pgdir" .ci/postgres start)"
        fi
        local db="bench_${2//-/_}_$$"
        psql -q "$GATEHOUSE_TEST_POSTGRES" -c "CREATE DATABASE $db" >&2
        printf '[storage]\npostgres = "%s"\nmax_connections = 4\n[offline]\nenabled = true\n' \
            "${GATEHOUSE_TEST_POSTGRES%/*}/$db" ;;
    esac
}

# start NAME STORAGE EXTRA: a fresh server for one run.
start() {
    c2s=$(free_port); http=$(free_port)
    {
        cat <<TOML
hosts = ["localhost"]
[c2s]
listen = "127.0.0.1:$c2s"
require_tls = false
backlog = 1024
max_stanza_bytes = 262144
[carbons]
enabled = true
[csi]
enabled = true
max_held = 256
[http]
listen = "127.0.0.1:$http"
[auth]
backend = "external"
[auth.external]
command = ["python3", "$PWD/tests/fixtures/auth.py"]
processes = 4
reply_grace = "0s"
TOML
        storage "$2" "$1"
        printf '%b\n' "$3"
    } > "$work/gatehouse.toml"
    RUST_LOG=warn "$bin/gatehouse" --config "$work/gatehouse.toml" 2> "$work/log" &
    server=$!
    wait_healthy "$http" "$work/log"
}

while IFS='|' read -r name scenario kind flags extra; do
    [ -n "$name" ] && wanted "$name" || continue
    start "$name" "$kind" "$extra"
    if [ "$scenario" = messages ]; then load=("${MESSAGES[@]}"); else load=("${STORM[@]}"); fi
    # shellcheck disable=SC2086 # FLAGS are words
    report=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$c2s" --server-pid "$server" --json \
        "${load[@]}" $flags)
    echo "$name $scenario $report" | tee -a "$results"
    stop_server
done <<< "$RUNS"

python3 bench/reports.py messages "$results"
