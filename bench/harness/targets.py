"""The upstream and the targets under test: how each is started, where it
listens, and which processes its CPU and memory are read from.

Ports (all 127.0.0.1): upstream 18080; HAProxy 18101; nginx 18102;
Envoy 18103 (admin 18190); mesh-proxy 18104 (admin 18194, DNS 18153);
mesh-control 18110. Two hops (client side → server side → upstream):
HAProxy 18121 → 18122; Envoy 18123 → 18124 (admins 18191, 18192);
mesh-proxy client sidecar 18105 (admin 18195, DNS 18155) → server sidecar's
inbound listener 18106 (its outbound 18107, admin 18197, DNS 18157).
The peers' configs are in bench/peers/.
"""

import atexit
import json
import os
import shutil
import string
import tempfile
import subprocess
import time

from . import procs

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(BENCH, "peers")

UPSTREAM_PORT = 18080
CONTROL_PORT = 18110
CONTROL_URL = f"http://127.0.0.1:{CONTROL_PORT}"
SMALL_BODY = b"hello from the bench upstream\n"
BIG_BODY_LEN = 16 * 1024


def mesh_bin(name):
    d = os.environ.get("MESH_BIN_DIR")
    return os.path.join(d, name) if d else shutil.which(name)


class Running:
    """A started target: its port and the processes to measure (one pid, or
    a list of them for the two-hop targets: the CPU figure is their sum).
    `info` is what the target reports about itself (results.json), and
    `after`, if set, is called once its cases ran and adds to it."""

    def __init__(self, name, port, procs_, measure_pid, info=None, after=None):
        self.name = name
        self.port = port
        self.procs = procs_
        if measure_pid is None:
            self.measure_pids = []
        elif isinstance(measure_pid, int):
            self.measure_pids = [measure_pid]
        else:
            self.measure_pids = list(measure_pid)
        self.info = info or {}
        self.after = after

    def pids(self):
        return [q for p in self.measure_pids for q in procs.tree(p)]

    def hop_pids(self):
        """Per measured process (per hop), its process tree."""
        return [procs.tree(p) for p in self.measure_pids]

    def stop(self):
        for p in reversed(self.procs):
            procs.stop(p)


def start_upstream(out, cpus):
    # nginx's workers drop to an unprivileged user, so the files they serve
    # must not sit below the checkout, whose parents may be private (a
    # clone in a mktemp dir answers 403). A world-readable temp dir instead.
    prefix = tempfile.mkdtemp(prefix="mesh-bench-upstream-")
    os.chmod(prefix, 0o755)
    atexit.register(shutil.rmtree, prefix, True)
    www = os.path.join(prefix, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "small"), "wb") as f:
        f.write(SMALL_BODY)
    with open(os.path.join(www, "16k"), "wb") as f:
        f.write(bytes((i * 7 + 13) % 251 for i in range(BIG_BODY_LEN)))
    p = procs.spawn(["nginx", "-p", prefix, "-c", os.path.join(PEERS, "upstream-nginx.conf"),
                     "-e", "stderr"], cpus=cpus, log=os.path.join(out, "upstream.log"))
    procs.wait_port(UPSTREAM_PORT, proc=p)
    return p


def start_haproxy(out, cpus):
    p = procs.spawn(["haproxy", "-db", "-f", os.path.join(PEERS, "haproxy.cfg")],
                    cpus=cpus, log=os.path.join(out, "haproxy.log"))
    procs.wait_port(18101, proc=p)
    return Running("haproxy", 18101, [p], p.pid)


def start_nginx(out, cpus):
    prefix = os.path.join(out, "nginx")
    os.makedirs(prefix, exist_ok=True)
    p = procs.spawn(["nginx", "-p", prefix, "-c", os.path.join(PEERS, "nginx.conf"), "-e", "stderr"],
                    cpus=cpus, log=os.path.join(out, "nginx.log"))
    procs.wait_port(18102, proc=p)
    return Running("nginx", 18102, [p], p.pid)


