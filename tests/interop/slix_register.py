#!/usr/bin/env python3
"""Interoperability: slixmpp registers an account in-band (XEP-0077) over
STARTTLS, changes its password, and logs in again with the new one.

Exits 0 when all of it worked, 1 with a reason otherwise.
"""
import argparse
import asyncio

import slix_common
from slix_common import TIMEOUT


async def session(jid, password, port, ca, register=False, new_password=None):
    c = slix_common.client(jid, password, ca, ("xep_0030", "xep_0077"))
    # No force_registration: the "register" handler below runs only when
    # the server itself advertised the iq-register stream feature, and the
    # check after start() fails otherwise.
    registered = asyncio.get_running_loop().create_future()

    async def on_register(_):
        iq = c.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = c.boundjid.user
        iq["register"]["password"] = c.password
        await iq.send()
        registered.set_result(True)

    if register:
        c.add_event_handler("register", on_register)
    await slix_common.start(c, port)
    if register and not registered.done():
        raise RuntimeError(f"{jid}: logged in without registering "
                           "(was the iq-register stream feature advertised?)")
    if new_password:
        await c.plugin["xep_0077"].change_password(new_password, timeout=TIMEOUT)
    return c


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()
    first = await session("carol@localhost/one", "first-pass", args.port, args.ca,
                          register=True, new_password="second pass: ü&=")
    again = await session("carol@localhost/two", "second pass: ü&=", args.port, args.ca)
    await slix_common.finish(first, again)


if __name__ == "__main__":
    slix_common.run(main)
