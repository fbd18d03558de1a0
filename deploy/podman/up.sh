#!/usr/bin/env bash
# The mesh in podman pods: mesh-control, two hello pods and a client, all
# injected by the real `mesh-ctl inject --legacy-sidecar`, on an internal
# podman network (nothing published on the host). Never runs cargo.
#
#   deploy/podman/up.sh          then   deploy/podman/down.sh
#
# What it does, in order:
#   1. builds localhost/mesh:<version> from $MESH_BIN_DIR with
#      deploy/image/build.sh, every time (about 5 s; the image always matches
#      the binaries);
#   2. creates the internal network mesh-demo ($MESH_DEMO_SUBNET);
#   3. plays control.yaml with the pinned IP $MESH_DEMO_CONTROL_IP and waits
#      (at most 60 s) until `mesh-ctl status` answers;
#   4. copies mesh-control's admin token and trust bundle out of its volume
#      into $MESH_DEMO_DIR, makes the token Secrets mesh-token-{hello,client,
#      job} with `mesh-ctl token create --secret` and stores them as podman
#      secrets in the form kube play 4.3 mounts as files (raw values in
#      `data:`, JSON);
#   5. applies config.yaml (config hello, which hello-1's sidecar delivers),
#      writes ctl.env (CONTROL_URL, ADMIN_TOKEN, BUNDLE) for scripts, injects
#      hello.yaml and job.yaml into $MESH_DEMO_DIR, plays the injected
#      hello.yaml and waits (at most 90 s) for the client's first answer.
#
# Environment:
#   MESH_BIN_DIR          mesh-proxy, mesh-control, mesh-ctl for the image
#                         (default target/release; relative to the repo root)
#   MESH_CTL              the host's mesh-ctl (default $MESH_BIN_DIR/mesh-ctl)
#   MESH_DEMO_DIR         state: admin token, bundle, injected YAML
#                         (default /tmp/mesh-demo; down.sh removes it)
#   MESH_DEMO_SUBNET      the network's subnet (default 10.89.77.0/24)
#   MESH_DEMO_CONTROL_IP  mesh-control's pod IP (default <subnet>.10)
# Stopping a pod: `podman pod stop POD` alone (4.3) SIGTERMs every container
# and the infra container at once, and the pod's network is gone a few
# hundred ms later, often before the proxy has deregistered or heard every
# proxy's acknowledgement; stop the proxy first (`podman stop POD-mesh-proxy`,
# which waits for its drain), then the pod.
#
# Needs: podman 4.3+, python3 (standard library only), tar; bash 4+.
set -euo pipefail

NETWORK=mesh-demo
SERVICES=(hello client job)
PODS=(mesh-control hello-1 hello-2 client job)

die() { printf 'up.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'up.sh: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) die "unknown argument '$1' (see --help)" ;;
esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
BIN_DIR=${MESH_BIN_DIR:-target/release}
[[ "$BIN_DIR" = /* ]] || BIN_DIR="$REPO_ROOT/$BIN_DIR"
MESH_CTL=${MESH_CTL:-$BIN_DIR/mesh-ctl}
DEMO_DIR=${MESH_DEMO_DIR:-/tmp/mesh-demo}
SUBNET=${MESH_DEMO_SUBNET:-10.89.77.0/24}
CONTROL_IP=${MESH_DEMO_CONTROL_IP:-${SUBNET%.*/*}.10}

for tool in podman python3 tar; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found in PATH"
done
[[ -x "$MESH_CTL" ]] || die "mesh-ctl '$MESH_CTL' not found (set MESH_CTL or MESH_BIN_DIR)"
for pod in "${PODS[@]}"; do
    if podman pod exists "$pod"; then
        die "pod '$pod' already exists: run deploy/podman/down.sh first"
    fi
done

# --- 1. Image ----------------------------------------------------------------

