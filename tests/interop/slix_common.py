"""Shared by the slixmpp interop scripts: a client verifying the server
certificate against a CA, logging in over STARTTLS, waiting for an event,
and the way a script reports success or failure."""
import asyncio
import ssl
import sys

import slixmpp

TIMEOUT = 20


def client(jid, password, ca, plugins=()):
    c = slixmpp.ClientXMPP(jid, password)
    c.ssl_context = ssl.create_default_context(cafile=ca)
    for plugin in plugins:
        c.register_plugin(plugin)
    return c


async def start(c, port, presence=True):
    """Connects and waits for the session; sends initial presence unless
    told not to. Fails unless the session is encrypted."""
    ready = asyncio.get_running_loop().create_future()

    def on_start(_):
        if presence:
            c.send_presence()
        if not ready.done():
            ready.set_result(True)

    def on_fail(_):
        if not ready.done():
            ready.set_exception(RuntimeError(f"{c.boundjid}: authentication failed"))

    c.add_event_handler("session_start", on_start)
    c.add_event_handler("failed_all_auth", on_fail)
    c.connect("127.0.0.1", port)
    await asyncio.wait_for(ready, TIMEOUT)
    # After STARTTLS slixmpp's socket is the TLS object itself.
    if not isinstance(c.socket, (ssl.SSLSocket, ssl.SSLObject)):
        raise RuntimeError(f"{c.boundjid}: session is not encrypted")


def waiter(c, event, accept=lambda _: True):
    """A future for the first `event` on `c` whose stanza `accept`s (any,
    by default)."""
    got = asyncio.get_running_loop().create_future()

    def on_event(stanza):
        if not got.done() and accept(stanza):
            got.set_result(stanza)

    c.add_event_handler(event, on_event)
    return got


async def finish(*clients):
    for c in clients:
        c.disconnect()
    await asyncio.sleep(0.2)
    print("interop ok")


def run(main):
    """Runs the script's coroutine; exits 1 with the reason on any failure."""
    try:
        asyncio.run(main())
    except Exception as e:  # report any failure as a test failure
        print(f"interop failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
