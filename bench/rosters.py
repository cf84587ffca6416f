#!/usr/bin/env python3
"""The roster application bench/scale.sh points Gatehouse's [roster] at.

Usage: rosters.py --port PORT --fan PREFIX --contacts K --held PREFIX --held-count C

Serves GET /roster/USER on 127.0.0.1:PORT (HTTP/1.1, keep-alive). A user
named PREFIX<j> of --fan (j = 1, 2, ...) has K contacts, all of them held
sessions: --held PREFIX<n> for the K consecutive n from ((j - 1) * K) mod C
+ 1 on, wrapping at C; everyone else has an empty roster. So each login of
a fan user sends its presence to K online contacts, gets theirs back, and
tells the same K when it leaves, whatever the number of sessions held.
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fan", required=True)
    parser.add_argument("--contacts", type=int, required=True)
    parser.add_argument("--held", required=True)
    parser.add_argument("--held-count", type=int, required=True)
    parser.add_argument("--domain", default="localhost")
    args = parser.parse_args()

    def roster(user):
        rest = user[len(args.fan):]
        if not user.startswith(args.fan) or not rest.isdigit() or args.held_count < 1:
            return {}
        first = (int(rest) - 1) * args.contacts
        return {f"{args.held}{(first + t) % args.held_count + 1}@{args.domain}":
                {"name": f"contact {t}", "groups": ["bench"]} for t in range(args.contacts)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = json.dumps(roster(self.path.rsplit("/", 1)[-1])).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
