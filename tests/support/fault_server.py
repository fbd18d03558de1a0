#!/usr/bin/env python3
"""A fault-injecting HTTP upstream for the mesh's resilience tests.

Serves any path with its name (--name) as the body, over HTTP/1.1
keep-alive with Content-Length. Its faults can be changed at run time:

  POST /_fault         JSON, any subset of
                       {"failure_rate": 0..1, "status": 500, "latency_ms": 0,
                        "hang": false, "reset_rate": 0..1}
                       (unspecified knobs keep their values); answers with
                       the whole current setting.
  GET  /_fault         the current setting.
  POST /_reset_stats   zeroes the counters.
  GET  /_stats         {"requests": n, "by_method": {...}, "in_flight": n,
                        "max_in_flight": n, "outcomes": {...}}
  ANY  /_echo          the request as the app received it, as JSON:
                       {"method": str, "path": str, "headers": [[name, value],
                        ...] (in arrival order, names as sent), "body": str}
                       (header-hygiene and client tests look at it).
  ANY  /_respond?h=NAME:VALUE[&h=...]
                       200 "respond" with each given response header (a test
                       of what a sidecar lets through from its app).

Control endpoints (/_fault, /_stats, /_reset_stats, /_echo, /_respond) are never
faulted and never counted. Every other request is counted as soon as its head has been
read (a reset request counts as received), then goes through, in order:
  hang       held until the fault is cleared (POST {"hang": false}) or 60 s;
  latency    slept before answering;
  reset      with probability reset_rate: SO_LINGER 0 and close (TCP RST)
             before any byte of the response;
  failure    with probability failure_rate: `status` with body
             "<name>: injected <status>";
  otherwise  200 with body "<name>".
"outcomes" counts what was done: "ok", "failed", "reset" ("error": the handler broke).

Start: fault_server.py --port N [--bind ADDR] --name NAME [--failure-rate R]
  [--status S] [--latency-ms MS] [--hang] [--reset-rate R]
--port 0 picks a free port. Once listening it prints
"listening ADDR:PORT" on stdout (flushed), so a caller can find the port.
Only the Python standard library is used.
"""

import argparse
import json
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

# A hung request gives up after this long even if nobody clears the fault,
# so a forgotten test cannot keep threads forever.
HANG_LIMIT_S = 60.0
CONTROL_PATHS = ("/_fault", "/_stats", "/_reset_stats", "/_echo", "/_respond")
KNOBS = {
    "failure_rate": float,
    "status": int,
    "latency_ms": int,
    "hang": bool,
    "reset_rate": float,
}


