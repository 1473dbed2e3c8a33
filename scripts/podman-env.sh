#!/usr/bin/env bash
# Source me: configures podman for these hosts (no Docker engine, no registry, hybrid cgroups,
# no CAP_SYS_RESOURCE) and exports the variables podman/buildah read.
#   . scripts/podman-env.sh
# Why each setting:
#   - vfs storage: works without overlay support in the host kernel/container.
#   - runc + cgroupfs: crun refuses "cgroups in hybrid mode" here.
#   - default_ulimits no higher than `ulimit -Hn` / 32768 nproc: podman's defaults ask for more
#     than an unprivileged root may set ("setrlimit RLIMIT_NOFILE: Operation not permitted").
#   - chroot isolation for RUN steps during builds.
# State (image store, the cached stand-in base tarball) lives in $CONTAINER_STATE so it survives
# between test runs: the debootstrap of the stand-in base takes about a minute.
CONTAINER_STATE=${CONTAINER_STATE:-/var/tmp/fastai-onnx-serve-podman}
mkdir -p "$CONTAINER_STATE"

cat > "$CONTAINER_STATE/storage.conf" <<CONF
[storage]
driver = "vfs"
runroot = "$CONTAINER_STATE/run"
graphroot = "$CONTAINER_STATE/storage"
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

export CONTAINER_STATE
export CONTAINERS_STORAGE_CONF="$CONTAINER_STATE/storage.conf"
export CONTAINERS_CONF="$CONTAINER_STATE/containers.conf"
export BUILDAH_ISOLATION=chroot