def start_envoy(out, cpus):
    p = procs.spawn(["envoy", "-c", os.path.join(PEERS, "envoy.yaml"), "--concurrency", "1",
                     "--disable-hot-restart", "-l", "warn"],
                    cpus=cpus, log=os.path.join(out, "envoy.log"))
    procs.wait_port(18103, deadline_s=60, proc=p)
    procs.wait_http("http://127.0.0.1:18190/ready", deadline_s=60)
    return Running("envoy", 18103, [p], p.pid)


# Identity (mTLS, tokens, TLS to mesh-control) is off for every target
# but the mTLS one: the plaintext figures stay comparable with the runs
# before identity, and the mTLS target is measured beside them.
IDENTITY = {"MESH_IDENTITY": "off"}
# The mTLS target's trust bundle and admin token (set when it starts).
MTLS = {}


def start_control(out, cpus, port=CONTROL_PORT, data="control-data", identity=False):
    env = dict(os.environ, MESH_IDENTITY="on" if identity else "off")
    data_dir = os.path.join(out, data)
    p = procs.spawn([mesh_bin("mesh-control"), "--listen", f"127.0.0.1:{port}",
                     "--data-dir", data_dir],
                    cpus=cpus, env=env, log=os.path.join(out, "mesh-control.log"))
    if not identity:
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", deadline_s=20)
        return p
    MTLS["bundle"] = os.path.join(data_dir, "identity", "bundle.pem")
    MTLS["admin"] = os.path.join(data_dir, "identity", "admin.token")
    end = time.monotonic() + 20
    while True:
        try:
            ctl("status", control=f"https://127.0.0.1:{port}", mtls=True)
            return p
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            if time.monotonic() > end:
                raise RuntimeError(f"mesh-control (identity on) not ready within 20s: {e}")
            time.sleep(0.1)


def ctl(*args, control=CONTROL_URL, mtls=False):
    env = dict(os.environ)
    if mtls:
        env.update(MESH_TRUST_BUNDLE=MTLS["bundle"], MESH_TOKEN_FILE=MTLS["admin"])
    out = subprocess.run([mesh_bin("mesh-ctl"), "--control", control, "-o", "json", *args],
                         capture_output=True, text=True, timeout=20, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"mesh-ctl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def start_proxy(out, cpus, idx, workers=None, control=CONTROL_URL, log_name=None, extra=(),
                ports=None, wrap=()):
    """One mesh-proxy in explicit/Host-routing mode, no interception, no
    SO_MARK; idx picks its ports (outbound 18104 for idx 0; 19000+ else)
    unless `ports` = (outbound, admin, dns) names them, and its cache dir.
    `wrap` goes before the binary (valgrind)."""
    if ports:
        outbound, admin, dns = ports
    elif idx == 0:
        outbound, admin, dns = 18104, 18194, 18153
    else:
        outbound, admin, dns = 19000 + 3 * idx, 19001 + 3 * idx, 19002 + 3 * idx
    argv = [*wrap, mesh_bin("mesh-proxy"), "--control", control, "--mark", "0",
            "--outbound", f"127.0.0.1:{outbound}", "--admin", f"127.0.0.1:{admin}",
            "--dns", f"127.0.0.1:{dns}", "--cache-dir", os.path.join(out, f"proxy-cache-{idx}"),
            *extra]
    if workers:
        argv += ["--workers", str(workers)]
    env = dict(os.environ, MESH_LOG=os.environ.get("MESH_LOG", "warn"),
               MESH_IDENTITY="on" if control.startswith("https://") else "off")
    p = procs.spawn(argv, cpus=cpus, env=env,
                    log=os.path.join(out, log_name or f"mesh-proxy-{idx}.log"))
    return p, outbound, admin


