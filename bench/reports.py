"""The bench scripts' tables, from gatehouse-loadgen's JSON reports.

Shared by bench/compare.sh, bench/transports.sh, bench/messages.sh and
bench/scale.sh, so that their tables count refusals, timeouts and
percentiles the same way.
"""
import json


def load(path):
    """{row: {scenario: report}} from lines "ROW SCENARIO JSON-REPORT"."""
    rows = {}
    for line in open(path):
        row, scenario, report = line.split(" ", 2)
        rows.setdefault(row, {})[scenario] = json.loads(report)
    return rows


def f(value, fmt):
    """`value` formatted, or n/a when the report has none."""
    return "n/a" if value is None else format(value, fmt)


def p99(report, outcome):
    """The 99th percentile latency of `outcome` in ms, if any."""
    return ((report.get("latency_ms") or {}).get(outcome) or {}).get("p99")


def overload(report):
    """An overload run's cells: admitted/s, admitted p99 ms, refused (every
    outcome but success and timeout), the slowest refusal outcome's p99 ms,
    timeouts."""
    outcomes = report.get("outcomes", {})
    refusals = [k for k in outcomes if k not in ("success", "timeout")]
    refusal = max((p99(report, k) for k in refusals), default=None)
    return [f(report.get("logins_per_second"), ".0f"), f(p99(report, "success"), ".0f"),
            str(sum(outcomes[k] for k in refusals)), f(refusal, ".2f"),
            str(outcomes.get("timeout", 0))]


def ratio(value, floor):
    """`value` as a multiple of the floor's, if both were measured."""
    return "n/a" if value is None or not floor else f"{value / floor:.2f}×"


def resumed(report):
    """A resumed-handshake run's cells (n/a when not run): logins/s, p99
    ms, server CPU s / 1000 logins, and the share of logins that resumed."""
    if report is None:
        return ["n/a"] * 4
    logins = report.get("logins") or 0
    share = report.get("tls_resumed_handshakes", 0) / logins * 100 if logins else None
    return [f(report.get("logins_per_second"), ".0f"), f(p99(report, "success"), ".1f"),
            f(report.get("server_cpu_seconds_per_1000"), ".3f"),
            "n/a" if share is None else f"{share:.0f} %"]


