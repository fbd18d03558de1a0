#!/usr/bin/env bash
# mesh in one command: a newcomer's tour, no root needed.
#
#   ./examples/demo.sh            (from the repository root, or anywhere)
#
# Needs: cargo, curl, python3, node. Builds the workspace (debug profile:
# startup time does not matter here, and it reuses the usual build cache),
# then on 127.0.0.1 only:
#   - mesh-control on :15010 with a throw-away data dir,
#   - service `hello` twice: a python app and a node app, each with its own
#     mesh-proxy (explicit mode: no iptables, so no root),
#   - a client sidecar on the default ports (outbound :15001, admin :15000),
# and shows: calls spread over both languages, what mesh-ctl sees, and
# traffic moving to python alone once the node app dies.
# Every process it starts is stopped on exit. Set KEEP=1 to keep the logs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$ROOT/examples/demo"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET/debug"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mesh-demo.XXXXXX")"
CONTROL_URL="http://127.0.0.1:15010"
PIDS=()
declare -A PID # name -> pid of what start() launched

# Proxy variables from the caller's shell would send our curls elsewhere.
unset http_proxy https_proxy all_proxy no_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY

step() { printf '\n\033[1m=== %s ===\033[0m\n' "$*"; }

cleanup() {
  local status=$?
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

die() { echo "demo: $*" >&2; exit 1; }

# start NAME CMD ARGS...: runs a process in the background, logging to
# $WORK/NAME.log, and remembers its pid for cleanup.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  PID[$name]=$!
}

# wait_http URL WHAT NAME: polls until URL answers 200 (10 s at most);
# gives up at once if the process started as NAME has exited.
wait_http() {
  local i
  for i in $(seq 1 100); do
    if [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "$1" || true) == 200 ]]; then
      return 0
    fi
    kill -0 "${PID[$3]}" 2>/dev/null || die "$2 exited (see $WORK/$3.log)"
    sleep 0.1
  done
  die "$2 did not come up ($1)"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# call: one request through the client sidecar, the way any app would make it.
call() { http_proxy=http://127.0.0.1:15001 curl -s -m 3 http://hello/ || true; }

for tool in cargo curl python3 node; do
  command -v "$tool" >/dev/null || die "needs $tool on PATH"
done
for port in 15010 15000 15001 15053 15100 15101 15153 15200 15201 15253 18081 18082; do
  port_free "$port" || die "port 127.0.0.1:$port is in use; stop whatever holds it"
done

step "1. Build (debug)"
(cd "$ROOT" && cargo build --workspace)
for b in mesh-control mesh-proxy mesh-ctl; do
  [[ -x $BIN/$b ]] || die "missing $BIN/$b"
done

step "2. Control plane: mesh-control on $CONTROL_URL"
start control "$BIN/mesh-control" --listen 127.0.0.1:15010 --data-dir "$WORK/control-data"
wait_http "$CONTROL_URL/healthz" mesh-control control
echo "mesh-control is up (pid ${PID[control]})"

step "3. Service hello: a python app and a node app, each with a sidecar"
start app-python python3 "$DEMO/hello.py" 18081
start app-node node "$DEMO/hello.js" 18082
wait_http http://127.0.0.1:18081/ "python app" app-python
wait_http http://127.0.0.1:18082/ "node app" app-node
# Explicit mode (no iptables): each sidecar gets its own ports. --mark 0
# because marking sockets needs privileges and nothing is intercepted here.
start proxy-python "$BIN/mesh-proxy" --control "$CONTROL_URL" --service hello \
  --app-port 18081 --advertise 127.0.0.1 --instance-id python \
  --outbound 127.0.0.1:15101 --admin 127.0.0.1:15100 --dns 127.0.0.1:15153 \
  --inbound 127.0.0.1:15106 \
  --health-interval 500ms --cache-dir "$WORK/cache-python" --mark 0
start proxy-node "$BIN/mesh-proxy" --control "$CONTROL_URL" --service hello \
  --app-port 18082 --advertise 127.0.0.1 --instance-id node \
  --outbound 127.0.0.1:15201 --admin 127.0.0.1:15200 --dns 127.0.0.1:15253 \
  --inbound 127.0.0.1:15206 \
  --health-interval 500ms --cache-dir "$WORK/cache-node" --mark 0
wait_http http://127.0.0.1:15100/ready "python's sidecar" proxy-python
wait_http http://127.0.0.1:15200/ready "node's sidecar" proxy-node
echo "python app on :18081 (sidecar admin :15100, inbound :15106), node app on :18082 (sidecar admin :15200, inbound :15206)"

step "4. A client sidecar on the default ports (outbound :15001)"
start proxy-client "$BIN/mesh-proxy" --control "$CONTROL_URL" \
  --cache-dir "$WORK/cache-client" --mark 0
wait_http http://127.0.0.1:15000/ready "the client sidecar" proxy-client
echo "client sidecar is ready"

step "5. Twelve calls: http_proxy=http://127.0.0.1:15001 curl http://hello/"
python_hits=0
node_hits=0
for i in $(seq 1 12); do
  answer=$(call)
  printf '  call %2d -> %s\n' "$i" "${answer:-(no answer)}"
  case $answer in
    *python*) python_hits=$((python_hits + 1)) ;;
    *node*) node_hits=$((node_hits + 1)) ;;
  esac
done
echo "python answered $python_hits, node answered $node_hits"

step "6. What the control plane knows: mesh-ctl services, mesh-ctl endpoints hello"
"$BIN/mesh-ctl" --control "$CONTROL_URL" services
echo
"$BIN/mesh-ctl" --control "$CONTROL_URL" endpoints hello

step "7. The node app dies; its sidecar's health check takes it out of rotation"
kill "${PID[app-node]}"
wait "${PID[app-node]}" 2>/dev/null || true
echo "killed the node app (pid ${PID[app-node]})"
streak=0
for i in $(seq 1 150); do
  answer=$(call)
  case $answer in
    *python*) streak=$((streak + 1)) ;;
    *) streak=0 ;;
  esac
  if ((streak >= 10)); then
    echo "after $i calls: 10 answers in a row from python, none from node"
    break
  fi
  sleep 0.1
done
((streak >= 10)) || die "traffic did not move to python within 15 s"
for i in 1 2 3; do
  printf '  call %d -> %s\n' "$i" "$(call)"
done
echo
"$BIN/mesh-ctl" --control "$CONTROL_URL" endpoints hello

step "Done: stopping everything"
