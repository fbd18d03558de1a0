#!/usr/bin/env bash
# Builds the mesh container image from already-built release binaries (this
# script never runs cargo) and saves it as an OCI archive.
#
#   deploy/image/build.sh [--bin-dir DIR] [--out FILE] [--tag NAME] [--no-check]
#
#   --bin-dir DIR  where mesh-proxy and mesh-ctl are (default:
#                  target/release; `cargo build --profile image --workspace`
#                  and --bin-dir target/image makes the smallest image)
#   --out FILE     the OCI archive written (default:
#                  target/mesh-<version>.oci.tar)
#   --tag NAME     the image tag (default: mesh:<version>, which podman
#                  stores as localhost/mesh:<version>)
#   --no-check     skip the smoke test (each binary's --version in the image)
#
# Relative paths are taken from the repository root, wherever the script is
# run from. <version> is `[workspace.package] version` of the root
# Cargo.toml. Re-running replaces the tag (and removes the image it pointed
# to when nothing else uses it).
#
# The image (deploy/image/Containerfile): FROM scratch, two binaries
# stripped (copies; the originals are not touched) — mesh-control is a link
# to mesh-proxy, which is the control plane when run under that name, so
# the image carries one copy of tokio, hyper, rustls and aws-lc, not two —,
# the shared libraries
# ldd names plus the loader, and iptables for `mesh-proxy init`:
# xtables-nft-multi, its iptables* names and only the extension modules our
# rules load (XT_MODULES below; src/proxy/intercept/mod.rs builds the rules).
# Needs: podman, ldd, strip (binutils), tar; bash 4+.
set -euo pipefail

# Extension modules for the rules `mesh-proxy init` installs: the standard
# target (RETURN, jumps to our chains), REDIRECT (libxt_REDIRECT.so is a
# symlink to libxt_NAT.so), -m owner, -m mark, -p tcp/-p udp --dport.
XT_MODULES=(libxt_standard.so libxt_NAT.so libxt_REDIRECT.so libxt_owner.so
    libxt_mark.so libxt_tcp.so libxt_udp.so)
BINARIES=(mesh-proxy mesh-ctl)
# Programs that are links to mesh-proxy in the image.
LINKS=(mesh-control)
IPTABLES_NAMES=(iptables iptables-save iptables-restore
    iptables-nft iptables-nft-save iptables-nft-restore)
MESH_UID=19781

die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'build.sh: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
CONTAINERFILE="$SCRIPT_DIR/Containerfile"

