#!/usr/bin/env bash
# Removes everything deploy/podman/up.sh (and the job) made: the pods
# mesh-control, hello-1, hello-2, client and job, their volumes (the control
# data, the per-pod caches, the token secret volumes), the podman secrets
# mesh-token-{hello,client,job}, the network mesh-demo and $MESH_DEMO_DIR
# (default /tmp/mesh-demo). Names that do not exist are skipped, so it can be
# run at any time. The image is kept; `--rmi` removes localhost/mesh:<version>
# too.
#
#   deploy/podman/down.sh [--rmi]
set -euo pipefail

NETWORK=mesh-demo
PODS=(job client hello-2 hello-1 mesh-control)
SECRETS=(mesh-token-hello mesh-token-client mesh-token-job)
# kube play names an emptyDir or secret volume after the volume (or secret)
# name; mesh-cache is what an older mesh-ctl inject called every cache.
VOLUMES=(mesh-demo-control-data mesh-cache mesh-cache-hello-1 mesh-cache-hello-2
    mesh-cache-client mesh-cache-job "${SECRETS[@]}")

die() { printf 'down.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'down.sh: %s\n' "$*" >&2; }
RMI=0
case "${1:-}" in
    --rmi) RMI=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    "") ;;
    *) die "unknown argument '$1' (see --help)" ;;
esac
command -v podman >/dev/null 2>&1 || die "'podman' not found in PATH"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEMO_DIR=${MESH_DEMO_DIR:-/tmp/mesh-demo}

for pod in "${PODS[@]}"; do
    if podman pod exists "$pod"; then
        # No graceful stop: with a timeout, podman 4.3 stops the containers
        # one after the other and can fail ("container state improper")
        # when one exits just as it is killed.
        podman pod rm --force --time 0 "$pod" >/dev/null
        log "removed pod $pod"
    fi
done
for volume in "${VOLUMES[@]}"; do
    if podman volume exists "$volume"; then
        podman volume rm "$volume" >/dev/null
        log "removed volume $volume"
    fi
done
for secret in "${SECRETS[@]}"; do
    if podman secret inspect "$secret" >/dev/null 2>&1; then
        podman secret rm "$secret" >/dev/null
        log "removed secret $secret"
    fi
done
if podman network exists "$NETWORK"; then
    podman network rm "$NETWORK" >/dev/null
    log "removed network $NETWORK"
fi
if [[ -d "$DEMO_DIR" ]]; then
    rm -rf -- "$DEMO_DIR"
    log "removed $DEMO_DIR"
fi
if ((RMI)); then
    version=$(awk '
        /^\[/ { in_section = ($0 ~ /^\[workspace\.package\][[:space:]]*$/) }
        in_section && /^[[:space:]]*version[[:space:]]*=/ {
            sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
        }' "$HERE/../../Cargo.toml")
    if podman image exists "localhost/mesh:$version"; then
        podman rmi "localhost/mesh:$version" >/dev/null
        log "removed image localhost/mesh:$version"
    fi
fi
