"""The side-by-side comparison: every target as one L7 hop in front of the
same upstream, the same load cases, figures from /proc; then the two-hop
targets (client → client-side proxy → server-side proxy → upstream) on a
few of the cases.

The proxy under test (both of its processes in two hops) runs on CPU 0;
wrk/oha and the upstream on CPU 1. For `direct` (wrk → upstream, no proxy)
the upstream is moved to the idle CPU 0 for the time of its cases, so that
it is the real limit; it goes back to CPU 1 for every other target.
"""

import os
import subprocess
import threading
import time

from . import loadgen, procs, targets

PROXY_CPU = "0"
LOAD_CPU = "1"
HOST = "Host: bench"


class Sampler:
    """Samples the target's VmRSS (and its established connections) while a
    load runs, so the peak with N open connections is seen, not guessed."""

    def __init__(self, pids, port):
        self.pids = pids
        self.port = port
        self.max_rss = 0
        self.max_conns = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n = 0
        while not self._stop.wait(0.2):
            self.max_rss = max(self.max_rss, procs.rss_kb(self.pids, "VmRSS"))
            n += 1
            if n % 5 == 0:  # once a second: ss is not free
                self.max_conns = max(self.max_conns, established(self.port))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=2)


def established(port):
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=5)
    return len(out.stdout.splitlines())


def cases(smoke):
    """(name, kind, params). Durations and counts bound every run."""
    d = 2 if smoke else 10
    c = 4 if smoke else 50
    rates = [200] if smoke else [1000, 2500, 5000]
    out = [
        ("keepalive-small", "wrk", {"path": "/small", "seconds": d, "conns": c, "headers": [HOST]}),
        ("keepalive-16k", "wrk", {"path": "/16k", "seconds": d, "conns": c, "headers": [HOST]}),
        ("conn-per-request", "wrk", {"path": "/small", "seconds": d, "conns": c,
                                     "headers": [HOST, "Connection: close"]}),
    ]
    for r in rates:
        out.append((f"open-{r}rps", "oha", {"path": "/small", "seconds": d, "conns": c, "rate": r,
                                            "headers": [HOST]}))
    out.append(("open-1k-conns", "oha", {"path": "/small", "seconds": 3 if smoke else 6,
                                         "conns": 40 if smoke else 1000, "rate": 200 if smoke else 1000,
                                         "headers": [HOST]}))
    return out


def two_hop_cases(smoke):
    """The two-hop targets run only these: keep-alive closed loop and the
    open loop at the lowest and highest rates."""
    open_ = [name for name, kind, _ in cases(smoke) if name.startswith("open-") and name.endswith("rps")]
    want = {"keepalive-small", open_[0], open_[-1]}
    return [c for c in cases(smoke) if c[0] in want]


def run_case(port, kind, p):
    url = f"http://127.0.0.1:{port}{p['path']}"
    if kind == "wrk":
        return loadgen.wrk(url, p["seconds"], p["conns"], LOAD_CPU, p["headers"])
    return loadgen.oha(url, p["seconds"], p["conns"], p["rate"], LOAD_CPU, p["headers"])


