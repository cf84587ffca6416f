#!/usr/bin/env bash
# What a chat message load costs Gatehouse (release build), a fresh server
# per variant, on loopback, with a demo-like config (examples/gatehouse.toml:
# carbons, CSI, stream management at its defaults, which are the demo's —
# ack_every = 10; plain TCP allowed; the fixture auth program, 4 processes
# answering at once, reply_grace = "0s"):
#   messages  gatehouse-loadgen --mode messages: 50 pairs of users, each
#             side sending to the other's full JID with 4 messages in
#             flight, for 20 s (then up to 5 s for what is on its way);
#             messages/s, latency, server CPU per 1000 messages, RSS; and
#             from /metrics, the archive's copies written or not, once its
#             writes settled, and how long after the exchange that was
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
#   STORAGE   none, sqlite or postgres ([storage]; [offline] and [archive]
#             are then on, at their defaults)
#   EXTRA     TOML appended to the config (\n for new lines): another
#             dimension is one more line, as the archive turned off is
RUNS='
memory-sm|messages|none|--sm|
sqlite-sm-archive|messages|sqlite|--sm|
sqlite-sm|messages|sqlite|--sm|[archive]\nenabled = false
postgres-sm-archive|messages|postgres|--sm|
postgres-sm|messages|postgres|--sm|[archive]\nenabled = false
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
# Each loadgen sender is a machine writing hundreds of messages a second,
# far beyond the default read rate meant for people: not shaped here.
read_rate = 1073741824
read_burst = 1073741824
messages_per_second = 1000000
message_burst = 1000000
[carbons]
enabled = true
[csi]
enabled = true
max_held = 256
$(fixture_toml "$http" 4)
reply_grace = "0s"
TOML
        storage "$2" "$1"
        printf '%b\n' "$3"
    } > "$work/gatehouse.toml"
    RUST_LOG=warn "$bin/gatehouse" --config "$work/gatehouse.toml" 2> "$work/log" &
    server=$!
    wait_healthy "$http" "$work/log"
}

# with_archive HTTP_PORT REPORT: the report with what the archive wrote
# (gatehouse_archive_stored_total, ..._write_failures_total by reason) once its
# writes stopped growing (polled every 0.5 s, 60 s at most), and how long
# after the exchange that was.
with_archive() {
    python3 - "$1" "$2" <<'PY'
import json, sys, time, urllib.request
port, report = sys.argv[1], json.loads(sys.argv[2])
def counts():
    """Copies stored, and copies not stored by reason."""
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = {"stored": 0, "paced": 0, "failures": {}}
    for line in scrape.splitlines():
        value = line.rsplit(" ", 1)[-1]
        if line.startswith("gatehouse_archive_stored_total"):
            total["stored"] += int(float(value))
        elif line.startswith("gatehouse_archive_paced_total"):
            total["paced"] += int(float(value))
        elif line.startswith("gatehouse_archive_write_failures_total{reason=\""):
            reason = line.split('"')[1]
            total["failures"][reason] = int(float(value))
    return total
start, last = time.monotonic(), None
while time.monotonic() - start < 60:
    now = counts()
    if now == last:
        break
    last, settled = now, time.monotonic() - start
    time.sleep(0.5)
report["archive"] = dict(last, settled_seconds=round(settled, 1))
print(json.dumps(report))
PY
}

while IFS='|' read -r name scenario kind flags extra; do
    [ -n "$name" ] && wanted "$name" || continue
    start "$name" "$kind" "$extra"
    if [ "$scenario" = messages ]; then load=("${MESSAGES[@]}"); else load=("${STORM[@]}"); fi
    # shellcheck disable=SC2086 # FLAGS are words
    report=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$c2s" --server-pid "$server" --json \
        "${load[@]}" $flags)
    [ "$scenario" != messages ] || report=$(with_archive "$http" "$report")
    echo "$name $scenario $report" | tee -a "$results"
    stop_server
done <<< "$RUNS"

python3 bench/reports.py messages "$results"
