#!/usr/bin/env python3
"""Bounded HTTP load for the mesh's resilience tests (stdlib only).

Sends up to --requests requests to --url from --concurrency threads, each
request on a fresh connection (as curl would), and stops issuing new ones
after --duration seconds. The host name is resolved once, at start, so the
figures measure the call, not DNS.

Prints one JSON object on stdout:
  {"elapsed_ms": f, "results": [{"start": epoch_ms, "ms": f, "status": n,
    "error": str|null, "mesh_error": str|null, "fallback": str|null,
    "body": str}, ...]}
in the order the requests were issued. status 0 means no HTTP response;
`error` then says why (e.g. "ConnectionResetError: ...").

Usage: load.py --url URL [--method GET] [--data STR] [--requests N]
  [--concurrency C] [--duration S] [--timeout S] [--interval-ms MS]
  [--proxy HOST:PORT]
--proxy sends each request to that HTTP proxy in absolute form (a
sidecar's outbound listener in explicit mode).
--interval-ms spaces the requests of each thread (a steady load).
"""

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

BODY_LIMIT = 200


def one(ip, port, host_header, method, path, data, timeout):
    """One request on its own connection; a result record."""
    record = {"start": time.time() * 1000.0, "status": 0, "error": None,
              "mesh_error": None, "fallback": None, "body": ""}
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        headers = {"Host": host_header}
        body = data.encode() if data is not None else None
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        record["status"] = resp.status
        record["mesh_error"] = resp.getheader("x-mesh-error")
        record["fallback"] = resp.getheader("x-mesh-fallback")
        record["body"] = payload[:BODY_LIMIT].decode("utf-8", "replace")
    except Exception as e:  # every failure is a figure, not a crash
        record["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    record["ms"] = (time.monotonic() - t0) * 1000.0
    return record


def main():
    p = argparse.ArgumentParser(description="bounded HTTP load")
    p.add_argument("--url", required=True)
    p.add_argument("--method", default="GET")
    p.add_argument("--data")
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--interval-ms", type=float, default=0.0)
    p.add_argument("--proxy")
    a = p.parse_args()

    url = urlsplit(a.url)
    host_header = url.netloc
    if a.proxy:
        ip, _, port = a.proxy.rpartition(":")
        port = int(port)
        path = a.url
    else:
        port = url.port or 80
        ip = socket.getaddrinfo(url.hostname, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")

    lock = threading.Lock()
    issued = [0]
    results = []
    started = time.monotonic()
    stop_at = started + a.duration

    def worker():
        while True:
            with lock:
                if issued[0] >= a.requests or time.monotonic() >= stop_at:
                    return
                index = issued[0]
                issued[0] += 1
            record = one(ip, port, host_header, a.method, path, a.data, a.timeout)
            record["i"] = index
            with lock:
                results.append(record)
            if a.interval_ms > 0:
                # Pacing between this thread's requests, bounded by the
                # run's own deadline.
                time.sleep(min(a.interval_ms / 1000.0, max(0.0, stop_at - time.monotonic())))

    threads = [threading.Thread(target=worker) for _ in range(max(1, a.concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.sort(key=lambda r: r["i"])
    json.dump({"elapsed_ms": (time.monotonic() - started) * 1000.0, "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
