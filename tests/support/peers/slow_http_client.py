#!/usr/bin/env python3
"""An HTTP/1.1 client that connects, then waits before sending its request.

A JVM warming up, or a script that connects and then thinks, looks like
this. A proxy that decides "the client is silent, so this is a
server-speaks-first protocol" after a short timeout would relay the request
as opaque bytes, with no HTTP treatment (no headers added, no policies).

Run: slow_http_client.py --host echo.mesh --port 8000 --path /_echo --wait 0.5
It connects, sleeps --wait seconds, sends a GET with `x-mesh-spoof: 1` and
`Connection: close`, and reads the whole response. Prints one JSON line:
  {"ok": bool, "status": int|null, "body": str, "waited_ms": f, "error": str|null}
With --h2 it sends the HTTP/2 client preface (and an empty SETTINGS frame)
after the wait instead, and is ok when a SETTINGS frame comes back; the
server's own SETTINGS may have arrived before the client spoke, as HTTP/2
servers send it at once.
Exit 0 when ok. Only the Python standard library is used.
"""

import argparse
import json
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser(description="HTTP client that waits before speaking")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--wait", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--h2", action="store_true", help="speak HTTP/2 prior knowledge")
    a = p.parse_args()
    if a.h2:
        return h2(a)
    out = {"ok": False, "status": None, "body": "", "waited_ms": None, "error": None}
    try:
        with socket.create_connection((a.host, a.port), timeout=a.timeout) as sock:
            t0 = time.monotonic()
            time.sleep(a.wait)
            out["waited_ms"] = (time.monotonic() - t0) * 1000.0
            request = (f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n"
                       "x-mesh-spoof: 1\r\nConnection: close\r\n\r\n")
            sock.sendall(request.encode())
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ")
        if len(parts) >= 2 and parts[0].startswith("HTTP/1."):
            out["status"] = int(parts[1])
        out["body"] = body.decode("utf-8", "replace")
        out["ok"] = out["status"] is not None
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


def h2(a):
    out = {"ok": False, "frames": [], "waited_ms": None, "error": None}
    try:
        with socket.create_connection((a.host, a.port), timeout=a.timeout) as sock:
            t0 = time.monotonic()
            time.sleep(a.wait)
            out["waited_ms"] = (time.monotonic() - t0) * 1000.0
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)[:3] + b"\x04" + bytes(5))
            buf = b""
            while len(out["frames"]) < 4:
                while len(buf) < 9:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise OSError("closed before a SETTINGS frame")
                    buf += chunk
                length = int.from_bytes(buf[:3], "big")
                while len(buf) < 9 + length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise OSError("closed inside a frame")
                    buf += chunk
                kind, flags = buf[3], buf[4]
                out["frames"].append({"type": kind, "flags": flags, "length": length})
                buf = buf[9 + length:]
                if kind == 4 and not flags & 1:
                    out["ok"] = True
                    break
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
