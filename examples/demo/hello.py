#!/usr/bin/env python3
"""The python half of the `hello` service in examples/demo.sh.

A plain stdlib HTTP server: it knows nothing about the mesh.
Usage: hello.py PORT
"""
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from python (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        # One line per request on stderr, which the demo sends to a log file.
        sys.stderr.write("python app: " + (fmt % args) + "\n")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18081
    ThreadingHTTPServer(("127.0.0.1", port), Hello).serve_forever()