# Every policy as loose as it goes: no retries (so no body buffering), no
# ejection, a breaker and a bulkhead that never trip. What is left is the
# bookkeeping each layer does per call (a few atomics).
POLICIES_OFF = """kind: ServicePolicy
service: bench
retries: { attempts: 0 }
breaker: { minRequests: 1000000, failureRate: 100, slowCall: { duration: 1h, rate: 100 } }
bulkhead: { maxConcurrent: 1000000 }
outlier: { consecutiveFailures: 0 }
"""


def start_mesh(out, cpus, workers, name, policy=None):
    """mesh-control (on the load CPU) with `bench` → upstream registered
    statically, and one mesh-proxy on `cpus`; `policy` is applied first
    (default: the default stack)."""
    control = start_control(out, "1", data=f"control-data-{name}")
    ctl("register", "bench", f"127.0.0.1:{UPSTREAM_PORT}")
    if policy:
        path = os.path.join(out, f"{name}-policy.yaml")
        with open(path, "w") as f:
            f.write(policy)
        ctl("apply", "-f", path)
    p, port, admin = start_proxy(out, cpus, 0, workers=workers, log_name=f"{name}.log")
    procs.wait_http(f"http://127.0.0.1:{admin}/ready")
    procs.wait_http(f"http://127.0.0.1:{port}/small", headers={"Host": "bench"})
    return Running(name, port, [control, p], p.pid)


# Two hops: what a mesh user pays, client → client-side proxy → server-side
# proxy → app. Every hop of one target on the same CPUs (`cpus`).

def start_haproxy_2hop(out, cpus):
    cfg = os.path.join(PEERS, "haproxy-2hop.cfg")
    started = []
    for side, listen, nxt in (("server", 18122, UPSTREAM_PORT), ("client", 18121, 18122)):
        env = dict(os.environ, LISTEN=str(listen), NEXT=str(nxt))
        p = procs.spawn(["haproxy", "-db", "-f", cfg], cpus=cpus, env=env,
                        log=os.path.join(out, f"haproxy-2hop-{side}.log"))
        procs.wait_port(listen, proc=p)
        started.append(p)
    procs.wait_http("http://127.0.0.1:18121/small", headers={"Host": "bench"})
    server, client = started
    return Running("haproxy-2hop", 18121, started, [client.pid, server.pid])


