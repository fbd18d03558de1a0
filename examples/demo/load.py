#!/usr/bin/env python3
"""Concurrent calls for examples/demo.sh: CALLS requests to URL from
CLIENTS threads at once, each thread on one keep-alive connection to the
client sidecar's explicit proxy, the way a pooled HTTP client would call.

Prints one `ANSWER COUNT` line per kind of answer: `python` or `node` for
a 200 from that instance, `HTTP-STATUS` or the error's name for anything
else. Stops after DEADLINE seconds (default 20) at the latest.
Usage: load.py PROXY_HOST:PORT URL CALLS CLIENTS [DEADLINE]
"""
import http.client
import sys
import threading
import time
from collections import Counter


def who(status, body):
    text = body.decode(errors="replace")
    for name in ("python", "node"):
        if status == 200 and name in text:
            return name
    return f"HTTP-{status}"


def main():
    proxy, url, calls, clients = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    deadline = time.monotonic() + (float(sys.argv[5]) if len(sys.argv) > 5 else 20.0)
    host, port = proxy.rsplit(":", 1)
    counts = Counter()
    lock = threading.Lock()
    left = [calls]
    start = threading.Barrier(clients)

    def take():
        with lock:
            if left[0] <= 0 or time.monotonic() > deadline:
                return False
            left[0] -= 1
            return True

    def client():
        conn = http.client.HTTPConnection(host, int(port), timeout=3)
        start.wait()
        while take():
            try:
                conn.request("GET", url)
                resp = conn.getresponse()
                answer = who(resp.status, resp.read())
            except (OSError, http.client.HTTPException) as e:
                answer = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=3)
            with lock:
                counts[answer] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for answer, n in counts.most_common():
        print(answer, n)


if __name__ == "__main__":
    main()
