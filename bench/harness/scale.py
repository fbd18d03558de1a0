"""A big mesh, as one client proxy sees it (issue 13's scale figures).

mesh-control (identity off) on loopback, N static services registered
over its API, one client-only mesh-proxy watching. For each mesh size:

- per-event CPU: a burst of BURST changes (re-registrations of existing
  instances with new metadata, spread over the services) is sent; the
  proxy's CPU time (utime+stime from /proc) from the first change until it
  reports the last revision applied (mesh-control's GET /v1/proxies),
  divided by the changes. Flat from 100 to 10 000 services is the goal.
- propagation: right after the growth burst and after each of PROBES
  smaller bursts, a new service is registered and the time until the
  proxy's DNS answers its name is taken (polled every millisecond):
  p50/p99/max. Goal: p99 <= 100 ms at 10 000 services.
- memory: the proxy's RSS with 10 services, calling one of them (a real
  upstream on loopback), against the same proxy and a fresh one at the
  largest size, calling the same one. Goal: <= 1.5x.

    python3 -m harness.scale --out DIR [--sizes 100,1000,10000] [--baseline OLD/scale.json]

Writes DIR/scale.json and DIR/SCALE.md (with --baseline, an earlier
run's figures side by side, as ratios).

Loopback only; every process is started here and stopped by PID.
"""

import argparse
import http.client
import http.server
import json
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time

from . import procs

BURST = 2000
PROBES = 20
PROBE_BURST = 200
CALLED = "svc-0"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, within, f, every=0.01):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        v = f()
        if v:
            return v
        time.sleep(every)
    raise SystemExit(f"timed out after {within}s waiting for {what}")


