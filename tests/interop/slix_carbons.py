#!/usr/bin/env python3
"""Interoperability of XEP-0280 Message Carbons with slixmpp's xep_0280.

Two slixmpp clients log in as alice (phone and laptop) and one as bob, over
STARTTLS, verifying the server certificate against --ca. The laptop finds
carbons in the server's disco#info and enables them; bob writes to the
phone: the laptop gets a <received/> carbon of it; the phone answers bob:
the laptop gets a <sent/> carbon. Exits 0 when all of it worked, 1 with a
reason otherwise.
"""
import argparse
import asyncio

from slix_common import TIMEOUT, client, finish, run, start, waiter

PLUGINS = ("xep_0030", "xep_0297", "xep_0280")
CARBONS = "urn:xmpp:carbons:2"


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()

    phone = client("alice@localhost/phone", "wonderland", args.ca, PLUGINS)
    laptop = client("alice@localhost/laptop", "wonderland", args.ca, PLUGINS)
    bob = client("bob@localhost/slix", "builder", args.ca, PLUGINS)
    for c in (phone, laptop, bob):
        await start(c, args.port)

    info = await laptop.plugin["xep_0030"].get_info("localhost", timeout=TIMEOUT)
    if CARBONS not in info["disco_info"]["features"]:
        raise RuntimeError(f"no {CARBONS} in disco#info")
    await laptop.plugin["xep_0280"].enable(timeout=TIMEOUT)
    print("enabled")

    def body(text):
        return lambda msg: msg["body"] == text

    def carried(text):
        return lambda msg: msg["carbon_received"]["body"] == text

    original = waiter(phone, "message", body("hello alice"))
    received = waiter(laptop, "carbon_received", carried("hello alice"))
    bob.send_message(mto="alice@localhost/phone", mbody="hello alice", mtype="chat")
    await asyncio.wait_for(original, TIMEOUT)
    copy = (await asyncio.wait_for(received, TIMEOUT))["carbon_received"]
    if copy["from"] != "bob@localhost/slix" or copy["to"] != "alice@localhost/phone":
        raise RuntimeError(f"received carbon from {copy['from']} to {copy['to']}")
    print("received carbon ok")

    answer = waiter(bob, "message", body("hello bob"))
    sent = waiter(laptop, "carbon_sent", lambda msg: msg["carbon_sent"]["body"] == "hello bob")
    phone.send_message(mto="bob@localhost/slix", mbody="hello bob", mtype="chat")
    await asyncio.wait_for(answer, TIMEOUT)
    copy = (await asyncio.wait_for(sent, TIMEOUT))["carbon_sent"]
    if copy["from"] != "alice@localhost/phone":
        raise RuntimeError(f"sent carbon from {copy['from']}")
    print("sent carbon ok")

    await finish(phone, laptop, bob)


if __name__ == "__main__":
    run(main)
