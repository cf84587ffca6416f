# Shared by the bench scripts (sourced, not run): a free loopback port,
# waiting until a started server accepts on a port or a started Gatehouse
# answers on its operator listener, stopping it, and the tables every
# script's Gatehouse config ends with.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: returns once something accepts on the loopback PORT;
# after 20 s, fails.
wait_port() {
    for _ in $(seq 200); do
        python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server did not start on port $1" >&2; return 1
}

# wait_healthy HTTP_PORT LOG: returns once /health answers; after 5 s,
# prints the server's LOG to stderr and fails.
wait_healthy() {
    for _ in $(seq 50); do
        python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "http://127.0.0.1:$1/health" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "gatehouse did not start:" >&2; cat "$2" >&2; return 1
}

# stop_server: ends the server whose pid is in $server, if any, and waits
# for it.
stop_server() {
    [ -z "${server:-}" ] || { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; }
}

# listeners_toml C2S_PORT DIRECT_TLS_PORT WEB_PORT: the start of a config
# with every client listener on loopback: c2s with STARTTLS offered (not
# required) and Direct TLS, both with examples/localhost.*, and the web
# listener (WebSocket, BOSH); it ends inside [web].
listeners_toml() {
    printf '%s\n' 'hosts = ["localhost"]' '[c2s]' "listen = \"127.0.0.1:$1\"" \
        "direct_tls_listen = \"127.0.0.1:$2\"" "tls_cert = \"$PWD/examples/localhost.crt\"" \
        "tls_key = \"$PWD/examples/localhost.key\"" 'require_tls = false' 'backlog = 1024' \
        '[web]' "listen = \"127.0.0.1:$3\""
}

# fixture_toml HTTP_PORT PROCESSES [ARG...]: the end every bench script's
# Gatehouse config shares: the operator listener ([http]) on the loopback
# HTTP_PORT and external auth through tests/fixtures/auth.py (run with
# ARGs, such as --delay 0.02) in PROCESSES processes. It ends inside
# [auth.external], so a caller may append more of that table's keys
# (queue, reply_grace, timeout) or later tables. Run from the repository's
# root, as the scripts are.
fixture_toml() {
    local http=$1 processes=$2 command arg
    shift 2
    command="\"python3\", \"$PWD/tests/fixtures/auth.py\""
    for arg in "$@"; do command+=", \"$arg\""; done
    printf '[http]\nlisten = "127.0.0.1:%s"\n[auth]\nbackend = "external"\n[auth.external]\ncommand = [%s]\nprocesses = %s\n' \
        "$http" "$command" "$processes"
}

# storm_toml C2S_PORT HTTP_PORT DELAY: Gatehouse's config for the login
# storms (compare.sh, profile.sh): STARTTLS offered, not required, with
# examples/localhost.*; external auth through four fixture processes
# answering in DELAY seconds. With DELAY 0 the queue is the default and
# reply_grace "0s": the fixture answers at once and exactly once, so its
# answers are trusted without the window, which would cap the pool at
# about 1,200 logins/s and measure the window instead of the server.
# Otherwise (overload) the queue is sized to capacity x acceptable wait:
# 200 logins/s x 0.25 s = 50, and reply_grace is the default.
storm_toml() {
    printf '%s\n' 'hosts = ["localhost"]' '[c2s]' "listen = \"127.0.0.1:$1\"" 'require_tls = false' \
        "tls_cert = \"$PWD/examples/localhost.crt\"" "tls_key = \"$PWD/examples/localhost.key\"" \
        'backlog = 1024'
    fixture_toml "$2" 4 --delay "$3"
    if [ "$3" = 0 ]; then
        printf '%s\n' 'queue = 1024' 'reply_grace = "0s"'
    else
        printf '%s\n' 'queue = 50'
    fi
}
