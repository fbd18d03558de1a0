#!/usr/bin/env python3
"""The python half of the `hello` service in examples/demo.sh.

A plain stdlib HTTP server: it knows nothing about the mesh.
  GET /      200 "hello from python (pid N)"
  GET /fail  500 "python: failing on purpose" (for the breaker step)
  GET /slow  200 after a second (for the deadline step)
  GET /deadline  200 "python: x-mesh-timeout V": the time its caller had left
  GET /whoami    200 "python: called by V": x-mesh-caller, the caller's verified identity
Usage: hello.py PORT
"""
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    # Keep-alive, so the sidecar can reuse its connection to the app.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/fail"):
            status, text = 500, "python: failing on purpose\n"
        elif self.path.startswith("/slow"):
            time.sleep(1)
            status, text = 200, "python: slow on purpose\n"
        elif self.path.startswith("/deadline"):
            status, text = 200, f"python: x-mesh-timeout {self.headers.get('x-mesh-timeout', '-')}\n"
        elif self.path.startswith("/whoami"):
            status, text = 200, f"python: called by {self.headers.get('x-mesh-caller', '-')}\n"
        else:
            status, text = 200, f"hello from python (pid {os.getpid()})\n"
        body = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        # One line per request on stderr, which the demo sends to a log file.
        sys.stderr.write("python app: " + (fmt % args) + "\n")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18081
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Hello).serve_forever()
