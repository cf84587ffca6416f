#!/usr/bin/env python3
"""Interoperability with slixmpp, an XMPP library nobody here wrote.

Two clients log in over STARTTLS (the server offers no SASL before TLS),
verifying the server certificate against --ca; alice sends bob a message;
alice pings the server (XEP-0199). Exits 0 when all of it worked, 1 with a
reason otherwise.
"""
import argparse
import asyncio
import ssl

import slixmpp

import slix_common
from slix_common import TIMEOUT


def client(jid, password, ctx):
    c = slixmpp.ClientXMPP(jid, password)
    c.ssl_context = ctx
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0199")
    return c


async def start(c, port):
    await slix_common.start(c, port)
    # After STARTTLS slixmpp's socket is the TLS object itself.
    if not isinstance(c.socket, (ssl.SSLSocket, ssl.SSLObject)):
        raise RuntimeError(f"{c.boundjid}: session is not encrypted")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca)

    bob = client("bob@localhost/slix", "builder", ctx)
    got = asyncio.get_running_loop().create_future()
    bob.add_event_handler(
        "message",
        lambda msg: got.done() or msg["body"] != "hello bob" or got.set_result(msg),
    )
    await start(bob, args.port)

    alice = client("alice@localhost/slix", "wonderland", ctx)
    await start(alice, args.port)
    alice.send_message(mto="bob@localhost/slix", mbody="hello bob", mtype="chat")
    msg = await asyncio.wait_for(got, TIMEOUT)
    if str(msg["from"]) != "alice@localhost/slix":
        raise RuntimeError(f"message from {msg['from']}")

    rtt = await alice.plugin["xep_0199"].ping(jid="localhost", timeout=TIMEOUT)
    print(f"ping rtt {rtt:.4f}s")

    for c in (alice, bob):
        c.disconnect()
    await asyncio.sleep(0.2)
    print("interop ok")


if __name__ == "__main__":
    slix_common.run(main)