def start_envoy_2hop(out, cpus):
    with open(os.path.join(PEERS, "envoy-2hop.yaml")) as f:
        tmpl = string.Template(f.read())
    started = []
    for side, listen, admin, nxt in (("server", 18124, 18192, UPSTREAM_PORT),
                                     ("client", 18123, 18191, 18124)):
        cfg = os.path.join(out, f"envoy-2hop-{side}.yaml")
        with open(cfg, "w") as f:
            f.write(tmpl.substitute(LISTEN=listen, ADMIN=admin, NEXT=nxt))
        p = procs.spawn(["envoy", "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                         "-l", "warn"], cpus=cpus, log=os.path.join(out, f"envoy-2hop-{side}.log"))
        started.append(p)
        procs.wait_port(listen, deadline_s=60, proc=p)
        procs.wait_http(f"http://127.0.0.1:{admin}/ready", deadline_s=60)
    procs.wait_http("http://127.0.0.1:18123/small", headers={"Host": "bench"})
    server, client = started
    return Running("envoy-2hop", 18123, started, [client.pid, server.pid])


MESH_2HOP_CLIENT = (18105, 18195, 18155)  # outbound, admin, DNS
MESH_2HOP_SERVER = (18107, 18197, 18157)
MESH_2HOP_INBOUND = 18106


def inbound_requests(admin):
    """mesh_inbound_requests_total summed over callers and status classes,
    from a proxy's /metrics; and the 2xx part."""
    _s, body = procs.http_get(f"http://127.0.0.1:{admin}/metrics", timeout=5)
    total = ok = 0
    for line in body.decode().splitlines():
        if line.startswith("mesh_inbound_requests_total"):
            v = int(float(line.rsplit(None, 1)[1]))
            total += v
            if 'class="2xx"' in line:
                ok += v
    return total, ok


def start_mesh_2hop(out, cpus, name="mesh-proxy-2hop", mtls=False):
    """mesh-control (on the load CPU), no static registration; the server
    sidecar registers the app (the upstream) as `bench` with its inbound
    listener; the client sidecar routes `Host: bench` to that inbound
    listener. Both `--workers 1` on `cpus`. Checks that the endpoint the
    client uses carries the inbound port and that a request went through
    the server sidecar's inbound side. `mtls`: identity on (a bootstrap
    token each; the hop between the sidecars is mTLS)."""
    control = start_control(out, "1", data=f"control-data-{name}", identity=mtls)
    url = f"https://127.0.0.1:{CONTROL_PORT}" if mtls else CONTROL_URL
    started = [control]

    def identity(service):
        if not mtls:
            return []
        token = json.loads(ctl("token", "create", "--service", service, control=url, mtls=True))["token"]
        path = os.path.join(out, f"{name}-{service}.token")
        with open(path, "w") as f:
            f.write(token)
        return ["--trust-bundle", MTLS["bundle"], "--token-file", path]
    try:
        srv, _o, sadmin = start_proxy(
            out, cpus, f"{name}-server", workers=1, log_name=f"{name}-server.log", ports=MESH_2HOP_SERVER,
            control=url,
            extra=["--service", "bench", "--app-port", str(UPSTREAM_PORT), "--advertise", "127.0.0.1",
                   "--inbound", f"127.0.0.1:{MESH_2HOP_INBOUND}", *identity("bench")])
        started.append(srv)
        procs.wait_http(f"http://127.0.0.1:{sadmin}/ready")
        procs.wait_port(MESH_2HOP_INBOUND, proc=srv)

        # The registered instance must carry the inbound port: callers reach
        # it there, not at the app port.
        end = time.monotonic() + 20
        while True:
            try:
                eps = json.loads(ctl("endpoints", "bench", control=url, mtls=mtls))["instances"]
            except RuntimeError:  # not registered yet
                eps = []
            if any(e.get("inbound_port") == MESH_2HOP_INBOUND and e.get("health") == "up" for e in eps):
                break
            if time.monotonic() > end:
                raise RuntimeError(f"{name}: bench not registered with inbound port "
                                   f"{MESH_2HOP_INBOUND} within 20s: {eps}")
            time.sleep(0.1)
        cl, port, cadmin = start_proxy(out, cpus, f"{name}-client", workers=1, log_name=f"{name}-client.log",
                                       ports=MESH_2HOP_CLIENT, control=url, extra=identity("client"))
        started.append(cl)
        procs.wait_http(f"http://127.0.0.1:{cadmin}/ready")
        procs.wait_http(f"http://127.0.0.1:{cadmin}/state",
                        ok=lambda s, b: s == 200 and b'"state":"ready"' in b)
        before, _ok = inbound_requests(sadmin)
        procs.wait_http(f"http://127.0.0.1:{port}/small", headers={"Host": "bench"})
        after, _ok = inbound_requests(sadmin)
        if after <= before:
            raise RuntimeError(f"{name}: a request through the client sidecar did not reach the "
                               f"server sidecar's inbound listener (mesh_inbound_requests_total {before} → {after})")
    except Exception:
        for p in reversed(started):
            procs.stop(p)
        raise
    info = {"endpoints": [{k: e.get(k) for k in ("id", "address", "port", "inbound_port", "health")}
                          for e in eps],
            "inbound_requests_at_start": after}

    def done():
        total, ok = inbound_requests(sadmin)
        return {"inbound_requests_at_end": total, "inbound_2xx_at_end": ok}

    return Running(name, port, started, [cl.pid, srv.pid], info=info, after=done)
