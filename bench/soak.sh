#!/usr/bin/env bash
# The abuse soak (not a CI job; 10 minutes by default): one release build
# of Gatehouse under everything at once, each part from its own loopback
# address as a separate client would be —
#   held      5,000 sessions logged in and held throughout (127.0.0.1),
#   storm     an honest closed-loop login storm over 2,000 users (127.0.0.1),
#   brute     a password guesser at full speed against user7 (127.0.0.2),
#   loris     a slow-loris swarm of 1,000 connections sending a stream
#             header a byte every 5 s (127.0.0.3),
#   misbehave logins that make the auth program crash, hang or answer
#             garbage, a few per second (127.0.0.4)
# — with the per-address limits on for every address but 127.0.0.1 (the
# honest side stands for a trusted NAT). The server's RSS is sampled every
# 10 s. At the end it checks and prints: RSS at the end of the load within
# 10 % of its level after a minute's warm-up; no honest login answered
# not-authorized and none timed out; no connection left hanging (the slow
# lorises closed by the server within its unauthenticated timeout, and
# every connection gone once every client has left).
#
# Usage: bench/soak.sh [SECONDS]   (600 by default; the warm-up is 60 s of it)
# Needs: python3, curl. Exit status 0 when every check holds.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
warmup=60
cargo build --quiet --release -p gatehouse --bin gatehouse
cargo build --quiet --release -p gatehouse-loadgen --bin gatehouse-loadgen
bin="${CARGO_TARGET_DIR:-target}/release"
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
. bench/lib.sh
c2s=$(free_port)
http=$(free_port)
cat > "$work/gatehouse.toml" <<TOML
hosts = ["localhost"]
log_level = "warn"
[c2s]
listen = "127.0.0.1:$c2s"
require_tls = false
unauthenticated_timeout = "30s"
[limits]
exempt = ["127.0.0.1/32"]
$(fixture_toml "$http" 8)
timeout = "2s"
TOML
"$bin/gatehouse" --config "$work/gatehouse.toml" 2> "$work/server.log" &
server=$!
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
wait_healthy "$http" "$work/server.log"

rss() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
metric() { # NAME → its value summed over its labels (0 when absent)
    curl -s "http://127.0.0.1:$http/metrics" |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 {v += $2} END {print v+0}'
}
loadgen=("$bin/gatehouse-loadgen" --target "127.0.0.1:$c2s" --json)

echo "soak: ${seconds} s against pid $server (work dir $work)" >&2
while kill -0 "$server" 2>/dev/null; do
    echo "$(date +%s) $(rss)" >> "$work/rss.tsv"
    sleep 10
done &
pids+=($!)

# The held sessions first, so they are all up before the storms begin;
# they stay until well after the load is over.
"${loadgen[@]}" --mode hold --count 5000 --concurrency 100 --users 5000 \
    --hold-seconds $((seconds + 60)) --max-seconds 120 --threads 2 > "$work/held.json" &
held=$!
pids+=($held)
for _ in $(seq 120); do
    [ "$(metric gatehouse_sessions)" -ge 5000 ] 2>/dev/null && break
    sleep 1
done
echo "soak: $(metric gatehouse_sessions) sessions held" >&2

"${loadgen[@]}" --mode closed --concurrency 50 --users 2000 --count 100000000 \
    --max-seconds "$seconds" --threads 2 > "$work/storm.json" &
pids+=($!); storm=$!
"${loadgen[@]}" --source 127.0.0.2 --mode closed --concurrency 20 --user user7 \
    --password 'guess{i}' --users 100000 --count 100000000 \
    --max-seconds "$seconds" --timeout 5 > "$work/brute.json" &
pids+=($!); brute=$!
python3 bench/slowloris.py --target "127.0.0.1:$c2s" --source 127.0.0.3 \
    --connections 1000 --seconds "$seconds" --byte-every 5 --timeout 30 > "$work/loris.json" &
pids+=($!); loris=$!
misbehaving=()
for who in crash hang garbage; do
    "${loadgen[@]}" --source 127.0.0.4 --mode open --rate 1 --user "$who" --users 1 \
        --count 100000000 --max-seconds "$seconds" --timeout 10 > "$work/$who.json" &
    pids+=($!); misbehaving+=($!)
done

sleep "$warmup"
warm_rss=$(rss)
echo "soak: RSS after warm-up ${warm_rss} KiB" >&2
wait "$storm" "$brute" "$loris" "${misbehaving[@]}"
sleep 15 # quiet: what the load left behind is released
end_rss=$(rss)
peak_rss=$(awk '{print $2}' "$work/rss.tsv" | sort -n | tail -1)
sessions_at_end=$(metric gatehouse_sessions)

# Every client gone: the server must hold no connection after a moment.
kill "$held" 2>/dev/null || true
wait "$held" 2>/dev/null || true
connections=1
for _ in $(seq 30); do
    connections=$(metric gatehouse_connections)
    [ "$connections" = 0 ] && break
    sleep 1
done
established=$(ss -Htn state established "( sport = :$c2s )" | wc -l)

metrics=$(curl -s "http://127.0.0.1:$http/metrics" | grep -E \
    '^gatehouse_(refused_total|login_throttled|auth_request_duration_seconds_count|auth_process_restarts_total|auth_timeouts_total|logins_total)' || true)
python3 - "$work" "$warm_rss" "$end_rss" "$peak_rss" "$connections" "$established" \
    "$seconds" "$sessions_at_end" "$metrics" <<'PY'
import json, sys
work, warm, end, peak, connections, established, seconds, held_now, metrics = sys.argv[1:]
warm, end, peak = int(warm), int(end), int(peak)
load = lambda name: json.load(open(f"{work}/{name}.json"))
storm, brute, loris = load("storm"), load("brute"), load("loris")
misbehave = {who: load(who)["outcomes"] for who in ("crash", "hang", "garbage")}
print(f"duration {seconds} s; sessions held at the end of the load: {held_now}")
series = [int(line.split()[1]) for line in open(f"{work}/rss.tsv")]
print("RSS every 10 s (MiB):", " ".join(f"{kib/1024:.0f}" for kib in series))
print(f"RSS: {warm/1024:.1f} MiB after warm-up, {peak/1024:.1f} MiB peak, "
      f"{end/1024:.1f} MiB at the end ({(end - warm) / warm * 100:+.1f} %)")
print("storm:", json.dumps(storm["outcomes"]), "logins/s", storm.get("logins_per_second"),
      "p99 ms", storm.get("latency_ms", {}).get("success", {}).get("p99"))
print("brute-forcer:", json.dumps(brute["outcomes"]))
print("slow loris:", json.dumps(loris))
print("misbehaving logins:", json.dumps(misbehave))
print("connections left:", connections, "established sockets:", established)
print(metrics)
checks = {
    "RSS at the end within 10 % of warm-up": end <= warm * 1.10,
    "no honest login not-authorized": storm["outcomes"].get("not-authorized", 0) == 0,
    "no honest login timed out": storm["outcomes"].get("timeout", 0) == 0,
    "no misbehaving login not-authorized":
        all(o.get("not-authorized", 0) == 0 for o in misbehave.values()),
    "no slow loris outlived the timeout": loris["hung"] == 0,
    "no connection left": connections == "0" and established == "0",
}
for name, ok in checks.items():
    print(("ok   " if ok else "FAIL ") + name)
sys.exit(0 if all(checks.values()) else 1)
PY
