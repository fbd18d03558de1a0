"""RESULTS.md and the latency chart from results.json; also the checks that
fail a run whose figures cannot be right (used by --smoke)."""

import os

PEERS = ["haproxy", "nginx", "envoy"]
PEERS_2HOP = ["haproxy-2hop", "envoy-2hop"]


def fmt(x, unit=""):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, float):
        return f"{x:,.1f}{unit}" if abs(x) < 100 else f"{x:,.0f}{unit}"
    return f"{x:,}{unit}"


def ms(us):
    return None if us is None else us / 1000


def lat(us):
    return "–" if us is None else f"{us / 1000:.3f}"


def table(rows, mems):
    by_target = {}
    for r in rows:
        by_target.setdefault(r["target"], []).append(r)
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        out.append(f"\n### {case}\n")
        out.append("| target | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | proxy CPU s | req per CPU-s | RSS during MiB | conns |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if r["case"] != case:
                continue
            l = r["latency_us"]
            rss = r.get("rss_during_kb")
            out.append(f"| {r['target']} | {fmt(r['rps'])} | {lat(l['p50'])} | {lat(l['p90'])} | "
                       f"{lat(l['p99'])} | {lat(l['max'])} | {r['errors']} | {fmt(r['cpu_s'])} | "
                       f"{fmt(r['req_per_cpu_s'])} | {fmt(rss / 1024 if rss else None)} | {r.get('conns_seen') or '–'} |")
    out.append("\n### memory (whole run per target)\n")
    out.append("| target | RSS idle MiB | RSS peak (VmHWM) MiB |")
    out.append("|---|---:|---:|")
    for m in mems:
        i, p = m["rss_idle_kb"], m["rss_peak_kb"]
        out.append(f"| {m['target']} | {fmt(i / 1024 if i else None)} | {fmt(p / 1024 if p else None)} |")
    return out


def ratios(rows, mems, mesh="mesh-proxy", peers=PEERS):
    """mesh-proxy ÷ peer for efficiency (higher is better for mesh) and
    added p99 latency over direct (lower is better)."""
    idx = {(r["target"], r["case"]): r for r in rows}
    direct = {r["case"]: r for r in rows if r["target"] == "direct"}
    out = ["| case | vs | req/s ratio | req per CPU-s ratio | p99 ratio | added p99 mesh ms | added p99 peer ms |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        m = idx.get((mesh, case))
        if not m:
            continue
        for peer in peers:
            p = idx.get((peer, case))
            if not p:
                continue
            def div(a, b):
                return f"{a / b:.2f}" if a and b else None
            d = direct.get(case)
            dp99 = d["latency_us"]["p99"] if d else None
            add_m = lat(m["latency_us"]["p99"] - dp99) if dp99 is not None else None
            add_p = lat(p["latency_us"]["p99"] - dp99) if dp99 is not None else None
            out.append(f"| {case} | {peer} | {fmt(div(m['rps'], p['rps']))} | "
                       f"{fmt(div(m['req_per_cpu_s'], p['req_per_cpu_s']))} | "
                       f"{fmt(div(m['latency_us']['p99'], p['latency_us']['p99']))} | {fmt(add_m)} | {fmt(add_p)} |")
    mm = {m["target"]: m for m in mems}
    if mesh in mm and mm[mesh]["rss_idle_kb"]:
        out.append("")
        for peer in peers:
            if peer in mm and mm[peer]["rss_idle_kb"]:
                out.append(f"- idle RSS {mesh} ÷ {peer}: "
                           f"{mm[mesh]['rss_idle_kb'] / mm[peer]['rss_idle_kb']:.2f}")
    return out


def two_hop_table(rows):
    """The two-hop targets' own figures, with each hop's share of the CPU
    (client side + server side)."""
    out = ["| case | target | req/s | p50 ms | p99 ms | errors | proxy CPU s (client + server side) | req per CPU-s |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r["target"].endswith("-2hop"):
            continue
        l = r["latency_us"]
        hops = r.get("cpu_s_hops")
        split = f" ({' + '.join(f'{h:.2f}' for h in hops)})" if hops else ""
        out.append(f"| {r['case']} | {r['target']} | {fmt(r['rps'])} | {lat(l['p50'])} | {lat(l['p99'])} | "
                   f"{r['errors']} | {fmt(r['cpu_s'])}{split} | {fmt(r['req_per_cpu_s'])} |")
    return out


def instructions_section(ins):
    out = ["| proxy | run | N1 | Ir(N1) | N2 | Ir(N2) | instructions per request | startup etc. (Ir(N1) − N1 × per request) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("mesh-proxy", "haproxy", "mesh-proxy-traced", "mesh-proxy-sampled", "mesh-proxy-baseline"):
        for i, r in enumerate(ins.get(name, []), 1):
            out.append(f"| {name} | {i} | {r['n1']:,} | {r['ir1']:,} | {r['n2']:,} | {r['ir2']:,} | "
                       f"**{r['per_request']:,}** | {r['startup_ir']:,} |")
    x = ins.get("mesh_over_haproxy")
    out += ["", "- mesh-proxy ÷ haproxy, instructions per request (mean of the runs): "
            + (f"**{x:.2f}**" if x else "–") + " (lower is better for mesh-proxy)"]
    t = ins.get("mesh-proxy-traced_over_mesh")
    if t:
        out.append(f"- mesh-proxy-traced ÷ mesh-proxy: **{t:.3f}** (every request a recorded trace: "
                   "a client span exported over OTLP/HTTP to a sink that takes every batch)")
    sm = ins.get("mesh-proxy-sampled_over_mesh")
    if sm:
        out.append(f"- mesh-proxy-sampled ÷ mesh-proxy: **{sm:.3f}** (the same exporter at the default "
                   "`--trace-sample 0.01`)")
    b = ins.get("mesh-proxy-baseline_over_mesh")
    if b:
        out.append(f"- mesh-proxy-baseline ÷ mesh-proxy: **{b:.3f}** (the binaries in "
                   "BENCH_BASELINE_BIN_DIR: the same proxy before the change under test)")
    return out


def goals(res, mesh="mesh-proxy"):
    """The issue's goals, each with the figure measured in this run."""
    idx = {(r["target"], r["case"]): r for r in res.get("rows", [])}
    mem = {m["target"]: m for m in res.get("memory", [])}
    out = ["| goal | measured | met |", "|---|---|---|"]

    def row(goal, measured, ok):
        out.append(f"| {goal} | {measured} | {'yes' if ok else 'no'} |")

    for peer, want in (("haproxy", 1.0), ("envoy", 3.0)):
        m, p = idx.get((mesh, "keepalive-small")), idx.get((peer, "keepalive-small"))
        if m and p and m["req_per_cpu_s"] and p["req_per_cpu_s"]:
            x = m["req_per_cpu_s"] / p["req_per_cpu_s"]
            row(f"req per proxy CPU-s ≥ {want}× {peer} (keepalive-small)",
                f"{x:.2f}× ({m['req_per_cpu_s']:,} vs {p['req_per_cpu_s']:,})", x >= want)
    d, m, h = (idx.get((t, "open-5000rps")) for t in ("direct", mesh, "haproxy"))
    if d and m and h:
        am = m["latency_us"]["p99"] - d["latency_us"]["p99"]
        ah = h["latency_us"]["p99"] - d["latency_us"]["p99"]
        row("added p99 at 5 k rps ≤ HAProxy's", f"{am / 1000:.3f} ms vs {ah / 1000:.3f} ms "
            f"(p99 {m['latency_us']['p99'] / 1000:.3f} vs {h['latency_us']['p99'] / 1000:.3f} ms)", am <= ah)
    if mesh in mem and mem[mesh]["rss_idle_kb"]:
        kb = mem[mesh]["rss_idle_kb"]
        row("idle RSS ≤ 10 MB", f"{kb / 1024:.1f} MiB", kb <= 10 * 1000)
    k = idx.get((mesh, "open-1k-conns"))
    if k and k.get("rss_during_kb"):
        row("RSS ≤ 20 MB with 1 k open connections", f"{k['rss_during_kb'] / 1024:.1f} MiB "
            f"({k['conns_seen']} connections seen)", k["rss_during_kb"] <= 20 * 1000)
    mt = res.get("mesh")
    if mt:
        r50 = [r for r in mt["registration"] if r["proxies"] == 50]
        if r50:
            p99 = r50[0]["all_proxies"]["p99_ms"]
            row("registration → 50 proxies p99 ≤ 100 ms", f"{p99} ms (all 50 see it)", p99 <= 100)
        c = mt.get("config")
        if c and c["proxies"] == 50:
            p99 = c["all_proxies"]["p99_ms"]
            row("config change → on disk in 50 proxies p99 ≤ 100 ms",
                f"{p99} ms (rollback {c['rollback_all_proxies']['p99_ms']} ms)", p99 <= 100)
        k = mt["kill_endpoint"]
        row("dead endpoint → no traffic to it within 100 ms under load",
            f"{k['last_bad_after_kill_ms']} ms, {k['failed']} failed", k["last_bad_after_kill_ms"] <= 100)
    return out


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r["target"].endswith("-2hop")]  # one hop only
    cases = [c for c in dict.fromkeys(r["case"] for r in rows) if c in ("keepalive-small", "keepalive-16k", "conn-per-request") or c.startswith("open-")]
    tgts = list(dict.fromkeys(r["target"] for r in rows))
    idx = {(r["target"], r["case"]): r for r in rows}
    ncol = min(4, len(cases))
    nrow = (len(cases) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 4.0 * nrow), squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    pcts = ["p50", "p90", "p99"]
    w = 0.8 / len(tgts)
    for ax, case in zip(axes.flat, cases):
        for i, t in enumerate(tgts):
            r = idx.get((t, case))
            if not r:
                continue
            vals = [ms(r["latency_us"][p]) or 0 for p in pcts]
            ax.bar([x + i * w for x in range(len(pcts))], vals, w, label=t)
        ax.set_xticks([x + w * (len(tgts) - 1) / 2 for x in range(len(pcts))])
        ax.set_xticklabels(pcts)
        ax.set_yscale("log")
        ax.set_title(case, fontsize=10)
        ax.set_ylabel("latency ms (log)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Latency percentiles per target (one L7 hop, loopback; lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mesh_section(m):
    out = ["| N proxies | trials | all N see it: p50 ms | p99 ms | max ms | per proxy: p50 ms | p99 ms |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in m["registration"]:
        a, p = r["all_proxies"], r["per_proxy"]
        out.append(f"| {r['proxies']} | {r['trials']} | {a['p50_ms']} | {a['p99_ms']} | {a['max_ms']} | {p['p50_ms']} | {p['p99_ms']} |")
    c = m.get("config")
    if c:
        a, p, ra = c["all_proxies"], c["per_proxy"], c["rollback_all_proxies"]
        out += ["", f"**Config change → on disk in {c['proxies']} proxies** ({c['trials']} trials, every "
                f"fifth a rollback): all see it p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, max {a['max_ms']} ms; "
                f"per proxy p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms; rollback, all: p99 {ra['p99_ms']} ms."]
    k = m["kill_endpoint"]
    out += ["", f"**SIGKILL of one of three endpoints** at {k['rate']} rps (achieved {k['achieved_rps']}), "
            f"{k['seconds']} s run: the last request that still went to the dead endpoint (or failed) "
            f"finished **{k['last_bad_after_kill_ms']} ms** after the kill; **{k['failed']} of {k['requests']}** "
            f"requests failed ({', '.join(k['failure_kinds']) or 'none'})."]
    c = m["control_restart"]
    w = c["watching_after_restart"]
    out += ["", f"**mesh-control restart** (SIGKILL, then start on the same data dir), {c['proxies']} proxies: "
            f"all noticed the loss within {c['noticed_down']['max_ms']} ms; mesh-control answered /healthz "
            f"{c['control_start_ms']} ms after start; all proxies watching again (control_connected) "
            f"p50 {w['p50_ms']} ms, max {w['max_ms']} ms after the start ({'all' if c['all_reconnected'] else 'NOT all'} reconnected)."]
    f = m.get("first_traffic")
    if f:
        out += ["", f"**First traffic** ({f['trials']} trials): a new instance's sidecar and app start together; "
                f"the first request through a client proxy answered 200 p50 **{f['first_traffic']['p50_ms']} ms**, "
                f"max {f['first_traffic']['max_ms']} ms after the sidecar started (the app listened after "
                f"p50 {f['app_listening']['p50_ms']} ms)."]
    return out


def checks(res):
    """What makes a run invalid: no traffic, errors in keep-alive cases
    (in every two-hop case), missing CPU readings, a two-hop target whose
    second hop did no work, the upstream not where it should be, mesh
    timings that did not complete, instruction counts that cannot be."""
    bad = []
    rows = res.get("rows", [])
    for r in rows:
        if r["requests"] <= 0:
            bad.append(f"{r['target']} {r['case']}: no requests")
        if (r["case"].startswith("keepalive") or r["target"].endswith("-2hop")) and r["errors"]:
            bad.append(f"{r['target']} {r['case']}: {r['errors']} errors")
        if r["target"] != "direct" and not r["cpu_s"]:
            bad.append(f"{r['target']} {r['case']}: no proxy CPU reading")
        if r["target"].endswith("-2hop"):
            hops = r.get("cpu_s_hops") or []
            if len(hops) != 2 or (r["case"].startswith("keepalive") and not all(h > 0 for h in hops)):
                bad.append(f"{r['target']} {r['case']}: CPU per hop {hops}: not both hops worked")
    info = res.get("targets") or {}
    for name, cpus in (info.get("upstream_cpus") or {}).items():
        want = "0" if name == "direct" else "1"
        if cpus != [want]:
            bad.append(f"{name}: upstream on CPUs {cpus}, not {want}")
    if any(r["target"] == "mesh-proxy-2hop" for r in rows):
        t = (info.get("targets") or {}).get("mesh-proxy-2hop", {})
        if not any(e.get("inbound_port") for e in t.get("endpoints", [])):
            bad.append("mesh-proxy-2hop: the registered endpoint has no inbound port")
        sent = sum(max(0, r["requests"] - r["non2xx"]) for r in rows if r["target"] == "mesh-proxy-2hop")
        seen = t.get("inbound_2xx_at_end", 0) - t.get("inbound_requests_at_start", 0)
        if seen < sent:
            bad.append(f"mesh-proxy-2hop: {sent} requests answered, only {seen} through the server sidecar's inbound listener")
    ins = res.get("instructions")
    if ins:
        for name in ("mesh-proxy", "haproxy", "mesh-proxy-traced", "mesh-proxy-sampled"):
            for r in ins.get(name, []):
                if not (r["ir2"] > r["ir1"] > 0) or not (1000 <= r["per_request"] <= 10_000_000):
                    bad.append(f"instructions {name}: impossible figures {r}")
            if not ins.get(name):
                bad.append(f"instructions {name}: no run")
    m = res.get("mesh")
    if m:
        if not m["control_restart"]["all_reconnected"]:
            bad.append("control restart: not all proxies reconnected")
        if m["kill_endpoint"]["requests"] <= 0:
            bad.append("kill endpoint: no requests")
    if res.get("gateway"):
        from . import gateway
        bad += gateway.problems(res["gateway"])
    return bad


def gateway_section(g):
    from . import gateway
    return gateway.section(g)


def write(res, out):
    mc = res["machine"]
    lines = [
        "# mesh benchmark results" + (" (SMOKE RUN: tiny load, figures meaningless)" if res["smoke"] else ""),
        "",
        f"- date: {mc['date']}; commit: `{mc['commit']}`{' (dirty tree)' if mc['dirty'] else ''}",
        f"- machine: {mc['cpu']}, {mc['cores']} cores, {mc['mem_gib']} GiB, {mc['os']}, kernel {mc['kernel']}",
        f"- load average (1/5/15 min, runnable/total, last pid) before: `{res['load_before']}`; after: `{res['load_after']}`",
        "- peers: " + "; ".join(f"{k} `{v}`" for k, v in mc["versions"].items()),
        "- setup: every target is one L7 hop in front of the same nginx upstream (static files) on loopback; "
        "the proxy under test is pinned to CPU 0, wrk/oha and the upstream to CPU 1. mesh-proxy runs with "
        "`--workers 1`; `mesh-proxy-mt` is the default (one worker per core) on both CPUs, sharing CPU 1 "
        "with the load generator, reported apart. `direct` is wrk → upstream (the physical limit; no proxy CPU), "
        "with the upstream moved to the idle CPU 0 for it (wrk alone on CPU 1). "
        "`*-2hop`: client → client-side proxy → server-side proxy → upstream, both proxies on CPU 0, "
        "proxy CPU = the sum of both; mesh-proxy-2hop's server sidecar registers the upstream as `bench` "
        "and is reached at its inbound listener. "
        "Closed loop: wrk, 1 thread. Open loop: oha `-q RATE --latency-correction`. "
        "Proxy CPU = utime+stime delta from /proc/PID/stat (10 ms ticks) over the case.",
        "",
    ]
    if res.get("notes"):
        lines += ["## Notes on this run", "", res["notes"], ""]
    if res.get("rows") or res.get("mesh"):
        lines += ["## Goals (issue 10)", ""] + goals(res) + [""]
    if res.get("rows"):
        lines += ["## mesh-proxy ÷ each peer", "",
                  "Ratios > 1 in req/s and req per CPU-s favour mesh-proxy; p99 ratio < 1 favours it. "
                  "Added p99 = target p99 − direct p99; only meaningful in the open-loop cases "
                  "(closed-loop latency is queueing behind 50 connections).", ""]
        lines += ratios(res["rows"], res["memory"])
        if any(r["target"].endswith("-2hop") for r in res["rows"]):
            lines += ["", "## Two hops: mesh-proxy-2hop ÷ each peer", "",
                      "What a mesh user pays: client → client-side proxy → server-side proxy → app, "
                      "both proxies `--workers 1` / `nbthread 1` / `--concurrency 1` on CPU 0; proxy CPU is "
                      "the sum over both processes. Ratios read as above; added p99 = target p99 − direct p99 "
                      "(both hops).", ""]
            lines += ratios(res["rows"], res["memory"], mesh="mesh-proxy-2hop", peers=PEERS_2HOP)
            lines += ["", "Two-hop figures:", ""] + two_hop_table(res["rows"])
        if any(r["target"] == "mesh-mtls-2hop" for r in res["rows"]):
            lines += ["", "## mTLS: mesh-mtls-2hop ÷ mesh-proxy-2hop", "",
                      "The same two hops with identity on (TLS 1.3 between the sidecars, aws-lc-rs) "
                      "against identity off, in this run. Goal (issue 11): ≥ 0.90 req per CPU-s on "
                      "keep-alive traffic. Handshakes per CPU-second and memory per mTLS connection: "
                      "`python3 -m harness.handshakes`.", ""]
            lines += ratios(res["rows"], res["memory"], mesh="mesh-mtls-2hop", peers=["mesh-proxy-2hop"])
        lines += ["", "## Every figure", "", "![latency percentiles](latency.png)"]
        lines += table(res["rows"], res["memory"])
        chart(res["rows"], os.path.join(out, "latency.png"))
    if res.get("gateway"):
        lines += ["", "## Gateway: mesh-proxy gateway ÷ Envoy and nginx", "",
                  "One prefix route to the upstream, on CPU 0 alone, one thread each: mesh-proxy gateway "
                  "(`--workers 1`) and Envoy (`--concurrency 1`, `jwt_authn` + `local_ratelimit`, "
                  "peers/envoy-gateway.yaml) validate the same RS256 token against the same JWKS file, "
                  "forward its `sub` as `x-user` and run a rate limit that never trips (mesh: keyed by "
                  "client address; Envoy's local_ratelimit: one bucket per listener); nginx routes only "
                  "(peers/nginx.conf). `gw-mesh-log` is gw-mesh with its JSON access log on (the others: off). "
                  "Goal (issue 15): ahead of Envoy per CPU-second with the same features on.", ""]
        lines += gateway_section(res["gateway"])
    if res.get("instructions"):
        ins = res["instructions"]
        lines += ["", "## Instructions per request", "",
                  f"`valgrind --tool=callgrind`, one hop, the proxy alone on CPU 0 (mesh-proxy `--workers 1` "
                  f"with its default policy, `Host: bench` → the upstream registered statically; HAProxy "
                  f"`peers/haproxy.cfg`, one thread); oha `-n N -c {ins['conns']}` keep-alive on `/small`; "
                  f"the proxy stopped gracefully (SIGTERM; HAProxy SIGUSR1) and the total Ir (every thread) "
                  f"read. Instructions per request = (Ir(N2) − Ir(N1)) / (N2 − N1), N1 and N2 in fresh runs: "
                  f"startup, readiness and shutdown cancel out. Does not depend on the machine's speed or load.", ""]
        lines += instructions_section(ins)
    if res.get("mesh"):
        lines += ["", "## Mesh-specific timings (absolute)", ""] + mesh_section(res["mesh"])
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return checks(res)
