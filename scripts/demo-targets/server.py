#!/usr/bin/env python3
"""HTTP targets for `make demo`, on loopback, standard library only.

Serves, each on its own port of 127.0.0.1:
  --healthy PORT   200 with a page that says "status: healthy"
  --mismatch PORT  200 with a page that says "status: maintenance" (a regex
                   looking for "healthy" does not match it)
  --hang PORT      accepts the request, then answers only after --hang-seconds
                   (default 30), long past the demo's 2 s probe timeout

Runs until SIGTERM or SIGINT.
"""

import argparse
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGES = {
    "healthy": b"<html><body><h1>demo service</h1><p>status: healthy</p></body></html>\n",
    "mismatch": b"<html><body><h1>demo service</h1><p>status: maintenance</p></body></html>\n",
    "hang": b"<html><body><p>too late</p></body></html>\n",
}


def handler_for(kind, hang_seconds, stop):
    class Handler(BaseHTTPRequestHandler):
        server_version = "demo-target"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if kind == "hang":
                # Wait, but give up early when the server is stopping.
                stop.wait(hang_seconds)
            body = PAGES[kind]
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                # The prober timed out and closed the connection.
                pass

        def log_message(self, fmt, *args):
            sys.stderr.write(
                "%s %s:%d %s\n"
                % (time.strftime("%H:%M:%S"), kind, self.server.server_address[1], fmt % args)
            )

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--healthy", type=int, required=True)
    parser.add_argument("--mismatch", type=int, required=True)
    parser.add_argument("--hang", type=int, required=True)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    args = parser.parse_args()

    stop = threading.Event()
    servers = []
    for kind, port in (("healthy", args.healthy), ("mismatch", args.mismatch), ("hang", args.hang)):
        server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(kind, args.hang_seconds, stop))
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, name=kind, daemon=True).start()
        sys.stderr.write("demo target %s listening on 127.0.0.1:%d\n" % (kind, port))
    sys.stderr.flush()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(1)
    for server in servers:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
