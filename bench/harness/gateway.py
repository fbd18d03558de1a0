"""The gateway bench (issue 15): `mesh-proxy gateway` with one prefix
route, RS256 JWT validation and a local rate limit that never trips,
against Envoy with `jwt_authn` + `local_ratelimit` (peers/envoy-gateway.yaml)
and nginx routing only (peers/nginx.conf, the L7 hop of the main bench),
each in front of the same upstream, on the same cases: closed-loop
keep-alive (requests per proxy CPU-second) and open loop at a fixed rate
(p99). Every request carries the same valid token; before the load, each
JWT-checking target is shown to refuse a request without one (401) and
to pass the token (200), so the features are on, not merely configured.

Keys and token are made here with openssl (RSA 2048) and the standard
library; the JWKS is a file both gateways read (`jwksFile`, `local_jwks`).
mesh-proxy gateway runs `--workers 1 --access-log off` (access logs are
off for every target); `gw-mesh-log` is the same with its JSON access
log on, the price of the log line.
"""

import base64
import json
import os
import string
import subprocess
import time
import urllib.error
import urllib.request

from . import compare, procs, targets

MESH_PORT, MESH_ADMIN = 18142, 18196
MESH_LOG_PORT, MESH_LOG_ADMIN = 18144, 18198
ENVOY_PORT = 18143


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_keys(out):
    """An RSA key, its JWKS (kid `bench`), and a token valid for a day."""
    key = os.path.join(out, "gw-key.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", key], check=True, capture_output=True, timeout=60)
    mod = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True,
                         capture_output=True, text=True, timeout=30).stdout.strip().split("=", 1)[1]
    jwks = {"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
                      "n": b64(bytes.fromhex(mod)), "e": "AQAB"}]}
    path = os.path.join(out, "gw-jwks.json")
    with open(path, "w") as f:
        json.dump(jwks, f)
    head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
    body = b64(json.dumps({"iss": "https://id.bench", "aud": "bench", "sub": "bench-user",
                           "exp": int(time.time()) + 86400}).encode())
    signing_input = f"{head}.{body}".encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input,
                         check=True, capture_output=True, timeout=30).stdout
    return path, f"{head}.{body}.{b64(sig)}"


ROUTE = """kind: Route
name: bench
rules:
  - matches: [{{ path: {{ type: PathPrefix, value: / }} }}]
    jwt:
      issuer: https://id.bench
      audiences: [bench]
      jwksFile: {jwks}
      claimsToHeaders: [{{ claim: sub, header: x-user }}]
    rateLimit: {{ requests: 100000000, per: 1s, burst: 100000000 }}
    backends: [{{ service: bench }}]
"""


def start_mesh_gateway(out, cpus, jwks, name, port, admin, access_log):
    control = targets.start_control(out, "1", data=f"control-data-{name}")
    targets.ctl("register", "bench", f"127.0.0.1:{targets.UPSTREAM_PORT}")
    path = os.path.join(out, f"{name}-route.yaml")
    with open(path, "w") as f:
        f.write(ROUTE.format(jwks=jwks))
    targets.ctl("apply", "-f", path)
    argv = [targets.mesh_bin("mesh-proxy"), "gateway", "--listen", f"127.0.0.1:{port}",
            "--admin", f"127.0.0.1:{admin}", "--control", targets.CONTROL_URL, "--mark", "0",
            "--cache-dir", os.path.join(out, f"{name}-cache"), "--workers", "1",
            "--service", "gateway", "--access-log", "json" if access_log else "off"]
    env = dict(os.environ, MESH_LOG=os.environ.get("MESH_LOG", "warn"), MESH_IDENTITY="off")
    # The access log goes to stdout: to a file, as a container runtime's would.
    p = procs.spawn(argv, cpus=cpus, env=env, log=os.path.join(out, f"{name}.log"))
    procs.wait_http(f"http://127.0.0.1:{admin}/ready")
    return targets.Running(name, port, [control, p], p.pid)


