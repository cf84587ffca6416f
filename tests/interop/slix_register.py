#!/usr/bin/env python3
"""Interoperability: slixmpp registers an account in-band (XEP-0077),
changes its password, and logs in again with the new one.

Exits 0 when all of it worked, 1 with a reason otherwise.
"""
import argparse
import asyncio
import ssl
import sys

import slixmpp

TIMEOUT = 20


async def session(jid, password, port, ctx, register=False, new_password=None):
    c = slixmpp.ClientXMPP(jid, password)
    c.ssl_context = ctx
    c.register_plugin("xep_0030")
    c.register_plugin("xep_0077")
    c.plugin["xep_0077"].force_registration = register
    started = asyncio.get_running_loop().create_future()
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
    c.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    c.add_event_handler(
        "failed_all_auth",
        lambda _: started.done() or started.set_exception(RuntimeError(f"{jid}: login failed")),
    )
    c.connect("127.0.0.1", port)
    if register:
        await asyncio.wait_for(registered, TIMEOUT)
    await asyncio.wait_for(started, TIMEOUT)
    if new_password:
        await c.plugin["xep_0077"].change_password(new_password, timeout=TIMEOUT)
    c.disconnect()
    await asyncio.sleep(0.2)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    args = ap.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca)
    await session("carol@localhost/slix", "first-pass", args.port, ctx, register=True,
                  new_password="second pass: ü&=")
    await session("carol@localhost/slix", "second pass: ü&=", args.port, ctx)
    print("interop ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # report any failure as a test failure
        print(f"interop failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
