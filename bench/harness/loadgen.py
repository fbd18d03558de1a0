"""The load generators: wrk (closed loop) and oha (open loop, fixed rate).

Both run pinned to the load CPU, bounded by a duration and a subprocess
timeout, and return one dict of figures; latencies in microseconds.
"""

import json
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT_LUA = os.path.join(os.path.dirname(HERE), "peers", "wrk-report.lua")


def oha_bin():
    return shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")


def wrk(url, seconds, conns, cpus, headers=()):
    argv = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
            "--timeout", "5s", "-s", REPORT_LUA]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH-JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    j = json.loads(line[len("BENCH-JSON "):])
    errors = sum(j["errors"].values())
    secs = j["duration_us"] / 1e6
    return {
        "tool": "wrk",
        "requests": j["requests"],
        "errors": errors,
        "non2xx": j["errors"]["status"],
        "seconds": secs,
        "rps": j["requests"] / secs if secs else 0.0,
        "latency_us": j["latency_us"],
    }


def oha(url, seconds, conns, rate, cpus, headers=(), extra=()):
    """Open loop: `rate` requests/s for `seconds`, latency corrected for
    coordinated omission (measured from each request's scheduled time)."""
    argv = ["taskset", "-c", cpus, oha_bin(), "--no-tui", "--output-format", "json",
            "-z", f"{seconds}s", "-c", str(conns), "-q", str(rate),
            "--latency-correction", "-w", "-t", "5s"]
    for h in headers:
        argv += ["-H", h]
    argv += list(extra)
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr[-800:]}")
    j = json.loads(out.stdout)
    s = j["summary"]
    pct = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    errs = sum(j.get("errorDistribution", {}).values())
    total = sum(codes.values())

    def us(x):
        return None if x is None else round(x * 1e6)

    return {
        "tool": "oha",
        "rate": rate,
        "requests": total,
        "errors": errs + (total - ok),
        "non2xx": total - ok,
        "seconds": s.get("total"),
        "rps": s.get("requestsPerSec"),
        "latency_us": {
            "p50": us(pct.get("p50")),
            "p90": us(pct.get("p90")),
            "p99": us(pct.get("p99")),
            "max": us(s.get("slowest")),
            "mean": us(s.get("average")),
        },
    }
