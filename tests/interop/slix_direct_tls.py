#!/usr/bin/env python3
"""Direct TLS (XEP-0368) with slixmpp: STARTTLS and plaintext disabled, so
the client must speak TLS from the first byte, verifying the server
certificate against --ca. alice logs in, the stream must be encrypted, and
she pings the server. Exits 0 when all of it worked, 1 with a reason.
"""
import argparse

from slix_common import TIMEOUT, client, finish, run, start


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()

    alice = client("alice@localhost/direct", "wonderland", args.ca, ("xep_0199",))
    alice.enable_starttls = False
    alice.enable_plaintext = False
    alice.enable_direct_tls = True
    await start(alice, args.port)
    await alice.plugin["xep_0199"].send_ping("localhost", timeout=TIMEOUT)
    print("ping ok")
    await finish(alice)


if __name__ == "__main__":
    run(main)
