#!/usr/bin/env python3
"""Interoperability of XEP-0198 stream management with slixmpp's xep_0198.

alice (slixmpp with xep_0198, over STARTTLS, verifying the server
certificate against --ca) enables stream management with resumption; her
connection is then cut without closing the stream (the TCP transport
aborted), bob writes to her meanwhile, and she reconnects: slixmpp resumes
the session and receives bob's messages exactly once, in order. Exits 0
when all of it worked, 1 with a reason otherwise.
"""
import argparse
import asyncio

from slix_common import TIMEOUT, client, finish, run, start, waiter

COUNT = 5


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()

    alice = client("alice@localhost/phone", "wonderland", args.ca, ("xep_0198",))
    bob = client("bob@localhost/slix", "builder", args.ca)
    enabled = waiter(alice, "sm_enabled")
    await start(alice, args.port)
    await start(bob, args.port)
    enabled = await asyncio.wait_for(enabled, TIMEOUT)
    if enabled["resume"] not in (True, "true", "1"):
        raise RuntimeError(f"resumption not offered: {enabled}")
    print("enabled")

    bodies = []
    alice.add_event_handler(
        "message", lambda msg: bodies.append(msg["body"]) if msg["body"] else None
    )
    gone = waiter(alice, "disconnected")
    # The network goes away: no </stream:stream>, no TLS close_notify.
    alice.transport.abort()
    await asyncio.wait_for(gone, TIMEOUT)
    sent = [f"while away {i}" for i in range(COUNT)]
    for body in sent:
        bob.send_message(mto="alice@localhost/phone", mbody=body, mtype="chat")

    resumed = waiter(alice, "session_resumed")
    alice.connect("127.0.0.1", args.port)
    await asyncio.wait_for(resumed, TIMEOUT)
    print("resumed")
    for _ in range(TIMEOUT * 10):
        if len(bodies) >= COUNT:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # a duplicate would arrive meanwhile
    if bodies != sent:
        raise RuntimeError(f"expected {sent}, got {bodies}")
    print("messages once, in order")
    await finish(alice, bob)


if __name__ == "__main__":
    run(main)