def servers(rows):
    """bench/compare.sh's tables: one row per server over plain TCP (the
    floor has no overload run), one per server run over STARTTLS (full
    handshakes, then resumed ones where run), then each server's figures as
    ratios to the floor's from the same run."""
    print("| server | logins/s | p99 ms | server CPU s / 1000 logins | loadgen CPU s / 1000 logins "
          "| RSS / held session | overload: admitted/s | admitted p99 ms | refused | refusal p99 ms "
          "| timeouts | RSS growth in overload |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for server, r in rows.items():
        t, h, o = r.get("throughput", {}), r.get("held", {}), r.get("overload")
        memory = (o or {}).get("server_rss_bytes") or {}
        growth = memory.get("peak", 0) - memory.get("before", 0) if memory else None
        cells = ["n/a"] * 5 if o is None else overload(o)
        print(f"| {server} | {f(t.get('logins_per_second'), '.0f')} | {f(p99(t, 'success'), '.1f')} "
              f"| {f(t.get('server_cpu_seconds_per_1000'), '.3f')} "
              f"| {f(t.get('loadgen_cpu_seconds_per_1000'), '.3f')} "
              f"| {f(h.get('server_rss_bytes_per_held_session'), '.0f')} B | "
              + " | ".join(cells)
              + f" | {'n/a' if growth is None else format(growth / 1048576, '.1f') + ' MiB'} |")
    starttls = {server: r for server, r in rows.items()
                if "throughput-starttls" in r or "held-starttls" in r}
    if starttls:
        print()
        print("| server, over STARTTLS | logins/s | p99 ms | server CPU s / 1000 logins "
              "| loadgen CPU s / 1000 logins | RSS / held session "
              "| resumed: logins/s | p99 ms | server CPU s / 1000 logins | handshakes resumed |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for server, r in starttls.items():
            t, h = r.get("throughput-starttls", {}), r.get("held-starttls", {})
            print(f"| {server} | {f(t.get('logins_per_second'), '.0f')} | {f(p99(t, 'success'), '.1f')} "
                  f"| {f(t.get('server_cpu_seconds_per_1000'), '.3f')} "
                  f"| {f(t.get('loadgen_cpu_seconds_per_1000'), '.3f')} "
                  f"| {f(h.get('server_rss_bytes_per_held_session'), '.0f')} B | "
                  + " | ".join(resumed(r.get("throughput-starttls-resumed"))) + " |")
    floor = rows.get("floor")
    if floor is None:
        return
    print()
    print("| server ÷ floor | transport | logins/s | server CPU / login | RSS / held session |")
    print("|---|---|---|---|---|")
    for server, r in rows.items():
        if server == "floor":
            continue
        for transport, suffix in (("tcp", ""), ("starttls", "-starttls"),
                                  ("starttls, resumed", "-starttls-resumed")):
            t, h = r.get("throughput" + suffix), r.get("held" + suffix)
            if t is None and h is None:
                continue
            t, h = t or {}, h or {}
            ft, fh = floor.get("throughput" + suffix, {}), floor.get("held" + suffix, {})
            cells = [ratio(t.get(k), ft.get(k)) for k in
                     ("logins_per_second", "server_cpu_seconds_per_1000")]
            cells.append(ratio(h.get("server_rss_bytes_per_held_session"),
                               fh.get("server_rss_bytes_per_held_session")))
            print(f"| {server} | {transport} | " + " | ".join(cells) + " |")


def transports(rows):
    """bench/transports.sh's table: one row per client transport (Direct TLS
    has no overload run)."""
    print("| transport | logins/s | p99 ms | server CPU s / 1000 logins | RSS / held session "
          "| overload: admitted/s | admitted p99 ms | refused | refusal p99 ms | timeouts |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for transport, r in rows.items():
        t, h, o = r.get("throughput", {}), r.get("held", {}), r.get("overload")
        cells = ["n/a"] * 5 if o is None else overload(o)
        print(f"| {transport} | {f(t.get('logins_per_second'), '.0f')} | {f(p99(t, 'success'), '.1f')} "
              f"| {f(t.get('server_cpu_seconds_per_1000'), '.3f')} "
              f"| {f(h.get('server_rss_bytes_per_held_session'), '.0f')} B | "
              + " | ".join(cells) + " |")


def peak_mib(report):
    """The server's peak RSS during the run, in MiB, if measured."""
    memory = report.get("server_rss_bytes") or {}
    return memory["peak"] / 1048576 if memory else None


def archive(report):
    """A message run's archive cells: copies written, copies not written
    (and why), messages whose sender was paced, seconds after the exchange
    until writes stopped (n/a without an archive)."""
    a = report.get("archive") or {}
    failures = {k: n for k, n in (a.get("failures") or {}).items() if n}
    if not a.get("stored") and not failures:
        return ["n/a"] * 4
    reasons = ", ".join(sorted(failures))
    not_stored = str(sum(failures.values())) + (f" ({reasons})" if reasons else "")
    return [str(a["stored"]), not_stored, str(a.get("paced", 0)), f"{a['settled_seconds']:.1f} s"]


def messages(rows):
    """bench/messages.sh's tables: one row per variant, message runs first,
    then login storms."""
    print("| variant | messages/s | p50 ms | p99 ms | server CPU s / 1000 messages "
          "| loadgen CPU s / 1000 messages | server RSS peak | sent | lost | duplicated | errors "
          "| archived copies | not archived | senders paced | archive settled after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for variant, r in rows.items():
        m = r.get("messages")
        if m is None:
            continue
        latency = m.get("latency_ms") or {}
        print(f"| {variant} | {f(m.get('messages_per_second'), '.0f')} | {f(latency.get('p50'), '.2f')} "
              f"| {f(latency.get('p99'), '.2f')} | {f(m.get('server_cpu_seconds_per_1000'), '.3f')} "
              f"| {f(m.get('loadgen_cpu_seconds_per_1000'), '.3f')} | {f(peak_mib(m), '.1f')} MiB "
              f"| {m['sent']} | {m['lost']} | {m['duplicated']} | {m['errors']} | "
              + " | ".join(archive(m)) + " |")
    print()
    print("| variant | logins/s | p99 ms | server CPU s / 1000 logins | server RSS peak | failed logins |")
    print("|---|---|---|---|---|---|")
    for variant, r in rows.items():
        s = r.get("storm")
        if s is None:
            continue
        failed = sum(n for k, n in s.get("outcomes", {}).items() if k != "success")
        print(f"| {variant} | {f(s.get('logins_per_second'), '.0f')} | {f(p99(s, 'success'), '.1f')} "
              f"| {f(s.get('server_cpu_seconds_per_1000'), '.3f')} | {f(peak_mib(s), '.1f')} MiB | {failed} |")


def size_of(value):
    """Bytes, or n/a when not measured."""
    return "n/a" if value is None else f"{value:.0f} B"


def scale(rows):
    """bench/scale.sh's tables: one row per size N (sessions held), then
    each size's figures as ratios to the smallest size's. Growing
    linearly, the totals (RSS growth, idle CPU, shutdown time) keep pace
    with N and the per-login and per-contact figures stay near 1×."""
    def figures(r):
        h, s, o, d = (r.get(k) or {} for k in ("held", "storm", "fanout", "shutdown"))
        held = h.get("sessions") or 0
        growth = (h["rss_held_kib"] - h["rss_before_kib"]) * 1024 if h else None
        idle = h.get("idle_cpu_seconds_per_second")
        base, fan = s.get("server_cpu_seconds_per_1000"), o.get("server_cpu_seconds_per_1000")
        contacts = h.get("contacts")
        # CPU s per 1000 logins is ms per login; the difference, per contact, in µs.
        fanout = (fan - base) * 1000 / contacts if None not in (base, fan) and contacts else None
        return {"n": held, "target": h.get("target"), "growth": growth,
                "rss": growth / held if growth is not None and held else None,
                "idle": idle * 1000 if idle is not None else None,
                "rate": s.get("logins_per_second"), "p99": p99(s, "success"),
                "cpu": base, "fan_cpu": fan, "fanout": fanout, "shutdown": d.get("seconds"),
                "closed": d.get("sessions_closed_by_server"),
                "failed": sum(n for k, n in (s.get("outcomes") or {}).items() if k != "success")
                + sum(n for k, n in (o.get("outcomes") or {}).items() if k != "success")}
    sizes = {size: figures(r) for size, r in sorted(rows.items(), key=lambda kv: int(kv[0]))}
    print("| N | sessions held | RSS / session | since the last size | idle CPU ms/s "
          "| logins/s while held | p99 ms | server CPU ms / login | with contacts "
          "| fan-out µs / contact | shutdown s | closed by server | failed storm logins |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    last = None
    for size, x in sizes.items():
        # The slope: what the sessions added since the last size cost each,
        # free of what the first sessions of a process pay once.
        marginal = None
        if last is not None and None not in (x["growth"], last["growth"]) and x["n"] != last["n"]:
            marginal = (x["growth"] - last["growth"]) / (x["n"] - last["n"])
        last = x
        print(f"| {size} | {x['n']} | {size_of(x['rss'])} | {size_of(marginal)} "
              f"| {f(x['idle'], '.1f')} "
              f"| {f(x['rate'], '.0f')} | {f(x['p99'], '.1f')} | {f(x['cpu'], '.3f')} "
              f"| {f(x['fan_cpu'], '.3f')} | {f(x['fanout'], '.2f')} | {f(x['shutdown'], '.2f')} "
              f"| {f(x['closed'], 'd')} | {x['failed']} |")
    if len(sizes) < 2:
        return
    first = next(iter(sizes.values()))
    print()
    print(f"| N ÷ {next(iter(sizes))} | sessions | RSS growth | idle CPU | logins/s | p99 "
          "| CPU / login | fan-out / contact | shutdown |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, x in sizes.items():
        cells = [ratio(x[k], first[k]) for k in
                 ("n", "growth", "idle", "rate", "p99", "cpu", "fanout", "shutdown")]
        print(f"| {size} | " + " | ".join(cells) + " |")


# What each group of perf samples is, tried in order on (object, symbol):
# the first match names the sample's group.
PROFILE_GROUPS = [
    ("kernel: TCP, accept/close, epoll, wake-ups and context switches",
     lambda dso, sym: dso == "[kernel.kallsyms]"),
    ("allocator (glibc malloc/free)",
     lambda dso, sym: dso.startswith("libc") and any(
         w in sym for w in ("malloc", "free", "unlink_chunk", "consolidate", "_int_"))),
    ("libc, other (memcpy, syscall stubs)", lambda dso, sym: dso.startswith("libc") or dso == "[vdso]"),
    ("XML parsing (rxml, the stream parser)",
     lambda dso, sym: "writer" not in sym and any(w in sym for w in (
         "rxml::parser", "rxml::lexer", "NamespaceResolver", "StreamParser", "partial::",
         "xml_map", "rxml_validation", "RawParser", "InnerParser"))),
    ("XML writing (minidom, rxml's writer)",
     lambda dso, sym: any(w in sym for w in ("minidom", "rxml::writer", "escape", "to_bytes", "xso"))),
    ("TLS: rustls and ring's crypto",
     lambda dso, sym: "ring_core" in sym or "ring::" in sym or "rustls" in sym
     or sym.lstrip("_").startswith(("fe4_", "fe_", "x25519", "ecp_nistz", "p256", "aes_", "gcm_"))),
    ("actix messages and contexts", lambda dso, sym: "actix" in sym),
    ("tokio runtime, I/O and timers", lambda dso, sym: "tokio::" in sym or "mio::" in sym),
    ("channels, tokens, futures", lambda dso, sym: any(
        w in sym for w in ("futures", "cancellation", "tokio_util"))),
    ("metrics", lambda dso, sym: "metrics" in sym),
    ("maps and hashing", lambda dso, sym: any(
        w in sym for w in ("hash", "Hash", "btree", "BTree", "moka"))),
]


def profile(lines):
    """Groups `perf report --no-children -g none --sort dso,sym` lines."""
    import re
    groups, other = {}, {}
    for line in lines:
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
        if not m:
            continue
        share, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
        name = next((n for n, test in PROFILE_GROUPS if test(dso, sym)), None)
        if name is None:
            name = "other (Gatehouse's own code, std)"
            other[sym[:90]] = other.get(sym[:90], 0) + share
        groups[name] = groups.get(name, 0) + share
    print("| share of samples | what |")
    print("|---|---|")
    for name, share in sorted(groups.items(), key=lambda g: -g[1]):
        print(f"| {share:.1f} % | {name} |")
    print()
    print("Largest in other:", ", ".join(
        f"{sym} {share:.1f} %" for sym, share in sorted(other.items(), key=lambda o: -o[1])[:6]))


if __name__ == "__main__":
    # Usage: reports.py servers|transports|messages|scale RESULTS, or
    # reports.py profile < PERF-REPORT
    import sys
    if sys.argv[1] == "profile":
        profile(sys.stdin)
        sys.exit()
    table = {"servers": servers, "transports": transports, "messages": messages,
             "scale": scale}[sys.argv[1]]
    print()
    table(load(sys.argv[2]))
