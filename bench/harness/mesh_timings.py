"""Mesh-specific timings, absolute: registration → visible in N proxies,
a SIGKILLed endpoint under load, and mesh-control restart → every proxy
watching again. Proxies here are unpinned (the OS spreads them)."""

import asyncio
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request

from . import aio, procs, targets

KILL_PORTS = [18201, 18202, 18203]
REVISION = re.compile(rb"revision (\d+)")


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary_ms(xs):
    return {"n": len(xs), "p50_ms": r3(pct(xs, 50)), "p99_ms": r3(pct(xs, 99)), "max_ms": r3(max(xs) if xs else None)}


def r3(x):
    return None if x is None else round(x * 1000, 2)


def start_proxies(out, n, first_idx):
    ps = []
    for i in range(n):
        p, _port, admin = targets.start_proxy(out, None, first_idx + i, workers=1)
        ps.append((p, admin))
    for p, admin in ps:
        procs.wait_http(f"http://127.0.0.1:{admin}/ready", deadline_s=30)
    return ps


async def revision(conn):
    _s, _h, body = await conn.request(path="/ready")
    m = REVISION.search(body)
    return int(m.group(1)) if m else -1


async def registration_trials(admins, trials, tag):
    """Per trial: POST a new instance at t0, poll every proxy's /ready until
    its revision passes the one before; returns (per-proxy, per-trial-max)."""
    conns = [aio.Conn(a) for a in admins]
    control = aio.Conn(targets.CONTROL_PORT)
    per_proxy, all_seen, polls = [], [], 0
    for t in range(trials):
        before = await revision(conns[0])
        body = json.dumps({"address": "127.0.0.1", "port": 20000 + t, "id": f"{tag}-{t}"}).encode()

        async def watch(c):
            nonlocal polls
            end = time.monotonic() + 5.0
            while time.monotonic() < end:
                polls += 1
                if await revision(c) > before:
                    return time.monotonic()
            return None

        t0 = time.monotonic()
        pollers = [asyncio.ensure_future(watch(c)) for c in conns]
        status, _h, resp = await control.request("POST", "/v1/services/bench-reg/instances", body=body)
        if status != 201:
            raise RuntimeError(f"register: {status} {resp[:200]!r}")
        seen = await asyncio.gather(*pollers)
        if None in seen:
            raise RuntimeError(f"registration not visible in {seen.count(None)} proxies within 5s")
        per_proxy += [s - t0 for s in seen]
        all_seen.append(max(seen) - t0)
        await asyncio.sleep(0.05)
    for c in conns + [control]:
        c.close()
    return per_proxy, all_seen, polls


def registration(out, smoke, log):
    res = []
    sizes = [1, 3] if smoke else [1, 10, 50]
    trials = 3 if smoke else 20
    control = targets.start_control(out, None, data="control-data-reg")
    idx = 1
    try:
        for n in sizes:
            ps = start_proxies(out, n, idx)
            idx += n
            per_proxy, all_seen, polls = asyncio.run(
                registration_trials([a for _, a in ps], trials, f"n{n}"))
            row = {"proxies": n, "trials": trials, "per_proxy": summary_ms(per_proxy),
                   "all_proxies": summary_ms(all_seen), "polls": polls}
            log(f"  registration → {n} proxies: all p50 {row['all_proxies']['p50_ms']} ms "
                f"p99 {row['all_proxies']['p99_ms']} ms")
            res.append(row)
            for p, _ in ps:
                procs.stop(p)
    finally:
        procs.stop(control)
    return res


def config_doc(n):
    """A config whose content changes with `n`: a few keys, a secret, a file."""
    return {"application": "bench", "data": {
        "greeting": {"text": f"hello {n}"}, "pool": {"size": len(str(n))}, "db": {"password": f"pw-{n}"}},
        "files": {"app.yaml": f"greeting: hello {n}\n" + "# padding\n" * 64},
        "secret": ["db.password"]}


