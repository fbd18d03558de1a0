"""Instructions per request, from valgrind's callgrind: a figure that does
not depend on how fast (or how busy) the machine is.

For mesh-proxy (`--workers 1`, default policy, one hop: `Host: bench` →
the upstream registered statically) and HAProxy (one hop, its one-thread
config): the proxy runs under `valgrind --tool=callgrind`, pinned to CPU 0;
once it answers, oha sends N keep-alive requests over 10 connections (from
CPU 1, to the upstream on CPU 1), then the proxy is stopped gracefully and
the total Ir (instructions executed, every thread) read from callgrind's
output. A fresh run with N1 and another with N2 requests:
(Ir(N2) − Ir(N1)) / (N2 − N1) is the cost of one request, with startup,
readiness and shutdown subtracted out.

Variants of mesh-proxy, each measured the same way:
- `mesh-proxy-traced`: spans on (`--otlp-endpoint` to a sink in this
  process that takes every batch, `--trace-sample 1`: every request
  starts a recorded trace), the cost of tracing;
- `mesh-proxy-sampled`: the same at the default `--trace-sample 0.01`;
- `mesh-proxy-baseline`, only when BENCH_BASELINE_BIN_DIR names the
  release binaries of an earlier commit: the same proxy before a change
  (the rolling statistics, request ids and decision trails of issue 16 were
  measured against the commit before them this way).
"""

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time

from . import loadgen, procs, targets

PROXY_CPU = "0"
LOAD_CPU = "1"
CONNS = 10
MESH_PORT, MESH_ADMIN = 18104, 18194
HAPROXY_PORT = 18101
UP_DEADLINE_S = 60  # under valgrind startup is ~50x slower


def sizes(smoke):
    """(N1, N2, repetitions)."""
    return (200, 600, 1) if smoke else (1000, 4000, 2)


def total_ir(path):
    """Total Ir of a callgrind output file ("summary:" line, else "totals:")."""
    summary = totals = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:"):
                summary = int(line.split()[1])
            elif line.startswith("totals:"):
                totals = int(line.split()[1])
    ir = summary if summary is not None else totals
    if ir is None:
        raise RuntimeError(f"{path}: no summary/totals line")
    return ir


def valgrind(cg_out):
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}"]


