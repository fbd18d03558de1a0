"""mTLS handshakes and per-connection memory at a sidecar's inbound side.

`python3 -m harness.handshakes --out DIR` (MESH_BIN_DIR: the release
binaries). For the two-hop mesh targets with identity off and on, a
client on the load CPU opens connections straight to the server
sidecar's inbound listener (plain TCP, or TLS 1.3 with ALPN `mesh/1` and
the client sidecar's own certificate), one request each
(`connection: close`), for a bounded count and time; then holds 1000
connections open. Reported: connections per second of the proxy's CPU
(the server sidecar's utime+stime), and its RSS with 1000 connections
open, mTLS beside plaintext (ratios taken in one run).
"""

import argparse
import json
import os
import socket
import ssl
import sys
import time

from . import procs, targets

CONNS = 2000
TIME_LIMIT_S = 30
HELD = 1000
REQUEST = b"GET /small HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"


def client_context(out):
    """TLS to a sidecar's inbound as the client sidecar: its cached key and
    certificate, the mesh's roots, the mesh ALPN; the server's name is its
    SPIFFE ID, not checked here (the sidecar checks ours)."""
    cache = os.path.join(out, "proxy-cache-mesh-mtls-2hop-client", "identity")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(targets.MTLS["bundle"])
    ctx.load_cert_chain(os.path.join(cache, "cert.pem"), os.path.join(cache, "key.pem"))
    ctx.set_alpn_protocols(["mesh/1"])
    return ctx


def connect(port, ctx):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(s) if ctx else s


def one_per_connection(port, ctx, pid):
    """Connections, each one request; (count, proxy cpu seconds, wall s)."""
    pids = procs.tree(pid)
    cpu0, t0 = procs.cpu_seconds(pids), time.monotonic()
    done = 0
    while done < CONNS and time.monotonic() - t0 < TIME_LIMIT_S:
        s = connect(port, ctx)
        s.sendall(REQUEST)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"connection {done}: {data[:100]!r}")
        done += 1
    return done, procs.cpu_seconds(pids) - cpu0, time.monotonic() - t0


def held_rss(port, ctx, pid):
    """The sidecar's RSS (KiB) before and with HELD connections open (each
    having sent one keep-alive request, so it holds its buffers)."""
    pids = procs.tree(pid)
    before = procs.rss_kb(pids, "VmRSS")
    held = []
    try:
        for _ in range(HELD):
            s = connect(port, ctx)
            s.sendall(REQUEST.replace(b"connection: close", b"connection: keep-alive"))
            if not s.recv(65536).startswith(b"HTTP/1.1 200"):
                raise RuntimeError("no 200 on a held connection")
            held.append(s)
        # Each answered its request: its buffers are allocated now.
        return before, procs.rss_kb(pids, "VmRSS")
    finally:
        for s in held:
            s.close()


def measure(out, mtls):
    name = "mesh-mtls-2hop" if mtls else "mesh-proxy-2hop"
    t = targets.start_mesh_2hop(out, "0", name, mtls=mtls)
    try:
        server_pid = t.measure_pids[1]
        ctx = client_context(out) if mtls else None
        n, cpu, wall = one_per_connection(targets.MESH_2HOP_INBOUND, ctx, server_pid)
        before, rss = held_rss(targets.MESH_2HOP_INBOUND, ctx, server_pid)
        return {"target": name, "connections": n, "proxy_cpu_s": round(cpu, 3), "wall_s": round(wall, 2),
                "per_cpu_second": round(n / cpu) if cpu else None, "per_second": round(n / wall),
                "rss_before_kb": before, "rss_1k_kb": rss,
                "kb_per_conn": round((rss - before) / HELD, 1)}
    finally:
        t.stop()


def main():
    ap = argparse.ArgumentParser(prog="harness.handshakes")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    up = targets.start_upstream(a.out, "1")
    try:
        rows = [measure(a.out, False), measure(a.out, True)]
    finally:
        procs.stop(up)
    plain, mtls = rows
    ratio = {"per_cpu_second": round(mtls["per_cpu_second"] / plain["per_cpu_second"], 2),
             "kb_per_conn": round(mtls["kb_per_conn"] / plain["kb_per_conn"], 2) if plain["kb_per_conn"] else None}
    result = {"rows": rows, "mtls_over_plain": ratio}
    with open(os.path.join(a.out, "handshakes.json"), "w") as f:
        json.dump(result, f, indent=2)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
