"""Entry point: `python3 -m harness [--smoke] [--only-instructions] --out DIR`
(bench/run.sh calls it after installing the tools and building mesh)."""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from . import compare, gateway, instructions, mesh_timings, procs, report


def machine():
    def sh(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": sh("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": sh("git", "rev-parse", "--short", "HEAD"),
        "dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
        "versions": {
            "haproxy": sh("haproxy", "-v").splitlines()[0] if sh("haproxy", "-v") else "",
            "nginx": sh("sh", "-c", "nginx -v 2>&1"),
            "envoy": sh("envoy", "--version").split("version:")[-1].strip(),
            "wrk": sh("sh", "-c", "wrk -v 2>&1 | head -1"),
            "oha": sh(compare.loadgen.oha_bin(), "--version"),
            "valgrind": sh("valgrind", "--version"),
        },
    }


def main():
    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("--smoke", action="store_true", help="seconds, tiny load: checks the harness works")
    ap.add_argument("--out", required=True, help="directory for logs, results.json, RESULTS.md, chart")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--skip-mesh", action="store_true")
    ap.add_argument("--skip-instructions", action="store_true")
    ap.add_argument("--skip-gateway", action="store_true")
    ap.add_argument("--only-gateway", action="store_true",
                    help="only the gateway bench (mesh-proxy gateway, Envoy, nginx)")
    ap.add_argument("--only-instructions", action="store_true",
                    help="only instructions per request (callgrind); also BENCH_ONLY_INSTRUCTIONS=1")
    a = ap.parse_args()
    if a.only_instructions or os.environ.get("BENCH_ONLY_INSTRUCTIONS", "") not in ("", "0"):
        a.skip_compare = a.skip_mesh = True
        a.skip_instructions = False
    if a.only_gateway:
        a.skip_compare = a.skip_mesh = a.skip_instructions = True
    os.makedirs(a.out, exist_ok=True)
    os.environ["BENCH_OUT"] = a.out

    def log(msg):
        print(msg, flush=True)

    res = {"smoke": a.smoke, "machine": machine(), "load_before": open("/proc/loadavg").read().strip(),
           "notes": os.environ.get("BENCH_NOTES", "")}
    if not a.skip_compare:
        rows, mems, info = compare.run(a.out, a.smoke, log)
        res["rows"], res["memory"], res["targets"] = rows, mems, info
    if not a.skip_gateway and not (a.only_instructions or os.environ.get("BENCH_ONLY_INSTRUCTIONS", "") not in ("", "0")):
        res["gateway"] = gateway.run(a.out, a.smoke, log)
    if not a.skip_instructions:
        res["instructions"] = instructions.run(a.out, a.smoke, log)
    if not a.skip_mesh:
        res["mesh"] = mesh_timings.run(a.out, a.smoke, log)
    res["load_after"] = open("/proc/loadavg").read().strip()
    procs.cleanup()
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    problems = report.write(res, a.out)
    for p in problems:
        log(f"CHECK FAILED: {p}")
    log(f"wrote {a.out}/RESULTS.md")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