class State:
    """Fault settings and counters, shared by every handler thread."""

    def __init__(self, name, fault):
        self.name = name
        self.fault = dict(fault)
        # One lock for settings and counters; `changed` wakes hung requests
        # whenever the settings change.
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.zero()

    def zero(self):
        self.requests = 0
        self.by_method = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.outcomes = {}

    def stats(self):
        with self.lock:
            return {
                "requests": self.requests,
                "by_method": dict(self.by_method),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "outcomes": dict(self.outcomes),
            }

    def update(self, changes):
        """Applies a validated partial setting; returns the whole setting."""
        with self.lock:
            self.fault.update(changes)
            self.changed.notify_all()
            return dict(self.fault)

    def begin(self, method):
        with self.lock:
            self.requests += 1
            self.by_method[method] = self.by_method.get(method, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return dict(self.fault)

    def end(self, outcome):
        with self.lock:
            self.in_flight -= 1
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def hold_while_hung(self):
        """Blocks while `hang` is set (at most HANG_LIMIT_S); returns the
        setting in force afterwards."""
        deadline = time.monotonic() + HANG_LIMIT_S
        with self.lock:
            while self.fault["hang"]:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return dict(self.fault)


def validate(changes):
    """The setting in `changes`, or an error message naming the bad knob."""
    if not isinstance(changes, dict):
        return None, "body must be a JSON object"
    out = {}
    for key, value in changes.items():
        kind = KNOBS.get(key)
        if kind is None:
            return None, f"{key}: unknown knob; known: {', '.join(KNOBS)}"
        if kind is bool:
            if not isinstance(value, bool):
                return None, f"{key}: must be true or false"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"{key}: must be a number"
        elif kind is int and value != int(value):
            return None, f"{key}: must be an integer"
        if key.endswith("_rate") and not 0 <= value <= 1:
            return None, f"{key}: must be within 0..1"
        if key == "status" and not 100 <= value <= 599:
            return None, f"{key}: must be an HTTP status"
        if key == "latency_ms" and value < 0:
            return None, f"{key}: must not be negative"
        out[key] = kind(value)
    return out, None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fault-server"
    # Headers and body leave in separate writes; with Nagle on, the body
    # would wait for the peer's delayed ACK (~40 ms per response).
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        # Per-request logs would flood the test logs under load; control
        # requests are logged by `control` itself.
        pass

    # Every method goes through the same path.
    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def dispatch(self):
        path = self.path.split("?", 1)[0]
        if path in CONTROL_PATHS:
            self.control(path)
        else:
            self.app()

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status, body, content_type="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def reply_json(self, status, value):
        self.reply(status, json.dumps(value) + "\n", "application/json")

    def control(self, path):
        state = self.server.state
        body = self.read_body()
        if path == "/_stats" and self.command == "GET":
            self.reply_json(200, state.stats())
        elif path == "/_echo":
            self.reply_json(
                200,
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "body": body.decode("utf-8", "replace"),
                },
            )
        elif path == "/_respond":
            query = urllib.parse.parse_qs(self.path.partition("?")[2])
            data = b"respond"
            self.send_response(200)
            for pair in query.get("h", []):
                name, _, value = pair.partition(":")
                self.send_header(name.strip(), value.strip())
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/_reset_stats" and self.command == "POST":
            with state.lock:
                state.zero()
            self.reply_json(200, state.stats())
        elif path == "/_fault" and self.command == "GET":
            with state.lock:
                self.reply_json(200, dict(state.fault))
        elif path == "/_fault" and self.command == "POST":
            try:
                changes = json.loads(body or b"{}")
            except ValueError as e:
                self.reply_json(400, {"error": f"bad JSON: {e}"})
                return
            changes, error = validate(changes)
            if error:
                self.reply_json(400, {"error": error})
                return
            fault = state.update(changes)
            print(f"fault {json.dumps(fault)}", flush=True)
            self.reply_json(200, fault)
        else:
            self.reply_json(405, {"error": f"{self.command} {path} not allowed"})

    def app(self):
        state = self.server.state
        fault = state.begin(self.command)
        done = []

        # The request leaves the counters before its answer is written, so
        # a client that has its answer never sees it still in flight.
        def finish(outcome):
            if not done:
                done.append(outcome)
                state.end(outcome)

        try:
            self.read_body()
            if fault["hang"]:
                fault = state.hold_while_hung()
            if fault["latency_ms"] > 0:
                time.sleep(fault["latency_ms"] / 1000.0)
            if random.random() < fault["reset_rate"]:
                finish("reset")
                self.reset()
            elif random.random() < fault["failure_rate"]:
                status = fault["status"]
                finish("failed")
                self.reply(status, f"{state.name}: injected {status}")
            else:
                finish("ok")
                self.reply(200, state.name)
        finally:
            finish("error")

    def reset(self):
        """Closes the connection with an RST: SO_LINGER on with timeout 0."""
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        # The socket's fd is only released once the buffered readers and
        # writers made from it are closed too.
        self.rfile.close()
        self.wfile.close()
        self.connection.close()
        self.close_connection = True
        # The base class flushes and closes wfile after the handler returns.
        self.wfile = BytesIO()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser(description="fault-injecting HTTP upstream")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--name", required=True)
    p.add_argument("--failure-rate", type=float, default=0.0)
    p.add_argument("--status", type=int, default=500)
    p.add_argument("--latency-ms", type=int, default=0)
    p.add_argument("--hang", action="store_true")
    p.add_argument("--reset-rate", type=float, default=0.0)
    a = p.parse_args()
    fault, error = validate(
        {
            "failure_rate": a.failure_rate,
            "status": a.status,
            "latency_ms": a.latency_ms,
            "hang": a.hang,
            "reset_rate": a.reset_rate,
        }
    )
    if error:
        p.error(error)
    server = Server((a.bind, a.port), Handler)
    server.state = State(a.name, fault)
    host, port = server.server_address[:2]
    print(f"listening {host}:{port}", flush=True)
    print(f"fault {json.dumps(fault)}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
