"""Shared by the slixmpp interop scripts: logging a client in, and turning
any failure into exit status 1 with a reason."""
import asyncio
import sys

TIMEOUT = 20


async def start(c, port):
    """Connects c to 127.0.0.1:port; returns once its session started
    (initial presence sent), raises if authentication fails."""
    ready = asyncio.get_running_loop().create_future()

    def on_start(_):
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


def run(main):
    """Runs the coroutine function main; any exception is a test failure."""
    try:
        asyncio.run(main())
    except Exception as e:  # report any failure as a test failure
        print(f"interop failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