async def config_trials(proxies, trials, tag):
    """Per trial: long-poll every proxy's /config/bench/default past the
    version it holds, then at t0 PUT a new version (every fifth trial, a
    rollback to version 1 instead, the same path); each proxy's answer
    time is when the version is on its disk (files are written before the
    endpoint moves) — checked by reading its application.json."""
    control = aio.Conn(targets.CONTROL_PORT)
    conns = [aio.Conn(admin) for admin, _ in proxies]
    applies, rollbacks, all_applies, all_rollbacks = [], [], [], []
    version = 1
    for t in range(trials):
        rollback = t % 5 == 4

        async def wait_past(c, held):
            status, _h, body = await c.request(
                path=f"/config/bench/default?version={held}&wait=5s", timeout=6.0)
            done = time.monotonic()
            if status != 200:
                raise RuntimeError(f"long poll answered {status}: {body[:200]!r}")
            return done, json.loads(body)

        pollers = [asyncio.ensure_future(wait_past(c, version)) for c in conns]
        await asyncio.sleep(0.02)  # every long poll is in flight
        t0 = time.monotonic()
        if rollback:
            req = ("POST", "/v1/configs/bench/default/rollback", json.dumps({"to": 1}).encode())
        else:
            doc = {"document": config_doc(f"{tag}-{t}"), "message": f"trial {t}"}
            req = ("PUT", "/v1/configs/bench/default", json.dumps(doc).encode())
        status, _h, resp = await control.request(req[0], req[1], body=req[2], timeout=5.0)
        if status != 200:
            raise RuntimeError(f"config {req[0]}: {status} {resp[:200]!r}")
        made = json.loads(resp)
        seen = await asyncio.gather(*pollers)
        for (_admin, cfg_dir), (_done, v) in zip(proxies, seen):
            if v["version"] != made["version"]:
                raise RuntimeError(f"a proxy answered v{v['version']}, not v{made['version']}")
            with open(os.path.join(cfg_dir, "application.json")) as f:
                on_disk = json.load(f)
            if on_disk["greeting"]["text"] != v["data"]["greeting.text"]:
                raise RuntimeError("the endpoint moved before the files did")
        times = [done - t0 for done, _ in seen]
        (rollbacks if rollback else applies).extend(times)
        (all_rollbacks if rollback else all_applies).append(max(times))
        version = made["version"]
    for c in conns + [control]:
        c.close()
    return applies, all_applies, rollbacks, all_rollbacks


def config_propagation(out, smoke, log):
    """A config change (and a rollback) → on disk in every subscribed proxy."""
    n = 3 if smoke else 50
    trials = 5 if smoke else 25
    control = targets.start_control(out, None, data="control-data-config")
    started = []
    try:
        body = json.dumps({"document": config_doc(0), "message": "v1"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{targets.CONTROL_PORT}/v1/configs/bench/default",
                                     data=body, method="PUT", headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            if r.status != 200:
                raise RuntimeError(f"config PUT: {r.status}")
        proxies = []
        for i in range(n):
            cfg_dir = os.path.join(out, f"config-{i}")
            p, _port, admin = targets.start_proxy(
                out, None, 200 + i, workers=1,
                extra=("--config", "bench", "--config-dir", cfg_dir))
            started.append(p)
            proxies.append((admin, cfg_dir))
        for admin, _ in proxies:
            procs.wait_http(f"http://127.0.0.1:{admin}/config/bench/default", deadline_s=30)
        applies, all_applies, rollbacks, all_rollbacks = asyncio.run(
            config_trials(proxies, trials, f"n{n}"))
        res = {"proxies": n, "trials": trials,
               "per_proxy": summary_ms(applies), "all_proxies": summary_ms(all_applies),
               "rollback_per_proxy": summary_ms(rollbacks), "rollback_all_proxies": summary_ms(all_rollbacks)}
        log(f"  config change → on disk in {n} proxies: all p50 {res['all_proxies']['p50_ms']} ms "
            f"p99 {res['all_proxies']['p99_ms']} ms; rollback all p99 {res['rollback_all_proxies']['p99_ms']} ms")
        return res
    finally:
        for p in started:
            procs.stop(p)
        procs.stop(control)


def write_app_conf(out, name, port):
    prefix = os.path.join(out, f"app-{name}")
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; master_process off; pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{port};
    location / {{ add_header X-Served-By {name} always; return 200 "{name}\\n"; }} }} }}
