#!/usr/bin/env bash
# Rebuild and redeploy after an export: `make deploy` (or scripts/deploy.sh [deploy]).
#
#   1. verify the local bundles (models/) with bundle.verify: a broken export stops here,
#      before anything is uploaded;
#   2. upload them to an immutable, dated folder gs://$MODEL_BUCKET/bundles/<UTC>-<git sha>/;
#   3. stage the committed sources the build needs (git archive: what is deployed is a commit)
#      and run `gcloud builds submit --config cloudbuild.yaml`, which fetches that folder,
#      verifies it again, builds, pushes and deploys (see cloudbuild.yaml / docs/deploy.md).
#
# Other commands:
#   scripts/deploy.sh render-service IMAGE    print service.yaml with SERVICE/REGION/IMAGE filled in
#   scripts/deploy.sh replace-service IMAGE   ... and apply it (`gcloud run services replace`)
#
# Settings (environment):
#   MODEL_BUCKET   required for deploy; bucket name without gs://
#   GCP_PROJECT    default: gcloud's configured project
#   REGION, REPO, SERVICE   defaults equal cloudbuild.yaml's substitutions
#   CANARY=true    deploy with no traffic under the tag `canary` (docs/deploy.md, "Canary")
#   LOCAL_MODELS   bundles to ship (default: models): any number, of either task
#   DEFAULT_CLASSIFIER, DEFAULT_LM   the bundle answering a task's requests that name no model
#                  (needed when LOCAL_MODELS holds several of a task; docs/configuration.md)
#   ALLOW_DIRTY=1  deploy uncommitted changes of the build inputs (default: refuse)
#   DRY_RUN=1      do everything local, print the gcloud commands instead of running them
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

REGION=${REGION:-europe-west1}
REPO=${REPO:-fastai-onnx-serve}
SERVICE=${SERVICE:-imdb-ulmfit}
CANARY=${CANARY:-false}
LOCAL_MODELS=${LOCAL_MODELS:-models}
DEFAULT_CLASSIFIER=${DEFAULT_CLASSIFIER:-}
DEFAULT_LM=${DEFAULT_LM:-}
ALLOW_DIRTY=${ALLOW_DIRTY:-0}
DRY_RUN=${DRY_RUN:-0}
if [ -x "$REPO_ROOT/.venv/bin/python" ]; then PYTHON=${PYTHON:-$REPO_ROOT/.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi

# What Cloud Build needs from the source tree; models/ comes from the bucket, not from here.
BUILD_INPUTS=(cloudbuild.yaml Dockerfile .dockerignore pyproject.toml serve-constraints.txt scripts/serve_requirements.py scripts/prune_runtime.py bundle server)

die() { echo "deploy: $*" >&2; exit 1; }
say() { echo "deploy: $*" >&2; }

# Run a gcloud command, or only show it under DRY_RUN.
gcloud_run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf 'DRY_RUN gcloud'; printf ' %q' "$@"; printf '\n'
  else
    gcloud "$@"
  fi
}

project() {
  if [ -n "${GCP_PROJECT:-}" ]; then echo "$GCP_PROJECT"; return; fi
  command -v gcloud >/dev/null || die "gcloud not found; install the Google Cloud SDK or set GCP_PROJECT (DRY_RUN)"
  local p; p=$(gcloud config get-value project 2>/dev/null)
  [ -n "$p" ] || die "no project: set GCP_PROJECT or run 'gcloud config set project ...'"
  echo "$p"
}

render_service() {
  local image=${1:?usage: render-service IMAGE}
  case "$image" in *'|'*|*' '*) die "bad image reference: $image";; esac
  sed -e "s|\${SERVICE}|$SERVICE|g" -e "s|\${REGION}|$REGION|g" -e "s|\${IMAGE}|$image|g" service.yaml
}

replace_service() {
  local image=${1:?usage: replace-service IMAGE} rendered
  rendered=$(mktemp --suffix=.yaml)
  render_service "$image" > "$rendered"
  gcloud_run run services replace "$rendered" --region="$REGION" --project="$(project)"
  rm -f "$rendered"
}

stage_sources() {
  local stage=$1
  local dirty
  dirty=$(git status --porcelain -- "${BUILD_INPUTS[@]}")
  if [ -n "$dirty" ]; then
    [ "$ALLOW_DIRTY" = 1 ] || die "uncommitted changes in the build inputs (commit them, or ALLOW_DIRTY=1):
$dirty"
    say "ALLOW_DIRTY=1: staging the working tree, not a commit"
    tar -c --exclude=__pycache__ --exclude='*.pyc' "${BUILD_INPUTS[@]}" | tar -x -C "$stage"
  else
    git archive --format=tar HEAD -- "${BUILD_INPUTS[@]}" | tar -x -C "$stage"
  fi
  mkdir -p "$stage/models"   # filled by the fetch-bundles step
}

deploy() {
  [ -n "${MODEL_BUCKET:-}" ] || die "set MODEL_BUCKET (the bucket for bundles, without gs://)"
  local gcp_project stamp prefix stage
  gcp_project=$(project)

  say "verifying $LOCAL_MODELS"
  "$PYTHON" -m bundle.verify "$LOCAL_MODELS"
  MODEL_DIR="$LOCAL_MODELS" DEFAULT_CLASSIFIER="$DEFAULT_CLASSIFIER" DEFAULT_LM="$DEFAULT_LM" \
    "$PYTHON" -m server --check

  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  prefix="bundles/$stamp-$(git rev-parse --short HEAD)"
  say "uploading bundles to gs://$MODEL_BUCKET/$prefix"
  gcloud_run storage rsync --recursive --exclude='(^|.*/)__pycache__/.*' \
    "$LOCAL_MODELS" "gs://$MODEL_BUCKET/$prefix" --project="$gcp_project"

  stage=${STAGE_DIR:-$(mktemp -d)}
  mkdir -p "$stage"
  stage_sources "$stage"
  say "build sources staged in $stage"

  gcloud_run builds submit "$stage" \
    --config="$stage/cloudbuild.yaml" \
    --project="$gcp_project" \
    --substitutions="_REGION=$REGION,_REPO=$REPO,_SERVICE=$SERVICE,_MODEL_BUCKET=$MODEL_BUCKET,_BUNDLE_PREFIX=$prefix,_CANARY=$CANARY,_DEFAULT_CLASSIFIER=$DEFAULT_CLASSIFIER,_DEFAULT_LM=$DEFAULT_LM"

  if [ "$DRY_RUN" != 1 ]; then
    rm -rf "$stage"
    gcloud run services describe "$SERVICE" --region="$REGION" --project="$gcp_project" \
      --format='value(status.url)'
    if [ "$CANARY" = true ]; then
      say "canary deployed with no traffic; see docs/deploy.md to shift traffic"
    fi
  fi
}

case "${1:-deploy}" in
  deploy) deploy ;;
  render-service) shift; render_service "$@" ;;
  replace-service) shift; replace_service "$@" ;;
  -h|--help|help) sed -n '2,25p' "$0" ;;
  *) die "unknown command: $1 (deploy | render-service IMAGE | replace-service IMAGE)" ;;
esac
