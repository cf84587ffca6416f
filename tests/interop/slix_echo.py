#!/usr/bin/env python3
"""A peer for the web client tests: slixmpp as bob, answering a chat.

bob logs in over STARTTLS (verifying the server certificate against --ca),
sends presence and prints "ready"; the first chat message with a body he
receives is answered, to the full JID it came from, with --reply. With
--expect, that message's body must be exactly it. Exits 0 after printing
"interop ok", 1 with a reason otherwise (also when no message came within
--timeout seconds).
"""
import argparse
import asyncio

from slix_common import client, finish, run, start


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--jid", default="bob@localhost/slix")
    ap.add_argument("--password", default="builder")
    ap.add_argument("--reply", required=True)
    ap.add_argument("--expect", help="the body the message must have")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    bob = client(args.jid, args.password, args.ca)
    got = asyncio.get_running_loop().create_future()

    def on_message(msg):
        if msg["type"] in ("chat", "normal") and msg["body"] and not got.done():
            got.set_result(msg)

    bob.add_event_handler("message", on_message)
    await start(bob, args.port)
    print("ready", flush=True)

    msg = await asyncio.wait_for(got, args.timeout)
    body = msg["body"]
    print(f"got message from {msg['from']}: {body}", flush=True)
    if args.expect is not None and body != args.expect:
        raise RuntimeError(f"message body is {body!r}, not {args.expect!r}")
    bob.send_message(mto=msg["from"], mbody=args.reply, mtype="chat")
    # Let the reply leave before the stream closes.
    await asyncio.sleep(0.5)
    await finish(bob)


if __name__ == "__main__":
    run(main)
