#!/usr/bin/env bash
# Source me: configures podman for these hosts (no Docker engine, no registry, hybrid cgroups,
# no CAP_SYS_RESOURCE) and exports the variables podman/buildah read.
#   . scripts/podman-env.sh
# Why each setting:
#   - overlay storage when the kernel lets us mount overlayfs (a cached rebuild takes seconds),
#     else vfs, which works anywhere but copies the whole filesystem for every layer (minutes).
#     STORAGE_DRIVER=overlay|vfs forces one. Each driver has its own image store.
#   - runc + cgroupfs: crun refuses "cgroups in hybrid mode" here.
#   - default_ulimits no higher than `ulimit -Hn` / 32768 nproc: podman's defaults ask for more
#     than an unprivileged root may set ("setrlimit RLIMIT_NOFILE: Operation not permitted").
#   - chroot isolation for RUN steps during builds.
# State (image store, the cached stand-in base tarball) lives in $CONTAINER_STATE so it survives
# between test runs: the debootstrap of the stand-in base takes about a minute.
CONTAINER_STATE=${CONTAINER_STATE:-/var/tmp/fastai-onnx-serve-podman}
mkdir -p "$CONTAINER_STATE"

# Can this machine mount overlayfs? Probed once, remembered in $CONTAINER_STATE/driver.
_overlay_works() {
  local probe
  probe=$(mktemp -d "$CONTAINER_STATE/overlay-probe.XXXXXX") || return 1
  mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
       "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"; rm -rf "$probe"; return 0
  fi
  rm -rf "$probe"; return 1
}
if [ -z "${STORAGE_DRIVER:-}" ]; then
  if [ -s "$CONTAINER_STATE/driver" ]; then
    STORAGE_DRIVER=$(cat "$CONTAINER_STATE/driver")
  else
    if _overlay_works; then STORAGE_DRIVER=overlay; else STORAGE_DRIVER=vfs; fi
    echo "$STORAGE_DRIVER" > "$CONTAINER_STATE/driver"
  fi
fi
unset -f _overlay_works

cat > "$CONTAINER_STATE/storage.conf" <<CONF
[storage]
driver = "$STORAGE_DRIVER"
runroot = "$CONTAINER_STATE/run-$STORAGE_DRIVER"
graphroot = "$CONTAINER_STATE/storage-$STORAGE_DRIVER"
CONF

_nofile=$(ulimit -Hn)
if [ "$_nofile" = unlimited ]; then _nofile=1048576; fi
_nproc=$(ulimit -Hu)
if [ "$_nproc" = unlimited ] || [ "$_nproc" -gt 32768 ]; then _nproc=32768; fi
cat > "$CONTAINER_STATE/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$_nofile:$_nofile", "nproc=$_nproc:$_nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
unset _nofile _nproc

export CONTAINER_STATE STORAGE_DRIVER
export CONTAINERS_STORAGE_CONF="$CONTAINER_STATE/storage.conf"
export CONTAINERS_CONF="$CONTAINER_STATE/containers.conf"
export BUILDAH_ISOLATION=chroot
