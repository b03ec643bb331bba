#!/usr/bin/env bash
# Make the offline base image vda-base:bookworm with debootstrap, when it is missing. Idempotent.
#
# No image registry is needed: Debian bookworm (minbase + python3, python3-venv, tini,
# ca-certificates) is bootstrapped from a Debian mirror into a temp dir and `docker import`ed.
# Needs root (debootstrap), debootstrap and a reachable Docker engine (docker/engine.sh).
#
# Env: VDA_BASE_IMAGE    image name          (default vda-base:bookworm)
#      DEBIAN_MIRROR     Debian mirror       (default http://deb.debian.org/debian)
#      DEBIAN_SUITE      suite               (default bookworm; python3 must be 3.11 for the cp311 wheelhouse)
#      VDA_BASE_REBUILD  1 = rebuild even if the image exists
set -euo pipefail

IMAGE=${VDA_BASE_IMAGE:-vda-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
PACKAGES=python3,python3-venv,tini,ca-certificates

say() { echo "base-image.sh: $*" >&2; }

if [ "${VDA_BASE_REBUILD:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE exists"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "debootstrap needs root; run 'sudo $0' (or build FROM another Debian bookworm image with python3, python3-venv and tini)"
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    say "debootstrap is missing: apt-get install -y debootstrap debian-archive-keyring (docker/engine.sh does it as root)"
    exit 1
fi

tmp=$(mktemp -d /var/tmp/vda-base.XXXXXX)
cleanup() {
    # Never follow links out of the rootfs; proc/sys are not mounted by a minbase debootstrap that finished.
    for m in proc sys dev/pts dev; do umount -l "$tmp/rootfs/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT

say "debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp/rootfs" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 || {
    say "debootstrap failed; last lines of its log:"
    tail -n 30 "$tmp/debootstrap.log" >&2
    [ -f "$tmp/rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$tmp/rootfs/debootstrap/debootstrap.log" >&2
    exit 1
}

# Slim it: package caches, lists, docs (apt-get update in a derived image brings lists back).
rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"* \
    "$tmp/rootfs/usr/share/doc/"* "$tmp/rootfs/usr/share/man/"* "$tmp/rootfs/usr/share/info/"* \
    "$tmp/rootfs/usr/share/locale/"* "$tmp/rootfs/var/log/"*.log "$tmp/rootfs/debootstrap"
# Images must not carry the host's identity or resolver.
: >"$tmp/rootfs/etc/resolv.conf"
: >"$tmp/rootfs/etc/hostname"
rm -f "$tmp/rootfs/etc/machine-id" && : >"$tmp/rootfs/etc/machine-id"

say "docker import -> $IMAGE"
tar --numeric-owner --xattrs -C "$tmp/rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["/bin/bash"]' \
    -m "debootstrap --variant=minbase --include=$PACKAGES $SUITE $MIRROR" \
    - "$IMAGE" >/dev/null
docker run --rm --network none "$IMAGE" python3 -c 'import sys, venv; print("base python", sys.version.split()[0])' >&2
say "done: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