""")
    return prefix, conf


def kill_endpoint(out, smoke, log):
    """Three apps, each with a sidecar that registers it (TCP health check
    every 1 s); a client proxy sends ~1000 rps to the service; app `a` is
    SIGKILLed mid-run. Counts failures and finds the last request that
    still went to `a` (or failed) after the kill."""
    rate = 200 if smoke else 1000
    seconds = 3 if smoke else 8
    kill_at = 1.0 if smoke else 3.0
    control = targets.start_control(out, None, data="control-data-kill")
    started = [control]
    try:
        apps = {}
        for i, (name, port) in enumerate(zip("abc", KILL_PORTS)):
            prefix, conf = write_app_conf(out, name, port)
            app = procs.spawn(["nginx", "-p", prefix, "-c", conf, "-e", "stderr"],
                              log=os.path.join(out, f"app-{name}.log"))
            procs.wait_port(port, proc=app)
            apps[name] = app
            side, _, admin = targets.start_proxy(
                out, None, 70 + i, workers=1,
                extra=["--service", "kill", "--app-port", str(port), "--advertise", "127.0.0.1",
                       "--inbound", "127.0.0.1:0",
                       "--instance-id", f"kill-{name}"])
            started += [app, side]
        client, cport, cadmin = targets.start_proxy(out, None, 80, workers=1)
        started.append(client)
        procs.wait_http(f"http://127.0.0.1:{cadmin}/ready")
        procs.wait_http(f"http://127.0.0.1:{cport}/", headers={"Host": "kill"})
        # All three ready before the load starts.
        procs.wait_http(f"http://127.0.0.1:{cadmin}/state", deadline_s=20,
                        ok=lambda s, b: b.count(b'"ready"') >= 3)
        killed = {}

        async def killer(start):
            await asyncio.sleep(max(0.0, start + kill_at - time.monotonic()))
            killed["t"] = time.monotonic()
            os.kill(apps["a"].pid, signal.SIGKILL)

        recs = asyncio.run(aio.fixed_rate(cport, "kill", rate, seconds, on_tick=killer))
        tk = killed["t"]
        after = [r for r in recs if r[1] >= tk]
        bad = [r for r in after if r[2] != 200 or r[3] == "a"]
        failed = [r for r in recs if r[2] != 200]
        last_bad = max((r[1] for r in bad), default=None)
        res = {
            "rate": rate, "seconds": seconds, "requests": len(recs),
            "failed": len(failed), "to_dead_or_failed_after_kill": len(bad),
            "last_bad_after_kill_ms": r3(last_bad - tk) if last_bad else 0.0,
            "failure_kinds": sorted({f"{r[2]} {r[3]}" for r in failed}),
            "achieved_rps": round(len(recs) / (max(r[1] for r in recs) - min(r[0] for r in recs)), 1),
        }
        log(f"  SIGKILL endpoint: traffic to it stopped after {res['last_bad_after_kill_ms']} ms, "
            f"{res['failed']} of {res['requests']} requests failed")
        return res
    finally:
        for p in reversed(started):
            procs.stop(p)


def connected(admin):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/state", timeout=1) as r:
            return json.loads(r.read()).get("control_connected") is True
    except Exception:  # down or restarting: not connected
        return False


def wait_all(admins, want, deadline_s, t0=None):
    """Seconds from t0 until each proxy's control_connected == want."""
    t0 = time.monotonic() if t0 is None else t0
    done = {}
    while len(done) < len(admins) and time.monotonic() - t0 < deadline_s:
        for a in admins:
            if a not in done and connected(a) == want:
                done[a] = time.monotonic() - t0
        time.sleep(0.005)
    return done


