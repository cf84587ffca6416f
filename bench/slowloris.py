#!/usr/bin/env python3
"""A slow-loris swarm against an XMPP listener, for bench/soak.sh.

Usage: slowloris.py --target HOST:PORT [--source IP] [--connections N]
                    [--seconds S] [--byte-every SECONDS] [--timeout SECONDS]

Keeps up to N connections open from --source, each sending the client's
stream header one byte every --byte-every seconds and never finishing it;
when the server closes one (or refuses it), it opens another. After
--seconds it reports, as one JSON object: how many connections it opened,
how many the server refused (closed without a word) or closed (after
its stream error), the longest any stayed open, and how
many were still open past the server's --timeout (its unauthenticated
timeout) plus a 10 s grace: those are hung connections, and a healthy
server has none.
"""
import argparse
import asyncio
import json
import socket
import time

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)
GRACE = 10.0


class Tally:
    def __init__(self):
        self.opened = 0
        self.refused = 0
        self.closed_by_server = 0
        self.longest = 0.0
        self.overdue = 0
        self.open_now = {}


async def connect(host, port, source):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if source:
        sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock)


async def loris(n, args, tally, until):
    host, port = args.target.rsplit(":", 1)
    while time.monotonic() < until:
        try:
            reader, writer = await connect(host, int(port), args.source)
        except OSError:
            tally.refused += 1
            await asyncio.sleep(0.5)
            continue
        tally.opened += 1
        opened = time.monotonic()
        tally.open_now[n] = opened
        closed = asyncio.ensure_future(reader.read(65536))
        sent = 0
        heard = 0
        try:
            while time.monotonic() < until:
                done, _ = await asyncio.wait({closed}, timeout=args.byte_every)
                if done:
                    # Drain what the server says until it closes.
                    data = closed.result()
                    if not data:
                        # Closed at once without a word: the server's
                        # admission refused it.
                        if heard or time.monotonic() - opened > 1:
                            tally.closed_by_server += 1
                        else:
                            tally.refused += 1
                        break
                    heard += len(data)
                    closed = asyncio.ensure_future(reader.read(65536))
                    continue
                writer.write(HEADER[sent % len(HEADER):sent % len(HEADER) + 1])
                sent += 1
                await writer.drain()
        except OSError:
            tally.closed_by_server += 1
        finally:
            lived = time.monotonic() - opened
            tally.longest = max(tally.longest, lived)
            del tally.open_now[n]
            closed.cancel()
            writer.close()
        await asyncio.sleep(0.1)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--source")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--byte-every", type=float, default=5)
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()
    tally = Tally()
    until = time.monotonic() + args.seconds
    workers = [asyncio.ensure_future(loris(n, args, tally, until)) for n in range(args.connections)]
    while time.monotonic() < until:
        await asyncio.sleep(1)
        now = time.monotonic()
        tally.overdue = max(
            tally.overdue,
            sum(1 for t in tally.open_now.values() if now - t > args.timeout + GRACE),
        )
    await asyncio.gather(*workers, return_exceptions=True)
    print(json.dumps({
        "opened": tally.opened,
        "refused": tally.refused,
        "closed_by_server": tally.closed_by_server,
        "longest_seconds": round(tally.longest, 1),
        "hung": tally.overdue,
    }))


asyncio.run(main())
