#!/usr/bin/env python3
"""A tiny demo upstream for `scripts/run.sh`: answers every request with its own name, the path it
saw and the forwarding headers the proxy added, and serves /healthz for the health check.

    scripts/demo_upstream.py PORT [NAME]
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-upstream"

    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\n"
        else:
            body = (json.dumps({
                "upstream": self.server.name,
                "path": self.path,
                "x-forwarded-for": self.headers.get("X-Forwarded-For"),
                "x-request-id": self.headers.get("X-Request-Id"),
                "via": self.headers.get("Via"),
            }, indent=2) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if self.path != "/healthz" else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, fmt, *args):  # quiet: the proxy has the access log
        pass


def main():
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.name = sys.argv[2] if len(sys.argv) > 2 else f"upstream-{port}"
    server.serve_forever()


if __name__ == "__main__":
    main()