def measure_target(t, smoke, log, case_list=None, warm_headers=()):
    """Runs every case (or those of case_list) against one started target;
    returns its rows. For a target of several processes (two hops), CPU
    and RSS are their sums; `cpu_s_hops` keeps each process's share.
    `warm_headers` go with the warm-up's requests too (a token)."""
    pids = t.pids()
    hops = t.hop_pids() if len(t.measure_pids) > 1 else None
    time.sleep(0.5 if smoke else 2.0)
    idle_kb = procs.rss_kb(pids, "VmRSS")
    rows = []
    # Warm-up: connections, pools, caches; not recorded.
    loadgen.wrk(f"http://127.0.0.1:{t.port}/small", 1, 4 if smoke else 50, LOAD_CPU,
                [HOST, *warm_headers])
    for name, kind, params in case_list or cases(smoke):
        cpu0 = procs.cpu_seconds(pids)
        hop0 = [procs.cpu_seconds(h) for h in hops] if hops else None
        with Sampler(pids, t.port) as s:
            r = run_case(t.port, kind, params)
        cpu = procs.cpu_seconds(pids) - cpu0
        r.update(target=t.name, case=name, conns=params["conns"],
                 cpu_s=round(cpu, 2) if pids else None,
                 req_per_cpu_s=round(r["requests"] / cpu) if pids and cpu > 0 else None,
                 rss_during_kb=s.max_rss or None, conns_seen=s.max_conns)
        if hops:
            r["cpu_s_hops"] = [round(procs.cpu_seconds(h) - c, 2) for h, c in zip(hops, hop0)]
        lat = r["latency_us"]
        log(f"  {t.name:14} {name:17} {r['rps']:>9.0f} req/s  p50 {lat['p50']}us p99 {lat['p99']}us"
            f"  errors {r['errors']}  cpu {r['cpu_s']}s" + (f" {r['cpu_s_hops']}" if hops else ""))
        rows.append(r)
    mem = {"target": t.name, "rss_idle_kb": idle_kb or None,
           "rss_peak_kb": procs.rss_kb(pids, "VmHWM") or None}
    return rows, mem


def run(out, smoke, log):
    """Returns (rows, memory, info); info: where the upstream ran per
    target, and what the two-hop targets reported about themselves."""
    upstream = targets.start_upstream(out, LOAD_CPU)
    two = two_hop_cases(smoke)
    plan = [
        ("direct", None),
        ("haproxy", lambda: targets.start_haproxy(out, PROXY_CPU)),
        ("nginx", lambda: targets.start_nginx(out, PROXY_CPU)),
        ("envoy", lambda: targets.start_envoy(out, PROXY_CPU)),
        ("mesh-proxy", lambda: targets.start_mesh(out, PROXY_CPU, 1, "mesh-proxy")),
        # The same proxy with every policy relaxed: the price of the default stack.
        ("mesh-proxy-nopolicy", lambda: targets.start_mesh(
            out, PROXY_CPU, 1, "mesh-proxy-nopolicy", policy=targets.POLICIES_OFF)),
        # The multi-thread figure, reported apart: default workers (one per
        # core), both CPUs, so it shares CPU 1 with the load generator.
        ("mesh-proxy-mt", lambda: targets.start_mesh(out, "0,1", None, "mesh-proxy-mt")),
        # Two hops (client side → server side → upstream), both on CPU 0,
        # on the cases of two_hop_cases() only.
        ("haproxy-2hop", lambda: targets.start_haproxy_2hop(out, PROXY_CPU)),
        ("envoy-2hop", lambda: targets.start_envoy_2hop(out, PROXY_CPU)),
        ("mesh-proxy-2hop", lambda: targets.start_mesh_2hop(out, PROXY_CPU)),
        # The same two hops with identity on: mTLS between the sidecars.
        ("mesh-mtls-2hop", lambda: targets.start_mesh_2hop(out, PROXY_CPU, "mesh-mtls-2hop", mtls=True)),
    ]
    only = os.environ.get("BENCH_TARGETS")
    if only:
        plan = [p for p in plan if p[0] in only.split(",")]
    rows, mems = [], []
    info = {"upstream_cpus": {}, "targets": {}}
    up_pids = procs.tree(upstream.pid)
    try:
        for name, start in plan:
            log(f"target {name}")
            # direct: no proxy on CPU 0, so the upstream gets it.
            cpu = PROXY_CPU if start is None else LOAD_CPU
            info["upstream_cpus"][name] = sorted(set(procs.pin(up_pids, cpu)))
            t = targets.Running("direct", targets.UPSTREAM_PORT, [], None) if start is None else start()
            try:
                r, m = measure_target(t, smoke, log, two if name.endswith("-2hop") else None)
                rows += r
                mems.append(m)
                if t.after:
                    t.info.update(t.after())
                if t.info:
                    info["targets"][name] = t.info
            finally:
                t.stop()
    finally:
        procs.stop(upstream)
    return rows, mems, info
