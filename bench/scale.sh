#!/usr/bin/env bash
# How Gatehouse's costs grow with the sessions one node holds. For each
# size N (default 5000 10000 19000; this machine's open-files hard limit
# of about 20,000 caps one process near 19,000), on a fresh release build:
#   held      N sessions logged in and held: 40 % plain TCP, 20 % STARTTLS,
#             20 % Direct TLS, 20 % WebSocket, by several gatehouse-loadgen
#             --mode hold processes (at most 4,000 sessions each, each with
#             its own fd limit and its own loopback source address,
#             127.0.0.111 on) holding until signalled. Then the server's RSS
#             growth per held session, and its CPU over 10 idle seconds
#             (a per-session timer or scan would show here).
#   storm     with N held, a closed-loop login storm of other users
#             (100 clients, $SCALE_LOGINS logins, 1,000 users, from
#             127.0.0.2): logins/s, p99, server CPU per login.
#   fanout    the same storm by users whose rosters (bench/rosters.py
#             behind [roster]) name $SCALE_CONTACTS contacts each, all held
#             sessions (plain TCP): each login sends its presence to them,
#             gets theirs, and tells them when it leaves. The fan-out cost
#             is the extra server CPU per login over the storm's, per
#             contact.
#   shutdown  SIGTERM with N held: seconds until the process exits, and how
#             many held sessions saw the server close them.
# Every user range is its own: holder k logs in user1KK<i>, the storm
# user200<i>, the fan-out user300<i> (tests/fixtures/auth.py accepts any
# userN/passN). One JSON line per run ("N SCENARIO REPORT"), then the
# table (bench/reports.py scale) with each figure's ratio to the smallest
# size's. Every step is bounded; every process it starts is ended on exit.
#
# Usage: bench/scale.sh [N...]       e.g. bench/scale.sh 1000 2000 4000
# Env: SCALE_LOGINS (10000 logins per storm), SCALE_CONTACTS (50).
# Uses the release build in $CARGO_TARGET_DIR if set. Needs python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(5000 10000 19000)
logins=${SCALE_LOGINS:-10000}
contacts=${SCALE_CONTACTS:-50}
per_holder=4000
cargo build --release --quiet -p gatehouse -p gatehouse-loadgen
bin="${CARGO_TARGET_DIR:-target}/release"
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
results="$work/results"
. bench/lib.sh
server=""
helpers=()
cleanup() {
    local pid
    for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${helpers[@]}"; do wait "$pid" 2>/dev/null || true; done
    helpers=()
    stop_server
}
trap 'cleanup; rm -rf "$work"' EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
metric() { # NAME → its value summed over its labels (0 when absent)
    { curl -s --max-time 5 "http://127.0.0.1:$http/metrics" || true; } |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 {v += $2} END {print v+0}'
}

# start: a fresh Gatehouse with a plain/STARTTLS, a Direct TLS and a web
# listener, external auth answering at once, rosters from bench/rosters.py.
# Loopback is exempt from the per-address limits by default; the caps on
# all connections (100,000) and on those not logged in (10,000) are above
# what a run offers (N held, fewer than 1,000 logging in at once).
start() {
    local held_users=$1 dir="$work/server-$2"
    mkdir -p "$dir"
    c2s=$(free_port); direct=$(free_port); web=$(free_port); http=$(free_port)
    rosters=$(free_port)
    python3 bench/rosters.py --port "$rosters" --fan user300 --contacts "$contacts" \
        --held user101 --held-count "$held_users" &
    helpers+=($!)
    cat > "$dir/gatehouse.toml" <<TOML
$(listeners_toml "$c2s" "$direct" "$web")
[limits]
exempt = ["127.0.0.0/8"]
[roster]
url = "http://127.0.0.1:$rosters/roster/%s"
$(fixture_toml "$http" 4)
reply_grace = "0s"
TOML
    wait_port "$rosters"
    RUST_LOG=warn "$bin/gatehouse" --config "$dir/gatehouse.toml" 2> "$dir/log" &
    server=$!
    wait_healthy "$http" "$dir/log"
}