BIN_DIR=target/release
OUT=
TAG=
CHECK=1
while (($#)); do
    case "$1" in
        --bin-dir) (($# >= 2)) || die "--bin-dir needs a directory"; BIN_DIR=$2; shift 2 ;;
        --bin-dir=*) BIN_DIR=${1#*=}; shift ;;
        --out) (($# >= 2)) || die "--out needs a file"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --tag) (($# >= 2)) || die "--tag needs a name"; TAG=$2; shift 2 ;;
        --tag=*) TAG=${1#*=}; shift ;;
        --no-check) CHECK=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# --- Tools and inputs --------------------------------------------------------

for tool in podman ldd strip tar; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found in PATH (needed to build the image)"
done

cd "$REPO_ROOT"
VERSION=$(awk '
    /^\[/ { in_section = ($0 ~ /^\[workspace\.package\][[:space:]]*$/) }
    in_section && /^[[:space:]]*version[[:space:]]*=/ {
        sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
    }' Cargo.toml)
[[ -n "$VERSION" ]] || die "no [workspace.package] version in $REPO_ROOT/Cargo.toml"
TAG=${TAG:-mesh:$VERSION}
OUT=${OUT:-target/mesh-$VERSION.oci.tar}
[[ "$BIN_DIR" = /* ]] || BIN_DIR="$REPO_ROOT/$BIN_DIR"
[[ "$OUT" = /* ]] || OUT="$REPO_ROOT/$OUT"

for bin in "${BINARIES[@]}"; do
    [[ -f "$BIN_DIR/$bin" && -x "$BIN_DIR/$bin" ]] ||
        die "binary '$BIN_DIR/$bin' is missing (build it first: cargo build --release --workspace, or pass --bin-dir)"
done

find_first() { # NAME CANDIDATE...: the first existing candidate
    local name=$1 c; shift
    for c in "$@"; do [[ -e "$c" ]] && { printf '%s\n' "$c"; return; }; done
    die "$name not found (looked in: $*); install iptables (Debian: apt-get install iptables)"
}
XTABLES_MULTI=$(find_first xtables-nft-multi /usr/sbin/xtables-nft-multi /sbin/xtables-nft-multi \
    "$(command -v xtables-nft-multi 2>/dev/null || true)")
XT_DIR=$(find_first "the xtables module directory" /usr/lib/*-linux-gnu*/xtables /usr/lib64/xtables /usr/lib/xtables)
for mod in "${XT_MODULES[@]}"; do
    [[ -e "$XT_DIR/$mod" ]] || die "xtables module $XT_DIR/$mod not found"
done

# --- Root filesystem ------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mesh-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"
mkdir -p "$ROOT"/{usr/local/bin,usr/sbin,usr/bin,usr/lib,usr/lib64,etc,tmp,run,var}
for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$ROOT/$dir"; done
ln -s ../run "$ROOT/var/run"
chmod 1777 "$ROOT/tmp"

# The path a host file gets in the merged-/usr image.
image_path() {
    case "$1" in
        /lib/*|/lib64/*|/bin/*|/sbin/*) printf '/usr%s\n' "$1" ;;
        *) printf '%s\n' "$1" ;;
    esac
}

# Copies the libraries (and the loader) an ELF file needs, as ldd resolves
# them on this host; each file's content (cp -L) under the name ldd gives.
copy_libs() {
    local elf=$1 out libs lib dest
    out=$(ldd "$elf" 2>&1) || die "ldd $elf failed: $out"
    if grep -q 'not found' <<<"$out"; then
        die "ldd $elf: libraries not found on this host:"$'\n'"$(grep 'not found' <<<"$out")"
    fi
    libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$out")
    for lib in $libs; do
        dest="$ROOT$(image_path "$lib")"
        [[ -e "$dest" ]] && continue
        mkdir -p "$(dirname "$dest")"
        cp -L "$lib" "$dest"
    done
}

log "version $VERSION, binaries from $BIN_DIR"
for bin in "${BINARIES[@]}"; do
    # strip -o writes a new file: the original keeps its debug info.
    strip --strip-all -o "$ROOT/usr/local/bin/$bin" "$BIN_DIR/$bin"
    chmod 0755 "$ROOT/usr/local/bin/$bin"
    copy_libs "$BIN_DIR/$bin"
done
for link in "${LINKS[@]}"; do
    ln -s mesh-proxy "$ROOT/usr/local/bin/$link"
done

cp -L "$XTABLES_MULTI" "$ROOT/usr/sbin/xtables-nft-multi"
copy_libs "$XTABLES_MULTI"
for name in "${IPTABLES_NAMES[@]}"; do ln -s xtables-nft-multi "$ROOT/usr/sbin/$name"; done
XT_IMAGE_DIR="$ROOT$(image_path "$XT_DIR")"
mkdir -p "$XT_IMAGE_DIR"
for mod in "${XT_MODULES[@]}"; do
    if [[ -L "$XT_DIR/$mod" && "$(readlink "$XT_DIR/$mod")" != */* ]]; then
        cp -P "$XT_DIR/$mod" "$XT_IMAGE_DIR/$mod" # a sibling symlink (REDIRECT -> NAT)
    else
        cp -L "$XT_DIR/$mod" "$XT_IMAGE_DIR/$mod"
        copy_libs "$XT_DIR/$mod"
    fi
done
for mod in "${XT_MODULES[@]}"; do
    [[ -e "$XT_IMAGE_DIR/$mod" ]] || die "$mod points at a module not in XT_MODULES"
done

cat >"$ROOT/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
mesh-proxy:x:$MESH_UID:$MESH_UID:mesh-proxy:/nonexistent:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<EOF
root:x:0:
mesh-proxy:x:$MESH_UID:
nogroup:x:65534:
EOF
chmod 0644 "$ROOT/etc/passwd" "$ROOT/etc/group"

# One tarball, owned by root, with fixed times: the layer depends only on
# the files' contents.
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO_ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}
tar -C "$ROOT" --sort=name --owner=0 --group=0 --numeric-owner \
    --mtime="@$EPOCH" -cf "$WORK/rootfs.tar" .

# --- Image -----------------------------------------------------------------------

OLD_ID=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
log "podman build -t $TAG"
podman build --quiet --layers=false --file "$CONTAINERFILE" --tag "$TAG" --timestamp "$EPOCH" \
    --label "org.opencontainers.image.title=mesh" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    "$WORK" >/dev/null
NEW_ID=$(podman image inspect --format '{{.Id}}' "$TAG")
if [[ -n "$OLD_ID" && "$OLD_ID" != "$NEW_ID" ]]; then
    # The previous build, now untagged: remove it unless something uses it.
    if [[ -z "$(podman image inspect --format '{{join .RepoTags " "}}' "$OLD_ID" 2>/dev/null)" ]]; then
        podman rmi "$OLD_ID" >/dev/null 2>&1 || log "note: previous image $OLD_ID is still in use; kept"
    fi
fi

if ((CHECK)); then
    for bin in "${BINARIES[@]}" "${LINKS[@]}"; do
        v=$(podman run --rm --network none "$TAG" "$bin" --version) ||
            die "'$bin --version' failed in the image"
        log "check: $v"
    done
    podman run --rm --network none --user 0 "$TAG" iptables --version >/dev/null ||
        die "'iptables --version' failed in the image"
fi

mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
podman save --quiet --format oci-archive -o "$OUT" "$TAG"

IMAGE_SIZE=$(podman image inspect --format '{{.Size}}' "$TAG")
ARCHIVE_SIZE=$(stat -c %s "$OUT")
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
printf 'image    %s  %s  (%s bytes, %s)\n' "$TAG" "${NEW_ID:0:12}" "$IMAGE_SIZE" "$(mb "$IMAGE_SIZE")"
printf 'archive  %s  (%s bytes, %s)\n' "$OUT" "$ARCHIVE_SIZE" "$(mb "$ARCHIVE_SIZE")"
