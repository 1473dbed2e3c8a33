#!/usr/bin/env bash
# Install what tests/test_container.py needs to build and run the image without a Docker
# engine: Debian's podman + buildah, runc (crun refuses this host's hybrid cgroups) and
# debootstrap (to make the stand-in python:3.11-slim base). Idempotent: apt runs only when a
# tool is missing, and `apt-get update` at most once. Needs root (or sudo).
set -euo pipefail

tools=(podman buildah runc debootstrap)
missing=()
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "container tools present: $(podman --version)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${missing[*]} (+ uidmap)"
$SUDO apt-get update -qq
# uidmap: newuidmap/newgidmap, which podman wants even when running as root.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  podman buildah runc debootstrap uidmap >/dev/null
echo "container tools installed: $(podman --version)"
