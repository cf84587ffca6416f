#!/usr/bin/env bash
# Login storms against Gatehouse, Prosody 0.12, ejabberd and the floor
# (bench/floor: canned replies, no XML, no auth), one server at a time, on
# loopback, with the same load generator and the same loads:
#   throughput  closed loop, 100 clients, 20,000 logins
#   held        10,000 sessions logged in and held (RSS per session)
#   overload    auth answering in 20 ms with a pool of 4 (about 200
#               logins/s), offered 1,000 logins/s for 10 s (not the floor:
#               it has no auth to overload)
# Gatehouse, Prosody and the floor also run throughput and held over
# STARTTLS (examples/localhost.*, offered but not required, on a fresh
# server); ejabberd is configured without a certificate. Gatehouse and the
# floor, on that same server, then run throughput over STARTTLS with
# resumed handshakes (--resume: each of the 1,000 accounts keeps the
# session tickets it is given and resumes with one, so all but its first
# handshake are TLS 1.3 resumptions; both servers issue one stateless
# ticket per handshake from a rotating ticketer, no session cache).
# Gatehouse and ejabberd authenticate through the same external program
# (tests/fixtures/auth.py; ejabberd with its own protocol, pool of 4,
# backlog 1024, auth cache off). Prosody uses its built-in internal_plain
# with pre-created users, which flatters it: no external round-trip, so
# its overload run has no slow auth program to overload.
# Usage: bench/compare.sh [gatehouse] [prosody] [ejabberd] [floor]   (default: all)
# Installs prosody and ejabberd from Debian's packages if missing. Prints
# one JSON report per run, then the tables, the last one every server's
# figures as ratios to the floor's of the same run. Every run is bounded.
# Uses the release build in $CARGO_TARGET_DIR if set.
set -euo pipefail
cd "$(dirname "$0")/.."
servers=("$@")
[ ${#servers[@]} -gt 0 ] || servers=(gatehouse prosody ejabberd floor)
cargo build --release --quiet -p gatehouse -p gatehouse-loadgen -p gatehouse-floor
bin="${CARGO_TARGET_DIR:-target}/release"
for s in "${servers[@]}"; do
    if [ "$s" != gatehouse ] && [ "$s" != floor ] && ! command -v "$s" >/dev/null && ! command -v "${s}ctl" >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prosody ejabberd >/dev/null
    fi
done
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
chmod 755 "$work"
auth="$PWD/tests/fixtures/auth.py"
results="$work/results"
pid=""
port=""
stop() {
    [ -n "$pid" ] || return 0
    pkill -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pkill -f "beam.smp.*gatebench" 2>/dev/null || true
    for _ in $(seq 100); do pgrep -f "beam.smp.*gatebench" >/dev/null || break; sleep 0.1; done
    pid=""
}
trap 'stop; rm -rf "$work"' EXIT
. bench/lib.sh
server_pid() { # the process doing the work, for CPU and RSS
    case $1 in
        gatehouse | floor) echo "$pid" ;;
        prosody) pgrep -f "lua.*prosody -F --config $work" | head -1 ;;
        ejabberd) pgrep -f "beam.smp.*gatebench" | head -1 ;;
    esac
}

# start SERVER DELAY: DELAY is the auth program's answer time in seconds.
start() {
    local server=$1 delay=$2 dir="$work/$1"
    rm -rf "$dir"; mkdir -p "$dir"
    port=$(free_port)
    case $server in
    gatehouse)
        storm_toml "$port" "$(free_port)" "$delay" > "$dir/gatehouse.toml"
        # Warnings only, as the others are configured: a log line per login
        # is CPU the comparison should not charge to one server alone.
        RUST_LOG=warn "$bin/gatehouse" --config "$dir/gatehouse.toml" 2> "$dir/log" &
        pid=$! ;;
    floor)
        # STARTTLS offered but not required, as Gatehouse's; no auth, so
        # DELAY does not apply.
        "$bin/gatehouse-floor" --listen "127.0.0.1:$port" \
            --tls-cert "$PWD/examples/localhost.crt" --tls-key "$PWD/examples/localhost.key" \
            > "$dir/out" 2>&1 &
        pid=$! ;;
    prosody)
        # Its own copy of the certificate, readable by its user.
        mkdir -p "$dir/data/localhost/accounts" "$dir/certs"
        cp examples/localhost.crt examples/localhost.key "$dir/certs/"
        python3 -c 'import sys
