#!/usr/bin/env python3
"""Interoperability with slixmpp's XEP-0313 plugin.

bob and alice log in over STARTTLS; alice sends bob three messages; alice
finds the archive in her bare JID's disco#info, reads the query form, and
pages through her archive two results at a time (RSM), forward and back;
bob's archive holds the ids his copies carried. Exits 0 when all of it
worked, 1 with a reason otherwise.
"""
import argparse
import asyncio

from slixmpp import JID

from slix_common import TIMEOUT, client, finish, run, start

PLUGINS = ("xep_0030", "xep_0059", "xep_0297", "xep_0313", "xep_0359")
BODIES = ["mam 1", "mam 2", "mam 3"]


async def archive(c, **kwargs):
    """Every message of c's archive with the filters given, as
    (id, body) pairs, two per page."""
    got = []
    async for msg in c.plugin["xep_0313"].iterate(rsm={"max": 2}, **kwargs):
        result = msg["mam_result"]
        got.append((result["id"], str(result["forwarded"]["stanza"]["body"])))
    return got


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()

    bob = client("bob@localhost/slix", "builder", args.ca, PLUGINS)
    received = []
    done = asyncio.get_running_loop().create_future()

    def on_message(msg):
        received.append(msg)
        if len(received) == len(BODIES) and not done.done():
            done.set_result(True)

    bob.add_event_handler("message", on_message)
    await start(bob, args.port)
    alice = client("alice@localhost/slix", "wonderland", args.ca, PLUGINS)
    await start(alice, args.port)
    for body in BODIES:
        alice.send_message(mto="bob@localhost", mbody=body, mtype="chat")
    await asyncio.wait_for(done, TIMEOUT)
    ids = [msg["stanza_id"]["id"] for msg in received]
    if [str(msg["stanza_id"]["by"]) for msg in received] != ["bob@localhost"] * 3:
        raise RuntimeError(f"stanza ids: {[str(m) for m in received]}")

    info = await alice.plugin["xep_0030"].get_info(jid="alice@localhost", timeout=TIMEOUT)
    if "urn:xmpp:mam:2" not in info["disco_info"]["features"]:
        raise RuntimeError(f"no MAM in {info}")
    form = await alice.plugin["xep_0313"].get_fields(timeout=TIMEOUT)
    if "with" not in form.get_fields():
        raise RuntimeError(f"no with field in {form}")

    # The writes follow delivery: wait until all three are archived.
    for _ in range(50):
        mine = await archive(alice, with_jid=JID("bob@localhost"))
        if len(mine) == len(BODIES):
            break
        await asyncio.sleep(0.1)
    if [body for _, body in mine] != BODIES:
        raise RuntimeError(f"alice's archive: {mine}")
    backwards = await archive(alice, reverse=True)
    if [body for _, body in backwards] != BODIES[::-1]:
        raise RuntimeError(f"alice's archive backwards: {backwards}")
    print("alice ok")

    theirs = await archive(bob)
    if theirs != list(zip(ids, BODIES)):
        raise RuntimeError(f"bob's archive {theirs}, stanza ids {ids}")
    print("bob ok")

    await finish(alice, bob)


if __name__ == "__main__":
    run(main)
