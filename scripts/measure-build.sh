#!/usr/bin/env bash
# Measure the figures quoted in docs/deploy.md: cold / cached / code-only / bundle-only build
# times, image and layer sizes, and cold-start time to ready with and without the build-time
# byte-compilation. Uses podman with the stand-in base (scripts/make-base-image.sh).
# Usage: scripts/measure-build.sh BUNDLES_DIR [STARTS]    (root; BUNDLES_DIR holds imdb-lm/ + imdb-sentiment/)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUNDLES=${1:?usage: measure-build.sh BUNDLES_DIR [STARTS]}
STARTS=${2:-5}
# shellcheck source=scripts/podman-env.sh
. "$HERE/podman-env.sh"
"$HERE/make-base-image.sh" >/dev/null

IMG=localhost/fastai-onnx-serve:measure
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"; podman rmi -f "$IMG" "$IMG-nocompile" >/dev/null 2>&1 || true; podman image prune -f >/dev/null 2>&1 || true' EXIT
for item in Dockerfile .dockerignore pyproject.toml scripts bundle server; do cp -r "$REPO/$item" "$CTX/"; done
mkdir -p "$CTX/models"
cp -r "$BUNDLES/imdb-lm" "$BUNDLES/imdb-sentiment" "$CTX/models/"

build() {  # build [extra podman args...] -> prints seconds
  local start end
  start=$(date +%s.%N)
  podman build --isolation=chroot --network=host --pull=never -q "$@" "$CTX" >/dev/null
  end=$(date +%s.%N)
  printf '%.1f' "$(echo "$end - $start" | bc)"
}

echo "storage driver: $STORAGE_DRIVER; bundles: $(du -sh "$BUNDLES" | cut -f1) ($BUNDLES)"
echo "cold build (--no-cache, pip downloads the wheels): $(build --no-cache -t "$IMG") s"
echo "rebuild, nothing changed:                          $(build -t "$IMG") s"
echo "# code-only change $(date)" >> "$CTX/server/config.py"
echo "rebuild after a code-only change:                  $(build -t "$IMG") s"
echo "# another code-only change" >> "$CTX/server/config.py"
echo "x" > "$CTX/models/imdb-lm/EXTRA"
echo "rebuild after a bundle-only change:                $(build -t "$IMG") s"
rm -f "$CTX/models/imdb-lm/EXTRA"
build -t "$IMG" >/dev/null
echo "image size: $(podman image inspect -f '{{.Size}}' "$IMG") bytes"
echo "layers (size, instruction):"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMG" | cut -c1-110 | sed 's/^/  /'

# Cold start: `since_exec_s` of the server's "ready" log line (exec -> warmed), median of STARTS.
ready_time() {
  local image=$1 cid t
  cid=$(podman run -d --network=none "$image")
  for _ in $(seq 1 300); do
    t=$(podman logs "$cid" 2>&1 | sed -n 's/.*"message": "ready".*"since_exec_s": \([0-9.]*\).*/\1/p' | head -1)
    [ -n "$t" ] && break
    sleep 0.1
  done
  podman rm -f -t 0 "$cid" >/dev/null
  echo "${t:-nan}"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

sed '/^RUN python -m compileall/d' "$CTX/Dockerfile" > "$CTX/Dockerfile.nocompile"
build -f "$CTX/Dockerfile.nocompile" -t "$IMG-nocompile" >/dev/null
for image in "$IMG" "$IMG-nocompile"; do
  times=()
  for _ in $(seq 1 "$STARTS"); do times+=("$(ready_time "$image")"); done
  echo "exec -> ready, $image: median $(printf '%s\n' "${times[@]}" | median) s (${times[*]})"
done