def drive(port, n):
    """n keep-alive GETs of /small over CONNS connections, bounded in time;
    returns how many answered 2xx."""
    url = f"http://127.0.0.1:{port}/small"
    argv = ["taskset", "-c", LOAD_CPU, loadgen.oha_bin(), "-n", str(n), "-c", str(CONNS), "--no-tui",
            "--output-format", "json", "-t", "30s", "-H", "Host: bench", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120 + n // 20)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr[-800:]}")
    codes = json.loads(out.stdout).get("statusCodeDistribution", {})
    return sum(v for k, v in codes.items() if k.startswith("2"))


def answer_once(port, proc):
    """Waits until the proxy forwards one request (to the upstream)."""
    procs.wait_port(port, deadline_s=UP_DEADLINE_S, proc=proc)
    procs.wait_http(f"http://127.0.0.1:{port}/small", deadline_s=UP_DEADLINE_S,
                    headers={"Host": "bench"}, timeout=30)


def stop_gracefully(p, sig, what):
    """Signals the proxy and waits for it to exit by itself (callgrind
    writes its file at exit); SIGTERM after 60 s, SIGKILL after 90 s."""
    os.killpg(p.pid, sig)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        if sig != signal.SIGTERM:
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            procs.stop(p, sig=signal.SIGKILL)
            raise RuntimeError(f"{what} did not exit within 90 s of signal {sig}: no callgrind output")


class _Sink(http.server.BaseHTTPRequestHandler):
    """Takes every OTLP batch (200, body discarded)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_sink():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def mesh_variant(name, extra=(), bin_dir=None):
    """run_mesh for one variant: `extra` flags, binaries from `bin_dir`."""
    def fn(out, n, tag):
        return run_mesh(out, n, f"{name}-{tag}", extra, bin_dir)
    return fn


def run_mesh(out, n, tag, extra=(), bin_dir=None):
    cg = os.path.join(out, f"callgrind-mesh-proxy-{tag}-{n}.out")
    if os.path.exists(cg):
        os.remove(cg)
    # A fresh cache dir every run: a snapshot left by the previous run would
    # change what startup does, and startup must be the same in both runs.
    cache_idx = f"cg-{tag}-{n}"
    shutil.rmtree(os.path.join(out, f"proxy-cache-{cache_idx}"), ignore_errors=True)
    saved = os.environ.get("MESH_BIN_DIR")
    if bin_dir:
        os.environ["MESH_BIN_DIR"] = bin_dir
    try:
        p, port, admin = targets.start_proxy(out, PROXY_CPU, cache_idx, workers=1, extra=extra,
                                             log_name=f"callgrind-mesh-proxy-{tag}-{n}.log",
                                             ports=(MESH_PORT, MESH_ADMIN, 18153), wrap=valgrind(cg))
    finally:
        if saved is None:
            os.environ.pop("MESH_BIN_DIR", None)
        else:
            os.environ["MESH_BIN_DIR"] = saved
    try:
        procs.wait_http(f"http://127.0.0.1:{admin}/ready", deadline_s=UP_DEADLINE_S, timeout=30)
        answer_once(port, p)
        ok = drive(port, n)
        stop_gracefully(p, signal.SIGTERM, "mesh-proxy")
    finally:
        procs.stop(p)
    return ok, total_ir(cg)


def run_haproxy(out, n, tag):
    cg = os.path.join(out, f"callgrind-haproxy-{tag}-{n}.out")
    if os.path.exists(cg):
        os.remove(cg)
    p = procs.spawn(valgrind(cg) + ["haproxy", "-db", "-f", os.path.join(targets.PEERS, "haproxy.cfg")],
                    cpus=PROXY_CPU, log=os.path.join(out, f"callgrind-haproxy-{tag}-{n}.log"))
    try:
        answer_once(HAPROXY_PORT, p)
        ok = drive(HAPROXY_PORT, n)
        # Soft stop: stops listening, exits once its connections are done.
        stop_gracefully(p, signal.SIGUSR1, "haproxy")
    finally:
        procs.stop(p)
    return ok, total_ir(cg)


def measure(out, name, fn, n1, n2, reps, log):
    res = []
    for rep in range(1, reps + 1):
        t0 = time.monotonic()
        ok1, ir1 = fn(out, n1, f"r{rep}")
        ok2, ir2 = fn(out, n2, f"r{rep}")
        if ok1 != n1 or ok2 != n2:
            raise RuntimeError(f"{name}: {ok1}/{n1} and {ok2}/{n2} requests answered 2xx")
        per = (ir2 - ir1) / (n2 - n1)
        res.append({"n1": n1, "ir1": ir1, "n2": n2, "ir2": ir2, "per_request": round(per),
                    "startup_ir": round(ir1 - per * n1), "seconds": round(time.monotonic() - t0, 1)})
        log(f"  {name:11} run {rep}: {per:,.0f} instructions per request "
            f"(Ir {ir1:,} for {n1}, {ir2:,} for {n2}; {res[-1]['seconds']} s)")
    return res


def run(out, smoke, log):
    log("instructions per request (callgrind)")
    if not shutil.which("valgrind"):
        raise RuntimeError("valgrind not found (apt-get install valgrind)")
    n1, n2, reps = sizes(smoke)
    upstream = targets.start_upstream(out, LOAD_CPU)
    started = [upstream]
    try:
        started.append(targets.start_control(out, LOAD_CPU, data="control-data-callgrind"))
        targets.ctl("register", "bench", f"127.0.0.1:{targets.UPSTREAM_PORT}")
        res = {"conns": CONNS, "tool": "valgrind --tool=callgrind", "n1": n1, "n2": n2,
               "mesh-proxy": measure(out, "mesh-proxy", run_mesh, n1, n2, reps, log),
               "haproxy": measure(out, "haproxy", run_haproxy, n1, n2, reps, log)}
        sink = start_sink()
        try:
            otlp = ["--otlp-endpoint", f"http://127.0.0.1:{sink.server_address[1]}"]
            res["mesh-proxy-traced"] = measure(out, "mesh-proxy-traced",
                                               mesh_variant("traced", [*otlp, "--trace-sample", "1"]),
                                               n1, n2, reps, log)
            res["mesh-proxy-sampled"] = measure(out, "mesh-proxy-sampled",
                                                mesh_variant("sampled", [*otlp, "--trace-sample", "0.01"]),
                                                n1, n2, reps, log)
        finally:
            sink.shutdown()
        base = os.environ.get("BENCH_BASELINE_BIN_DIR")
        if base:
            res["mesh-proxy-baseline"] = measure(out, "mesh-proxy-baseline",
                                                 mesh_variant("baseline", bin_dir=base), n1, n2, reps, log)
    finally:
        for p in reversed(started):
            procs.stop(p)
    m = sum(r["per_request"] for r in res["mesh-proxy"]) / reps
    h = sum(r["per_request"] for r in res["haproxy"]) / reps
    res["mesh_over_haproxy"] = round(m / h, 2) if h > 0 else None
    log(f"  mesh-proxy ÷ haproxy: {res['mesh_over_haproxy']}")
    for variant in ("mesh-proxy-traced", "mesh-proxy-sampled", "mesh-proxy-baseline"):
        if res.get(variant):
            v = sum(r["per_request"] for r in res[variant]) / reps
            res[f"{variant}_over_mesh"] = round(v / m, 3) if m > 0 else None
            log(f"  {variant} ÷ mesh-proxy: {res[f'{variant}_over_mesh']}")
    return res
