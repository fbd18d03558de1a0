#!/usr/bin/env python3
"""WebSocket echo server and client for the mesh's protocol tests
(python `websockets`, its threaded sync API).

Server: ws_peer.py serve --port 8765 [--bind 0.0.0.0] [--name NAME]
  On each connection it first sends "hello from <name>" (the server speaks
  after the 101 without being asked), then echoes every message back.
  Prints "listening PORT" on stdout once ready.

Client: ws_peer.py client --url ws://ws.mesh:8765/ [--count N] [--timeout S]
  Opens the socket (no proxy, whatever the environment says), reads the
  greeting, sends N text messages of growing size (the last one 100 kB, so
  it spans many TCP segments) and checks each echo. Prints one JSON line:
    {"ok": bool, "greeting": str|null, "sent": n, "echoed": n, "ms": f,
     "error": str|null}
  and exits 0 when ok.
Needs: pip install websockets
"""

import argparse
import json
import sys
import time

from websockets.sync.client import connect
from websockets.sync.server import serve

# The last message's size: larger than any single read or TCP segment.
BIG = 100_000


def run_server(a):
    def echo(ws):
        ws.send(f"hello from {a.name}")
        for message in ws:
            ws.send(message)

    with serve(echo, a.bind, a.port) as server:
        print(f"listening {server.socket.getsockname()[1]}", flush=True)
        server.serve_forever()
    return 0


def message(i, count):
    if i == count - 1:
        return "x" * BIG
    return f"message {i} " + "y" * (i * 37)


def run_client(a):
    out = {"ok": False, "greeting": None, "sent": 0, "echoed": 0, "error": None}
    t0 = time.monotonic()
    try:
        with connect(a.url, proxy=None, open_timeout=a.timeout) as ws:
            out["greeting"] = ws.recv(timeout=a.timeout)
            for i in range(a.count):
                sent = message(i, a.count)
                ws.send(sent)
                out["sent"] += 1
                got = ws.recv(timeout=a.timeout)
                if got != sent:
                    raise ValueError(f"echo {i}: {len(got)} chars, sent {len(sent)}")
                out["echoed"] += 1
        out["ok"] = out["echoed"] == a.count
    except Exception as e:  # the JSON line reports any failure
        out["error"] = f"{type(e).__name__}: {e}"
    out["ms"] = (time.monotonic() - t0) * 1000.0
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


def main():
    p = argparse.ArgumentParser(description="WebSocket echo peer")
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--name", default="ws")
    c = sub.add_parser("client")
    c.add_argument("--url", required=True)
    c.add_argument("--count", type=int, default=20)
    c.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    return run_server(a) if a.mode == "serve" else run_client(a)


if __name__ == "__main__":
    sys.exit(main())
