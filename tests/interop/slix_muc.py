#!/usr/bin/env python3
"""Multi-user chat interoperability with slixmpp's XEP-0045 plugin.

alice and bob join --room (gated; the test's gate allows them) and exchange
groupchat messages; colon's join must be refused with not-authorized.
Over STARTTLS, verifying the test certificate. Exits 0 when all
of it worked, 1 with a reason otherwise.
"""
import argparse
import asyncio

import slixmpp
from slixmpp.exceptions import PresenceError

import slix_common
from slix_common import TIMEOUT


async def connect(jid, password, port, ca):
    c = slix_common.client(jid, password, ca, ("xep_0030", "xep_0045"))
    await slix_common.start(c, port)
    return c


def expect_groupchat(c, body):
    """A future resolved with the first groupchat message carrying body."""
    return slix_common.waiter(c, "groupchat_message", lambda msg: msg["body"] == body)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()
    room = slixmpp.JID(args.room)

    alice = await connect("alice@localhost/slix", "wonderland", args.port, args.ca)
    bob = await connect("bob@localhost/slix", "builder", args.port, args.ca)
    muc_alice, muc_bob = alice.plugin["xep_0045"], bob.plugin["xep_0045"]

    await muc_alice.join_muc_wait(room, "Alice", timeout=TIMEOUT)
    _, _, occupants, _ = await muc_bob.join_muc_wait(room, "Bob", timeout=TIMEOUT)
    nicks = sorted(p["from"].resource for p in occupants)
    if nicks != ["Alice", "Bob"]:
        raise RuntimeError(f"bob sees occupants {nicks}")

    to_bob = expect_groupchat(bob, "hello from alice")
    alice.send_message(mto=room, mbody="hello from alice", mtype="groupchat")
    msg = await asyncio.wait_for(to_bob, TIMEOUT)
    if msg["from"] != slixmpp.JID(f"{room}/Alice") or msg["mucnick"] != "Alice":
        raise RuntimeError(f"bob got the message from {msg['from']}")

    to_alice = expect_groupchat(alice, "hi from bob")
    bob.send_message(mto=room, mbody="hi from bob", mtype="groupchat")
    msg = await asyncio.wait_for(to_alice, TIMEOUT)
    if msg["mucnick"] != "Bob":
        raise RuntimeError(f"alice got the message from {msg['from']}")

    colon = await connect("colon@localhost/slix", "pa:ss:word", args.port, args.ca)
    try:
        await colon.plugin["xep_0045"].join_muc_wait(room, "Colon", timeout=TIMEOUT)
        raise RuntimeError("colon joined a room the gate refuses")
    except PresenceError as e:
        if e.condition != "not-authorized" or e.etype != "auth":
            raise RuntimeError(f"colon refused with {e.etype}/{e.condition}")
    print("colon refused: not-authorized")

    await slix_common.finish(alice, bob, colon)


if __name__ == "__main__":
    slix_common.run(main)
