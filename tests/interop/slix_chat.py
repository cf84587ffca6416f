#!/usr/bin/env python3
"""Interoperability with slixmpp, an XMPP library nobody here wrote.

Two clients log in over STARTTLS (the server offers no SASL before TLS),
verifying the server certificate against --ca; alice sends bob a message;
alice pings the server (XEP-0199). Exits 0 when all of it worked, 1 with a
reason otherwise.
"""
import argparse
import asyncio

from slix_common import TIMEOUT, client, finish, run, start

PLUGINS = ("xep_0030", "xep_0199")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()

    bob = client("bob@localhost/slix", "builder", args.ca, PLUGINS)
    got = asyncio.get_running_loop().create_future()
    bob.add_event_handler(
        "message",
        lambda msg: got.done() or msg["body"] != "hello bob" or got.set_result(msg),
    )
    await start(bob, args.port)

    alice = client("alice@localhost/slix", "wonderland", args.ca, PLUGINS)
    await start(alice, args.port)
    alice.send_message(mto="bob@localhost/slix", mbody="hello bob", mtype="chat")
    msg = await asyncio.wait_for(got, TIMEOUT)
    if str(msg["from"]) != "alice@localhost/slix":
        raise RuntimeError(f"message from {msg['from']}")

    # Not ping(): for the client's own server it counts an error answer as
    # success. send_ping() raises IqError on one and IqTimeout on none.
    await alice.plugin["xep_0199"].send_ping("localhost", timeout=TIMEOUT)
    print("ping ok")

    await finish(alice, bob)


if __name__ == "__main__":
    run(main)
