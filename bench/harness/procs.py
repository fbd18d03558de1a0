"""Processes the harness starts: pinning, bookkeeping, cleanup, and the
/proc readings (CPU ticks, RSS) every figure is made of.

Every process is started in its own session (process group) and recorded;
cleanup signals exactly those groups, by id, and nothing else.
"""

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
_started = []  # Popen objects, in start order


def spawn(argv, cpus=None, log=None, env=None, cwd=None):
    """Starts argv (pinned to `cpus`, e.g. "0", with taskset) in its own
    process group; stdout and stderr go to `log`."""
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + list(argv)
    out = open(log, "ab") if log else subprocess.DEVNULL
    p = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    _started.append(p)
    with open(os.path.join(os.environ.get("BENCH_OUT", "/tmp"), "pids.txt"), "a") as f:
        f.write(f"{p.pid} {' '.join(map(str, argv))}\n")
    return p


def stop(p, sig=signal.SIGTERM, grace=5.0):
    """Stops one process we started (its whole group), escalating to SIGKILL."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=5)
    # Children that outlived the leader (nginx workers) are still in the group.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cleanup():
    for p in reversed(_started):
        try:
            stop(p, grace=2.0)
        except Exception as e:  # keep going: the rest must still be stopped
            print(f"cleanup: {p.pid}: {e}", file=sys.stderr)
    _started.clear()


def _on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def wait_port(port, deadline_s=20.0, proc=None):
    """Waits until 127.0.0.1:port accepts a connection."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited ({proc.returncode}) before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {deadline_s}s")


def http_get(url, timeout=2.0, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, deadline_s=20.0, ok=lambda status, body: status == 200, headers=None, timeout=2.0):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            status, body = http_get(url, headers=headers, timeout=timeout)
            if ok(status, body):
                return body
            last = f"{status} {body[:200]!r}"
        except Exception as e:  # not up yet
            last = str(e)
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready within {deadline_s}s: {last}")


def tree(pid):
    """pid and its descendants (nginx master + worker)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pin(pids, cpus):
    """Moves running processes (every thread of each) to `cpus`, e.g. "0"
    or "0,1"; returns their Cpus_allowed_list afterwards, one per process."""
    want = {int(c) for c in cpus.split(",")}
    for p in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for t in tids:
            try:
                os.sched_setaffinity(t, want)
            except OSError:  # the thread exited meanwhile
                pass
    return [allowed_cpus(p) for p in pids]


def allowed_cpus(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_seconds(pids):
    """utime + stime of the given processes (all their threads), in seconds."""
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # fields 14, 15 of stat(5)
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLK_TCK


def rss_kb(pids, key):
    """Sum of VmRSS or VmHWM over the processes, in KiB."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total