for n in range(1, 10001):
    open(f"{sys.argv[1]}/user{n}.dat", "w").write("return {\n\t[\"password\"] = \"pass%d\";\n};\n" % n)' "$dir/data/localhost/accounts"
        cat > "$dir/prosody.cfg.lua" <<LUA
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
c2s_ports = { $port }
interfaces = { "127.0.0.1" }
http_ports = { }
https_ports = { }
s2s_ports = { }
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix" }
authentication = "internal_plain"
storage = "internal"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
certificates = "$dir/certs"
ssl = { certificate = "$dir/certs/localhost.crt"; key = "$dir/certs/localhost.key"; }
log = { warn = "$dir/prosody.log" }
VirtualHost "localhost"
LUA
        chown -R prosody "$dir"
        # Servers that do not raise their own open-files limit get the hard
        # limit, as Gatehouse does for itself.
        runuser -u prosody -- sh -c 'ulimit -n "$(ulimit -Hn)"; exec prosody -F --config "$1"' \
            sh "$dir/prosody.cfg.lua" > "$dir/out" 2>&1 &
        pid=$! ;;
    ejabberd)
        mkdir -p "$dir/db" "$dir/logs"
        cat > "$dir/ejabberd.yml" <<YML
hosts: [localhost]
loglevel: warning
listen:
  - port: $port
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: false
    backlog: 1024
auth_method: external
extauth_program: "python3 $auth --protocol ejabberd --delay $delay"
extauth_pool_size: 4
auth_use_cache: false
modules:
  mod_roster: {}
  mod_disco: {}
  mod_ping: {}
YML
        chown -R ejabberd "$dir"
        runuser -u ejabberd -- sh -c 'ulimit -n "$(ulimit -Hn)"; exec ejabberdctl "$@"' sh \
            --config-dir "$dir" --spool "$dir/db" --logs "$dir/logs" \
            --node "gatebench$RANDOM@localhost" foreground > "$dir/out" 2>&1 &
        pid=$! ;;
    esac
    wait_port "$port"
}

run() { # NAME SCENARIO LOADGEN-ARGS...
    local name=$1 scenario=$2; shift 2
    local report
    report=$("$bin/gatehouse-loadgen" --target "127.0.0.1:$port" --server-pid "$(server_pid "$name")" --json "$@")
    echo "$name $scenario $report" | tee -a "$results"
}

storms() { # NAME SUFFIX LOADGEN-ARGS...: throughput and held
    local name=$1 suffix=$2; shift 2
    run "$name" "throughput$suffix" --mode closed --concurrency 100 --count 20000 --users 1000 --max-seconds 120 "$@"
    run "$name" "held$suffix" --mode hold --count 10000 --concurrency 200 --users 10000 --max-seconds 180 "$@"
}

for s in "${servers[@]}"; do
    start "$s" 0
    storms "$s" ""
    stop
    case $s in gatehouse | prosody | floor)
        start "$s" 0
        storms "$s" -starttls --transport starttls
        case $s in gatehouse | floor)
            run "$s" throughput-starttls-resumed --mode closed --concurrency 100 --count 20000 \
                --users 1000 --max-seconds 120 --transport starttls --resume ;;
        esac
        stop ;;
    esac
    [ "$s" != floor ] || continue
    start "$s" 0.02
    run "$s" overload --mode open --rate 1000 --count 10000 --users 1000 --max-seconds 15
    stop
done

python3 bench/reports.py servers "$results"