def start_envoy_gateway(out, cpus, jwks):
    with open(os.path.join(targets.PEERS, "envoy-gateway.yaml")) as f:
        text = string.Template(f.read()).substitute(JWKS=jwks)
    cfg = os.path.join(out, "envoy-gateway.yaml")
    with open(cfg, "w") as f:
        f.write(text)
    p = procs.spawn(["envoy", "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "warn"],
                    cpus=cpus, log=os.path.join(out, "envoy-gateway.log"))
    procs.wait_port(ENVOY_PORT, deadline_s=60, proc=p)
    procs.wait_http("http://127.0.0.1:18193/ready", deadline_s=60)
    return targets.Running("gw-envoy", ENVOY_PORT, [p], p.pid)


def status(port, headers):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/small", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def cases(smoke, auth):
    d = 2 if smoke else 10
    c = 4 if smoke else 50
    rate = 200 if smoke else 2000
    h = [compare.HOST, auth]
    return [
        ("keepalive-small", "wrk", {"path": "/small", "seconds": d, "conns": c, "headers": h}),
        (f"open-{rate}rps", "oha", {"path": "/small", "seconds": d, "conns": c, "rate": rate, "headers": h}),
    ]


def run(out, smoke, log):
    """Returns {"rows": [...], "checks": {target: {"no_token": s, "token": s}}}."""
    jwks, token = make_keys(out)
    auth = f"Authorization: Bearer {token}"
    upstream = targets.start_upstream(out, compare.LOAD_CPU)
    plan = [
        ("gw-nginx", lambda: targets.start_nginx(out, compare.PROXY_CPU), False),
        ("gw-envoy", lambda: start_envoy_gateway(out, compare.PROXY_CPU, jwks), True),
        ("gw-mesh", lambda: start_mesh_gateway(out, compare.PROXY_CPU, jwks, "gw-mesh",
                                               MESH_PORT, MESH_ADMIN, False), True),
        ("gw-mesh-log", lambda: start_mesh_gateway(out, compare.PROXY_CPU, jwks, "gw-mesh-log",
                                                   MESH_LOG_PORT, MESH_LOG_ADMIN, True), True),
    ]
    rows, checks = [], {}
    try:
        for name, start, jwt in plan:
            log(f"gateway target {name}")
            t = start()
            t.name = name
            try:
                with_token = status(t.port, {"Host": "bench", "Authorization": f"Bearer {token}"})
                without = status(t.port, {"Host": "bench"})
                checks[name] = {"token": with_token, "no_token": without, "jwt": jwt}
                log(f"  {name}: with the token {with_token}, without {without}")
                r, _ = compare.measure_target(t, smoke, log, cases(smoke, auth), warm_headers=[auth])
                rows += r
            finally:
                t.stop()
    finally:
        procs.stop(upstream)
    return {"rows": rows, "checks": checks}


def section(g):
    """RESULTS.md lines: the figures, then mesh ÷ each peer."""
    idx = {(r["target"], r["case"]): r for r in g["rows"]}
    case_names = list(dict.fromkeys(r["case"] for r in g["rows"]))
    out = ["| target | case | req/s | req per proxy CPU-s | p50 | p99 | errors |",
           "|---|---|---|---|---|---|---|"]
    for r in g["rows"]:
        lat = r["latency_us"]
        out.append(f"| {r['target']} | {r['case']} | {r['rps']:.0f} | {r.get('req_per_cpu_s') or '-'} | "
                   f"{lat['p50'] / 1000:.2f} ms | {lat['p99'] / 1000:.2f} ms | {r['errors']} |")
    out += ["", "| mesh ÷ | case | req per CPU-s | p99 |", "|---|---|---|---|"]
    for peer in ("gw-envoy", "gw-nginx"):
        for c in case_names:
            m, p = idx.get(("gw-mesh", c)), idx.get((peer, c))
            if not m or not p or not p.get("req_per_cpu_s") or not m.get("req_per_cpu_s"):
                continue
            cpu = m["req_per_cpu_s"] / p["req_per_cpu_s"]
            p99 = m["latency_us"]["p99"] / p["latency_us"]["p99"] if p["latency_us"]["p99"] else float("nan")
            out.append(f"| {peer} | {c} | {cpu:.2f}× | {p99:.2f}× |")
    checks = g.get("checks", {})
    out += ["", "Feature check before the load (status with the token / without): " +
            "; ".join(f"{k} {v['token']}/{v['no_token']}" for k, v in checks.items()) + "."]
    return out


def problems(g):
    """What makes the figures meaningless: a JWT target that lets a request
    without a token through, or one that refuses the token; errors."""
    bad = []
    for name, c in g.get("checks", {}).items():
        if c["token"] != 200:
            bad.append(f"gateway bench: {name} answered {c['token']} with a valid token")
        if c["jwt"] and c["no_token"] != 401:
            bad.append(f"gateway bench: {name} answered {c['no_token']} without a token (JWT not on)")
    for r in g["rows"]:
        if r["errors"]:
            bad.append(f"gateway bench: {r['target']} {r['case']}: {r['errors']} errors")
    return bad