def control_restart(out, smoke, log):
    n = 3 if smoke else 10
    control = targets.start_control(out, None, data="control-data-restart")
    ps = []
    try:
        ps = start_proxies(out, n, 90)
        admins = [a for _, a in ps]
        if len(wait_all(admins, True, 10)) < n:
            raise RuntimeError("proxies never connected to mesh-control")
        procs.stop(control, sig=signal.SIGKILL)
        down = wait_all(admins, False, 30)
        t0 = time.monotonic()
        control = targets.start_control(out, None, data="control-data-restart")
        listening = time.monotonic() - t0
        up = wait_all(admins, True, 60, t0=t0)
        total = list(up.values())
        res = {"proxies": n, "noticed_down": summary_ms(list(down.values())),
               "control_start_ms": r3(listening),
               "watching_after_restart": summary_ms(total),
               "all_reconnected": len(up) == n}
        log(f"  mesh-control restart: {len(up)}/{n} proxies watching again, "
            f"max {res['watching_after_restart']['max_ms']} ms after the restart began")
        return res
    finally:
        for p, _ in ps:
            procs.stop(p)
        procs.stop(control)


def http_status(port, host):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def first_traffic(out, smoke, log):
    """A new instance: its sidecar and its app (nginx) start together at
    t0; a client proxy's requests for the service are polled every 5 ms.
    First traffic = t0 → the first 200. The app listens within tens of
    milliseconds, after the sidecar's first health check has failed."""
    trials = 1 if smoke else 5
    port = 18210
    control = targets.start_control(out, None, data="control-data-first")
    started = [control]
    times, listening = [], []
    try:
        client, cport, cadmin = targets.start_proxy(out, None, 60, workers=1)
        started.append(client)
        procs.wait_http(f"http://127.0.0.1:{cadmin}/ready")
        prefix, conf = write_app_conf(out, "first", port)
        for t in range(trials):
            t0 = time.monotonic()
            side, _, _admin = targets.start_proxy(
                out, None, 61, workers=1, log_name=f"first-sidecar-{t}.log",
                extra=["--service", "first", "--app-port", str(port), "--advertise", "127.0.0.1",
                       "--inbound", "127.0.0.1:0", "--instance-id", f"first-{t}"])
            app = procs.spawn(["nginx", "-p", prefix, "-c", conf, "-e", "stderr"],
                              log=os.path.join(out, f"app-first-{t}.log"))
            procs.wait_port(port, proc=app)
            listening.append(time.monotonic() - t0)
            deadline = t0 + 10
            while time.monotonic() < deadline and http_status(cport, "first") != 200:
                time.sleep(0.005)
            if time.monotonic() >= deadline:
                raise RuntimeError("the new instance never got traffic within 10 s")
            times.append(time.monotonic() - t0)
            procs.stop(side)
            procs.stop(app)
            # Deregistered: the client sees no endpoint before the next trial.
            end = time.monotonic() + 10
            while time.monotonic() < end and http_status(cport, "first") == 200:
                time.sleep(0.01)
        res = {"trials": trials, "first_traffic": summary_ms(times), "app_listening": summary_ms(listening)}
        log(f"  first traffic: p50 {res['first_traffic']['p50_ms']} ms after the sidecar started "
            f"(app listening after {res['app_listening']['p50_ms']} ms)")
        return res
    finally:
        for p in reversed(started):
            procs.stop(p)


def run(out, smoke, log):
    log("mesh timings")
    return {
        "first_traffic": first_traffic(out, smoke, log),
        "registration": registration(out, smoke, log),
        "config": config_propagation(out, smoke, log),
        "kill_endpoint": kill_endpoint(out, smoke, log),
        "control_restart": control_restart(out, smoke, log),
        "breaker_trip": None,  # the breaker lands with issue 3
    }
