"""The upstream and the targets under test: how each is started, where it
listens, and which processes its CPU and memory are read from.

Ports (all 127.0.0.1): upstream 18080; HAProxy 18101; nginx 18102;
Envoy 18103 (admin 18190); mesh-proxy 18104 (admin 18194, DNS 18153);
mesh-control 18110. The peers' configs are in bench/peers/.
"""

import atexit
import os
import shutil
import tempfile
import subprocess

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
    """A started target: its port and the processes to measure."""

    def __init__(self, name, port, procs_, measure_pid):
        self.name = name
        self.port = port
        self.procs = procs_
        self.measure_pid = measure_pid

    def pids(self):
        return procs.tree(self.measure_pid) if self.measure_pid else []

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


def start_control(out, cpus, port=CONTROL_PORT, data="control-data"):
    p = procs.spawn([mesh_bin("mesh-control"), "--listen", f"127.0.0.1:{port}",
                     "--data-dir", os.path.join(out, data)],
                    cpus=cpus, log=os.path.join(out, "mesh-control.log"))
    procs.wait_http(f"http://127.0.0.1:{port}/healthz", deadline_s=20)
    return p


def ctl(*args, control=CONTROL_URL):
    out = subprocess.run([mesh_bin("mesh-ctl"), "--control", control, "-o", "json", *args],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(f"mesh-ctl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def start_proxy(out, cpus, idx, workers=None, control=CONTROL_URL, log_name=None, extra=()):
    """One mesh-proxy in explicit/Host-routing mode, no interception, no
    SO_MARK; idx picks its ports (outbound 18104 for idx 0; 19000+ else)."""
    if idx == 0:
        outbound, admin, dns = 18104, 18194, 18153
    else:
        outbound, admin, dns = 19000 + 3 * idx, 19001 + 3 * idx, 19002 + 3 * idx
    argv = [mesh_bin("mesh-proxy"), "--control", control, "--mark", "0",
            "--outbound", f"127.0.0.1:{outbound}", "--admin", f"127.0.0.1:{admin}",
            "--dns", f"127.0.0.1:{dns}", "--cache-dir", os.path.join(out, f"proxy-cache-{idx}"),
            *extra]
    if workers:
        argv += ["--workers", str(workers)]
    env = dict(os.environ, MESH_LOG=os.environ.get("MESH_LOG", "warn"))
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
