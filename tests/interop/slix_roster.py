#!/usr/bin/env python3
"""Interoperability of rosters from the application with slixmpp.

alice logs in over STARTTLS (verifying the server certificate against
--ca) and asks for her roster, which must be the one the test's roster
service holds (bob, named "Bob", in group "Friends"). She prints
"roster ok" and waits: the test then changes her roster in the service and
asks the server to refresh it, and the roster push must add carol (named
"Carol"). Exits 0 when all of it worked, 1 with a reason otherwise.
"""
import argparse
import asyncio

from slix_common import TIMEOUT, client, finish, run, start


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()

    alice = client("alice@localhost/slix", "wonderland", args.ca)
    pushed = asyncio.get_running_loop().create_future()

    def on_update(_):
        if alice.client_roster.has_jid("carol@localhost") and not pushed.done():
            pushed.set_result(True)

    alice.add_event_handler("roster_update", on_update)
    await start(alice, args.port, presence=False)

    await alice.get_roster(timeout=TIMEOUT)
    roster = alice.client_roster
    if sorted(roster.keys()) != ["bob@localhost"]:
        raise RuntimeError(f"roster is {sorted(roster.keys())}")
    bob = roster["bob@localhost"]
    if bob["name"] != "Bob" or bob["groups"] != ["Friends"]:
        raise RuntimeError(f"bob is {bob['name']!r} in {bob['groups']!r}")
    if bob["subscription"] != "both":
        raise RuntimeError(f"subscription to bob is {bob['subscription']}")
    alice.send_presence()
    print("roster ok", flush=True)

    await asyncio.wait_for(pushed, TIMEOUT)
    carol = roster["carol@localhost"]
    if carol["name"] != "Carol" or carol["subscription"] != "both":
        raise RuntimeError(f"carol is {carol['name']!r}, {carol['subscription']}")
    print("push ok", flush=True)

    await finish(alice)


if __name__ == "__main__":
    run(main)
