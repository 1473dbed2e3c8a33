#!/usr/bin/env bash
# Make a local stand-in for docker.io/library/python:3.11-slim, so the project's unmodified
# Dockerfile builds with podman on a machine that cannot reach a container registry.
#
# Debian bookworm's python3 is 3.11 like the official image; differences we paper over:
#   - pip may install system-wide (EXTERNALLY-MANAGED removed), as in the official image;
#   - python/pip are linked into /usr/local/bin (the official image keeps Python there);
#   - the host's extra CA certificates are trusted (pip behind a TLS-intercepting proxy).
# Not covered: the official image's Python lives in /usr/local with its own site-packages; ours
# uses Debian's dist-packages. Nothing in the Dockerfile may depend on that path.
#
# Cached: skipped when the image already exists; the debootstrapped rootfs is kept as a tarball
# in $CONTAINER_STATE so a wiped image store re-imports in seconds instead of a minute.
# Usage: scripts/make-base-image.sh [--force]     (root; run scripts/install-container-tools.sh first)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/podman-env.sh
. "$HERE/podman-env.sh"

BASE_IMAGE=${BASE_IMAGE:-docker.io/library/python:3.11-slim}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TARBALL="$CONTAINER_STATE/base-rootfs-$SUITE.tar"
FORCE=${1:-}

if [ "$FORCE" != --force ] && podman image exists "$BASE_IMAGE"; then
  echo "stand-in base present: $BASE_IMAGE"
  exit 0
fi

if [ "$FORCE" = --force ] || [ ! -s "$TARBALL" ]; then
  rootfs="$CONTAINER_STATE/rootfs"
  rm -rf "$rootfs"
  echo "debootstrap $SUITE from $MIRROR (about a minute)"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$CONTAINER_STATE/debootstrap.log" 2>&1 \
    || { tail -20 "$CONTAINER_STATE/debootstrap.log"; exit 1; }
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  for tool in python python3 pip pip3; do ln -sf "/usr/bin/$tool" "$rootfs/usr/local/bin/$tool"; done
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
         "$rootfs"/var/log/* "$rootfs"/var/cache/debconf/*-old
  : > "$rootfs/etc/resolv.conf"
  tar -C "$rootfs" -cf "$TARBALL.partial" .
  mv "$TARBALL.partial" "$TARBALL"
  rm -rf "$rootfs"
fi

podman import -q \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$TARBALL" "$BASE_IMAGE" >/dev/null
echo "stand-in base imported: $BASE_IMAGE ($(podman image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