class Api:
    """mesh-control's HTTP API over one keep-alive connection."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if data else {}
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                text = r.read()
                if r.status >= 300:
                    raise SystemExit(f"{method} {path}: {r.status} {text[:200]!r}")
                return json.loads(text) if text else None
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise

    def register(self, service, port, meta=None):
        body = {"id": f"{service}-1", "address": "127.0.0.1", "port": port}
        if meta:
            body["metadata"] = meta
        return self.call("POST", f"/v1/services/{service}/instances", body)["revision"]

    def applied(self, proxy_id=None):
        doc = self.call("GET", "/v1/proxies")
        got = [p.get("applied", 0) for p in doc.get("proxies", [])
               if proxy_id is None or p.get("proxy") == proxy_id]
        return doc.get("revision", 0), got


def dns_query(port, name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(q, ("127.0.0.1", port))
        try:
            resp, _ = s.recvfrom(2048)
        except socket.timeout:
            return False
    rcode = resp[3] & 0x0F
    answers = struct.unpack(">H", resp[6:8])[0]
    return rcode == 0 and answers > 0


def proc_cpu(pid):
    return procs.cpu_seconds([pid])


def rss_mb(pid):
    return procs.rss_kb([pid], "VmRSS") / 1024


def settled_rss_mb(pid):
    """The RSS once it stops moving (the same for a second, read every
    250 ms; at most 10 s): freed memory goes back to the system late."""
    seen = []

    def steady():
        seen.append(rss_mb(pid))
        return len(seen) >= 5 and max(seen[-5:]) - min(seen[-5:]) < 0.1

    try:
        wait("RSS to settle", 10, steady, every=0.25)
    except SystemExit:
        pass  # still moving: report the last reading
    return seen[-1]


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Run:
    def __init__(self, bins, out):
        self.bins = bins
        self.out = out
        self.tmp = tempfile.mkdtemp(prefix="mesh-scale-")
        self.ctrl_port = free_port()
        self.start_control()
        self.api = Api(self.ctrl_port)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.upstream_port = srv.server_address[1]
        self.registered = 0

    def spawn(self, name, args):
        return procs.spawn(args, log=os.path.join(self.out, f"scale-{name}.log"))

    def start_control(self):
        self.spawn("control", [
            os.path.join(self.bins, "mesh-control"), "--identity", "off",
            "--listen", f"127.0.0.1:{self.ctrl_port}",
            "--data-dir", os.path.join(self.tmp, "control"), "--log-format", "json",
        ])
        procs.wait_http(f"http://127.0.0.1:{self.ctrl_port}/healthz", 30)

    def start_proxy(self, name):
        ports = {k: free_port() for k in ("outbound", "admin", "dns")}
        p = self.spawn(name, [
            os.path.join(self.bins, "mesh-proxy"), "--identity", "off",
            "--control", f"http://127.0.0.1:{self.ctrl_port}",
            "--outbound", f"127.0.0.1:{ports['outbound']}",
            "--admin", f"127.0.0.1:{ports['admin']}",
            "--dns", f"127.0.0.1:{ports['dns']}",
            "--cache-dir", os.path.join(self.tmp, f"{name}-cache"),
            "--mark", "0", "--log-format", "json",
        ])
        procs.wait_http(f"http://127.0.0.1:{ports['admin']}/ready", 60)
        return p, ports

    def grow(self, n):
        """Registers services until there are `n`; returns the last revision."""
        rev = 0
        while self.registered < n:
            rev = self.api.register(f"svc-{self.registered}", self.upstream_port)
            self.registered += 1
        return rev

    def caught_up(self, rev, within=600):
        """Waits until every watching proxy applied `rev`; the time it took."""
        t0 = time.monotonic()

        def done():
            _, applied = self.api.applied()
            return applied and min(applied) >= rev

        wait(f"proxies to apply revision {rev}", within, done, every=0.005)
        return time.monotonic() - t0

    def churn(self, k, tag):
        """`k` changes to existing services; the last revision."""
        rev = 0
        for i in range(k):
            svc = f"svc-{random.randrange(self.registered)}"
            rev = self.api.register(svc, self.upstream_port, {"churn": f"{tag}-{i}"})
        return rev

    def probe(self, dns_port, name):
        t0 = time.monotonic()
        self.api.register(name, self.upstream_port)
        qid = random.randrange(65536)
        wait(f"{name} in DNS", 120, lambda: dns_query(dns_port, f"{name}.mesh", qid), every=0.001)
        return (time.monotonic() - t0) * 1000

    def call(self, ports, service):
        c = http.client.HTTPConnection("127.0.0.1", ports["outbound"], timeout=10)
        c.request("GET", "/", headers={"host": service})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"calling {service} through the proxy: {r.status}")

    def stop(self):
        procs.cleanup()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--baseline", help="an earlier run's scale.json, shown side by side")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    bins = os.environ.get("MESH_BIN_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target", "release"))
    os.makedirs(args.out, exist_ok=True)
    os.environ["BENCH_OUT"] = args.out  # where procs.spawn lists its pids
    random.seed(13)
    run = Run(bins, args.out)
    results = {"sizes": [], "burst": BURST, "probes": PROBES, "probe_burst": PROBE_BURST}
    try:
        run.grow(10)
        proxy, ports = run.start_proxy("client")
        run.call(ports, CALLED)
        run.caught_up(run.grow(10))
        rss_small = settled_rss_mb(proxy.pid)
        print(f"RSS with 10 services, calling one: {rss_small:.1f} MB", flush=True)
        for n in sizes:
            t0 = time.monotonic()
            cpu0 = proc_cpu(proxy.pid)
            before = run.registered
            rev = run.grow(n)
            grown = n - before
            lag = run.caught_up(rev)
            grow_cpu = proc_cpu(proxy.pid) - cpu0
            print(f"{n} services: grew by {grown} in {time.monotonic() - t0:.1f}s, proxy caught up {lag * 1000:.0f} ms after the last, "
                  f"{grow_cpu / max(grown, 1) * 1e6:.0f} us CPU per new service", flush=True)
            latencies = [run.probe(ports["dns"], f"probe-{n}-0")]
            cpu0 = proc_cpu(proxy.pid)
            rev = run.churn(BURST, f"b{n}")
            lag = run.caught_up(rev)
            cpu = proc_cpu(proxy.pid) - cpu0
            per_event_us = cpu / BURST * 1e6
            for j in range(1, PROBES + 1):
                run.churn(PROBE_BURST, f"p{n}-{j}")
                latencies.append(run.probe(ports["dns"], f"probe-{n}-{j}"))
            latencies.sort()
            row = {
                "services": n,
                "cpu_per_event_us": round(per_event_us, 1),
                "caught_up_after_burst_ms": round(lag * 1000, 1),
                "propagation_ms": {
                    "p50": round(statistics.median(latencies), 1),
                    "p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
                    "max": round(latencies[-1], 1),
                },
                "rss_mb": round(rss_mb(proxy.pid), 1),
            }
            results["sizes"].append(row)
            print(f"  {BURST} changes: {per_event_us:.0f} us CPU per event, applied {lag * 1000:.0f} ms after the last; "
                  f"propagation p50 {row['propagation_ms']['p50']} ms, p99 {row['propagation_ms']['p99']} ms, "
                  f"max {row['propagation_ms']['max']} ms; RSS {row['rss_mb']} MB", flush=True)
        run.call(ports, CALLED)
        rss_grown = settled_rss_mb(proxy.pid)
        fresh, fresh_ports = run.start_proxy("fresh")
        run.caught_up(run.api.applied()[0])
        run.call(fresh_ports, CALLED)
        rss_fresh = settled_rss_mb(fresh.pid)
        results["rss_mb"] = {"10": round(rss_small, 1), f"{sizes[-1]} (same proxy)": round(rss_grown, 1),
                             f"{sizes[-1]} (fresh proxy)": round(rss_fresh, 1),
                             "ratio_fresh": round(rss_fresh / rss_small, 2),
                             "ratio_same": round(rss_grown / rss_small, 2)}
        print(f"RSS: 10 services {rss_small:.1f} MB; {sizes[-1]}: same proxy {rss_grown:.1f} MB "
              f"({rss_grown / rss_small:.2f}x), fresh proxy {rss_fresh:.1f} MB ({rss_fresh / rss_small:.2f}x)", flush=True)
    finally:
        run.stop()
        with open(os.path.join(args.out, "scale.json"), "w") as f:
            json.dump(results, f, indent=2)
    base = None
    if args.baseline:
        with open(args.baseline) as f:
            base = json.load(f)
    with open(os.path.join(args.out, "SCALE.md"), "w") as f:
        f.write(report(results, base))
    print(json.dumps(results, indent=2))


def report(r, base):
    """SCALE.md: the figures, and an earlier run's beside them."""
    old = {row["services"]: row for row in (base or {}).get("sizes", [])}
    lines = [
        "# One proxy in a big mesh (bench/harness/scale.py)",
        "",
        f"A client-only mesh-proxy watching mesh-control (identity off, loopback), calling one service. "
        f"Per size: {r['burst']} changes to existing services (CPU per event: the proxy's utime+stime until it "
        f"reported the last one applied, divided by the changes), then {r['probes']} times {r['probe_burst']} "
        f"changes followed by a new registration, timed until the proxy's DNS answers its name "
        f"(plus one right after the growth to the size).",
        "",
    ]
    head = "| services | CPU per event | propagation p50 | p99 | max | proxy RSS |"
    sep = "|---|---|---|---|---|---|"
    if base:
        lines += [f"Before: {base.get('label', 'the --baseline run')}.", ""]
        head = "| services | CPU per event (before → now, ratio) | propagation p99 (before → now) | proxy RSS (before → now) |"
        sep = "|---|---|---|---|"
    lines += [head, sep]
    for row in r["sizes"]:
        n = row["services"]
        p = row["propagation_ms"]
        if base and n in old:
            o = old[n]
            lines.append(
                f"| {n} | {o['cpu_per_event_us']:.0f} → {row['cpu_per_event_us']:.0f} µs "
                f"({row['cpu_per_event_us'] / o['cpu_per_event_us']:.2f}×) | "
                f"{o['propagation_ms']['p99']} → {p['p99']} ms | {o['rss_mb']} → {row['rss_mb']} MB |")
        else:
            lines.append(f"| {n} | {row['cpu_per_event_us']:.0f} µs | {p['p50']} ms | {p['p99']} ms | "
                         f"{p['max']} ms | {row['rss_mb']} MB |")
    def memory(d):
        v = list(d.values())  # 10, grown, fresh, ratio fresh, ratio grown (as written)
        return (f"10 services {v[0]} MB; at the largest size the same proxy {v[1]} MB ({v[4]}×), "
                f"a fresh proxy {v[2]} MB ({v[3]}×)")

    if r.get("rss_mb"):
        lines += ["", "Resident memory of a proxy calling one service: " + memory(r["rss_mb"]) + "."]
        if base and base.get("rss_mb"):
            lines.append("Before: " + memory(base["rss_mb"]) + ".")
    lines += ["", "Figures from one run on one machine; compare ratios within a run, not across machines.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