mkdir -p "$DEMO_DIR"
chmod 0700 "$DEMO_DIR"
VERSION=$(awk '
    /^\[/ { in_section = ($0 ~ /^\[workspace\.package\][[:space:]]*$/) }
    in_section && /^[[:space:]]*version[[:space:]]*=/ {
        sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
    }' "$REPO_ROOT/Cargo.toml")
IMAGE=localhost/mesh:$VERSION
log "building $IMAGE from $BIN_DIR"
"$REPO_ROOT/deploy/image/build.sh" --bin-dir "$BIN_DIR" --out "$DEMO_DIR/mesh.oci.tar" \
    --tag "mesh:$VERSION" >/dev/null
# The manifests name the image; a version bump must not play a stale one.
grep -q "image: $IMAGE\$" "$HERE/control.yaml" ||
    die "control.yaml does not use $IMAGE (update the manifests' image:)"

# --- 2. Network --------------------------------------------------------------

if podman network exists "$NETWORK"; then
    [[ "$(podman network inspect --format '{{.Internal}}' "$NETWORK")" == true ]] ||
        die "network '$NETWORK' exists and is not internal: remove it (podman network rm $NETWORK)"
else
    podman network create --internal --subnet "$SUBNET" "$NETWORK" >/dev/null
    log "network $NETWORK ($SUBNET, internal)"
fi

# --- 3. mesh-control -----------------------------------------------------------

log "playing control.yaml at $CONTROL_IP"
podman kube play --network "$NETWORK" --ip "$CONTROL_IP" "$HERE/control.yaml" >/dev/null

ADMIN_TOKEN="$DEMO_DIR/admin.token"
BUNDLE="$DEMO_DIR/bundle.pem"
CONTROL_URL="https://$CONTROL_IP:15010"
ctl() { "$MESH_CTL" --control "$CONTROL_URL" --token-file "$ADMIN_TOKEN" --trust-bundle "$BUNDLE" "$@"; }

# Its data volume holds identity/admin.token and identity/bundle.pem once it
# has started; `podman volume export` reads them rootful or rootless.
fetch_identity() {
    local tmp
    tmp=$(mktemp -d "$DEMO_DIR/identity.XXXXXX")
    if podman volume export mesh-demo-control-data 2>/dev/null |
        tar -x -C "$tmp" identity/admin.token identity/bundle.pem 2>/dev/null; then
        mv "$tmp/identity/admin.token" "$ADMIN_TOKEN"
        mv "$tmp/identity/bundle.pem" "$BUNDLE"
        rm -rf "$tmp"
        return 0
    fi
    rm -rf "$tmp"
    return 1
}
deadline=$((SECONDS + 60))
until fetch_identity && ctl status >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
        podman logs --tail 20 mesh-control-mesh-control >&2 || true
        die "mesh-control did not answer at $CONTROL_URL within 60 s"
    fi
    if [[ "$(podman inspect --format '{{.State.Status}}' mesh-control-mesh-control 2>/dev/null)" == exited ]]; then
        podman logs --tail 20 mesh-control-mesh-control >&2 || true
        die "mesh-control exited"
    fi
    sleep 0.5
done
log "mesh-control answers at $CONTROL_URL"

# --- 4. Token secrets ------------------------------------------------------------

# `mesh-ctl token create --secret` prints a Kubernetes Secret with
# `stringData:`. kube play 4.3 mounts `data:` values as they are written (no
# base64 decoding) and ignores stringData, so the podman secret is the same
# Secret with the raw values under `data:`.
to_podman_secret() {
    python3 -c '
import json, sys
s = json.load(sys.stdin)
s["data"] = s.pop("stringData")
json.dump(s, sys.stdout, indent=2)
'
}
for svc in "${SERVICES[@]}"; do
    secret=mesh-token-$svc
    file="$DEMO_DIR/$secret.json"
    ctl -o json token create --service "$svc" --secret 2>/dev/null | to_podman_secret >"$file" ||
        die "could not make the token Secret for $svc"
    chmod 0600 "$file"
    if podman secret inspect "$secret" >/dev/null 2>&1; then podman secret rm "$secret" >/dev/null; fi
    podman secret create "$secret" "$file" >/dev/null
done
log "podman secrets ${SERVICES[*]/#/mesh-token-}"

# --- 5. Inject and play ------------------------------------------------------------

inject() { # FILE OUT
    "$MESH_CTL" inject --legacy-sidecar --image "$IMAGE" \
        --mesh-control https://mesh-control:15010 -f "$1" >"$2"
}
inject "$HERE/hello.yaml" "$DEMO_DIR/hello.injected.yaml"
inject "$HERE/job.yaml" "$DEMO_DIR/job.injected.yaml"
if grep -qE '^\s*(- )?(hostPort|containerPort):' "$DEMO_DIR/hello.injected.yaml" "$DEMO_DIR/job.injected.yaml"; then
    die "the injected YAML has ports: kube play would publish them on the host"
fi

# hello-1's app reads config hello from its sidecar (mesh.io/config).
ctl apply -f "$HERE/config.yaml" -m "podman demo" >/dev/null || die "could not apply config.yaml"
printf 'CONTROL_URL=%s\nADMIN_TOKEN=%s\nBUNDLE=%s\n' "$CONTROL_URL" "$ADMIN_TOKEN" "$BUNDLE" >"$DEMO_DIR/ctl.env"

log "playing hello-1, hello-2 and client"
start_ms=$(date +%s%3N)
podman kube play --network "$NETWORK" "$DEMO_DIR/hello.injected.yaml" >/dev/null
played_ms=$(date +%s%3N)

deadline=$((SECONDS + 90))
first=
until first=$(podman logs client-app 2>/dev/null | grep -m1 'first answer at'); do
    if ((SECONDS >= deadline)); then
        podman logs --tail 20 client-app >&2 || true
        die "the client had no answer within 90 s (podman logs client-mesh-proxy)"
    fi
    if [[ "$(podman inspect --format '{{.State.Status}}' client-app 2>/dev/null)" == exited ]]; then
        podman logs --tail 20 client-app >&2 || true
        die "the client exited before its first answer"
    fi
    sleep 0.2
done
first_at=$(sed -E 's/.*first answer at ([^ ]+) .*/\1/' <<<"$first")
first_ms=$(date -d "$first_at" +%s%3N)
log "$first"
log "kube play took $((played_ms - start_ms)) ms; first answer $((first_ms - start_ms)) ms after it began"

cat <<EOF

The demo runs (pods: ${PODS[*]:0:4}; network $NETWORK, internal). Try:

  podman exec client-app curl -s http://hello.mesh/        # hello-1 or hello-2
  podman logs -f client-app                                # 100 rps for 120 s, one line a second
  podman logs hello-2-mesh-proxy                           # the proxy's JSON log
  $MESH_CTL --control $CONTROL_URL \\
      --token-file $ADMIN_TOKEN --trust-bundle $BUNDLE proxies
  podman exec hello-1-app cat /etc/mesh/config/application.properties
      # config hello, delivered by hello-1's sidecar; change it with
      # mesh-ctl apply -f (a kind: Config document) and read it again
  podman stop hello-2-mesh-proxy && podman pod stop hello-2
      # a drain: the proxy deregisters, waits for every watching proxy,
      # drains, exits; then the app stops (watch the client's fail=)

The Job-shaped pod (ends with every container exited 0):

  podman kube play --network $NETWORK $DEMO_DIR/job.injected.yaml
  podman ps -a --filter pod=job --format '{{.Names}} {{.Status}}'

Tear down: $HERE/down.sh
EOF