# hold N: starts the holders of N sessions in the background; their
# reports go to $work/holder-N-K.json.
holders=()
hold() {
    local n=$1 k=0 transport share target left chunk
    holders=()
    for transport in tcp:40 starttls:20 tls:20 websocket:20; do
        share=$((n * ${transport#*:} / 100))
        transport=${transport%:*}
        # The remainder of the division goes to plain TCP.
        [ "$transport" != tcp ] || share=$((share + n - n * 40 / 100 - 3 * (n * 20 / 100)))
        case $transport in
            tcp | starttls) target=$c2s ;;
            tls) target=$direct ;;
            websocket) target=$web ;;
        esac
        left=$share
        while [ "$left" -gt 0 ]; do
            k=$((k + 1))
            chunk=$((left < per_holder ? left : per_holder))
            left=$((left - chunk))
            # Holder 1 (plain TCP) holds user101<i>: the fan-out's contacts.
            timeout 1200 "$bin/gatehouse-loadgen" --target "127.0.0.1:$target" \
                --transport "$transport" --source "127.0.0.1$((k + 10))" \
                --mode hold --count "$chunk" --users "$chunk" --concurrency 100 \
                --user "user1$(printf %02d "$k"){i}" --password "pass1$(printf %02d "$k"){i}" \
                --hold-seconds 1000 --max-seconds 300 \
                --timeout 30 --json > "$work/holder-$n-$k.json" 2> "$work/holder-$n-$k.err" &
            holders+=($!)
            helpers+=($!)
        done
    done
}

# held_up N: waits until N sessions are bound (or their count stops growing
# for 20 s, or 300 s pass); prints the count.
held_up() {
    local n=$1 now last=-1 still=0
    for _ in $(seq 300); do
        now=$(metric gatehouse_sessions)
        [ "$now" -lt "$n" ] || break
        if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; fi
        [ "$still" -lt 20 ] || break
        last=$now
        sleep 1
    done
    metric gatehouse_sessions
}

storm() { # SCENARIO N PREFIX SOURCE: users PREFIX<i>, passwords pass<the same>
    local report
    report=$(timeout 300 "$bin/gatehouse-loadgen" --target "127.0.0.1:$c2s" --source "$4" \
        --mode closed --concurrency 100 --count "$logins" --users 1000 \
        --user "user$3{i}" --password "pass$3{i}" \
        --max-seconds 240 --server-pid "$server" --json)
    echo "$2 $1 $report" | tee -a "$results"
}

hz=$(getconf CLK_TCK)
for n in "${sizes[@]}"; do
    echo "scale: N = $n" >&2
    # The fan-out's contacts: holder 1's sessions (plain TCP, user101<i>).
    start "$((n * 40 / 100 < per_holder ? n * 40 / 100 : per_holder))" "$n"
    rss_before=$(rss_kib)
    hold "$n"
    held=$(held_up "$n")
    [ "$held" -ge "$n" ] || echo "scale: only $held of $n sessions held (see $work/holder-$n-*.err)" >&2
    sleep 5 # the logins' garbage and timers settle
    rss_held=$(rss_kib)
    ticks=$(cpu_ticks)
    sleep 10
    idle_ticks=$(($(cpu_ticks) - ticks))
    echo "$n held {\"target\":$n,\"sessions\":$held,\"holders\":${#holders[@]},\"rss_before_kib\":$rss_before,\"rss_held_kib\":$rss_held,\"idle_cpu_seconds_per_second\":$(python3 -c "print($idle_ticks / $hz / 10)"),\"contacts\":$contacts}" |
        tee -a "$results"

    storm storm "$n" 200 127.0.0.2
    storm fanout "$n" 300 127.0.0.3
    still=$(metric gatehouse_sessions)

    # Graceful shutdown with everything held.
    began=$(date +%s.%N)
    kill -TERM "$server"
    for _ in $(seq 1200); do kill -0 "$server" 2>/dev/null || break; sleep 0.05; done
    ended=$(date +%s.%N)
    status=0
    if kill -0 "$server" 2>/dev/null; then
        echo "scale: gatehouse did not exit within 60 s of SIGTERM" >&2
        kill -KILL "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        status='killed after 60 s'
    else
        wait "$server" 2>/dev/null || status=$?
    fi
    server=""
    # The holders end once the server has closed every session; any left
    # after 60 s are told to stop.
    for _ in $(seq 600); do
        alive=0
        for pid in "${holders[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 1 ] || break
        sleep 0.1
    done
    for pid in "${holders[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${holders[@]}"; do wait "$pid" 2>/dev/null || true; done
    python3 - "$n" "$began" "$ended" "$status" "$still" "$work/holder-$n-"*.json <<'PY' | tee -a "$results"
import json, sys
n, began, ended, status, still, *reports = sys.argv[1:]
outcomes = {}
for path in reports:
    try:
        report = json.load(open(path))
    except (OSError, ValueError):
        outcomes["no-report"] = outcomes.get("no-report", 0) + 1
        continue
    for outcome, count in report["outcomes"].items():
        outcomes[outcome] = outcomes.get(outcome, 0) + count
print(n, "shutdown", json.dumps({
    "seconds": round(float(ended) - float(began), 3),
    "exit_status": int(status) if status.isdigit() else status,
    "sessions_before": int(still),
    "sessions_closed_by_server": outcomes.get("connection-reset", 0),
    "holder_outcomes": outcomes}))
PY
    cleanup
done

python3 bench/reports.py scale "$results"
