#!/usr/bin/env python3
"""Client of a server-speaks-first peer, for the mesh's protocol tests.

The peer is socat running `echo banner; cat` per connection: it sends a
banner line as soon as a client connects, then echoes what it receives.
A proxy that waits for the client to speak first (protocol detection)
delays the banner; this client measures that delay.

Run: banner_client.py --host banner.mesh --port 7777 [--timeout S]
It connects, waits for the first byte (the client stays silent), reads the
banner line, sends "ping\\n" and expects it echoed, then half-closes its
side and expects the server to close too. Prints one JSON line:
  {"ok": bool, "connect_ms": f, "first_byte_ms": f|null, "banner": str,
   "echo": str, "closed": bool, "error": str|null}
first_byte_ms counts from the moment connect() returned. Exit 0 when ok.
Only the Python standard library is used.
"""

import argparse
import json
import socket
import sys
import time


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def main():
    p = argparse.ArgumentParser(description="server-speaks-first client")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    out = {"ok": False, "connect_ms": None, "first_byte_ms": None, "banner": "",
           "echo": "", "closed": False, "error": None}
    # Resolved before the clock starts: the figure is about the connection.
    addr = socket.getaddrinfo(a.host, a.port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    t0 = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=a.timeout) as sock:
            t1 = time.monotonic()
            out["connect_ms"] = (t1 - t0) * 1000.0
            first = sock.recv(1)
            if first:
                out["first_byte_ms"] = (time.monotonic() - t1) * 1000.0
            out["banner"] = (first + read_line(sock)).decode("utf-8", "replace")
            sock.sendall(b"ping\n")
            out["echo"] = read_line(sock).decode("utf-8", "replace")
            sock.shutdown(socket.SHUT_WR)
            out["closed"] = sock.recv(1) == b""
        out["ok"] = (out["banner"] == "banner\n" and out["echo"] == "ping\n"
                     and out["closed"])
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
