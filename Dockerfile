# Runtime image for the fastai ULMFiT ONNX server (Cloud Run, 1 vCPU). See docs/deploy.md.
#
# Only the `serve` extra (onnxruntime, numpy, falcon, gunicorn; pinned in pyproject.toml) and the
# packages server/ + bundle/ + models/ go in. training/ and export/ (torch, fastai, spaCy) never do.
# Layers are ordered by how often they change: dependencies < models (every export) < code, so a
# code-only change rebuilds and pushes only the last, small layers.

# --- stage 1: derive the pinned runtime requirements from pyproject.toml --------------------
# Its own stage so that editing an unrelated part of pyproject.toml (the dev extra, say) does not
# bust the dependency layer: the final stage copies only the derived list, and the builder
# reuses the cached pip layer whenever that list is byte-for-byte unchanged.
FROM python:3.11-slim AS requirements
WORKDIR /src
COPY pyproject.toml scripts/serve_requirements.py ./
RUN python serve_requirements.py pyproject.toml > requirements-serve.txt

# --- stage 2: the runtime image --------------------------------------------------------------
FROM python:3.11-slim

# PYTHONDONTWRITEBYTECODE: the app user cannot write into /app anyway; the bytecode is compiled
# at build time (pip compiles the dependencies, compileall the app below).
# PYTHONUNBUFFERED: log lines reach Cloud Logging as they are written.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Binary wheels only: no compiler is installed, and none is needed or left behind. The whole
# dependency closure is pinned (serve-constraints.txt). In the same RUN (so the bytes never reach
# a layer): delete what serving never loads (scripts/prune_runtime.py: onnxruntime's C API copy
# and model tooling, numpy's tests, stubs, headers and lazily loaded extras, falcon's ASGI side,
# gunicorn's other workers, protobuf/flatbuffers/packaging) and keep only bytecode (--sourceless:
# the image is read-only, so sources are never needed to run); sizes in docs/deploy.md.
COPY --from=requirements /src/requirements-serve.txt /tmp/requirements-serve.txt
COPY serve-constraints.txt scripts/prune_runtime.py /tmp/
RUN pip install --no-cache-dir --only-binary=:all: \
        -c /tmp/serve-constraints.txt -r /tmp/requirements-serve.txt \
    && python /tmp/prune_runtime.py --sourceless \
        "$(python -c 'import pathlib, numpy; print(pathlib.Path(numpy.__file__).parents[1])')" \
    && rm -f /tmp/requirements-serve.txt /tmp/serve-constraints.txt /tmp/prune_runtime.py \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --no-log-init --shell /usr/sbin/nologin app

# Runtime settings after the dependency layer, so changing one does not reinstall the deps.
# (onnxruntime's telemetry is turned off by the bundle reader itself: bundle/__init__.py.)
ENV PYTHONPATH=/app \
    PORT=8080 \
    MODEL_DIR=/app/models
WORKDIR /app

# Bundles: replaced on every export, so they sit above the dependencies and below the code.
COPY models/ /app/models/

COPY bundle/ /app/bundle/
COPY server/ /app/server/
# Compile once here: with PYTHONDONTWRITEBYTECODE nothing is cached at run time, so every cold
# start would otherwise recompile the app's modules (measured in docs/deploy.md).
# Then the bundle gate, here too (bundle/verify.py: manifest, sizes and sha256 of every file, an
# onnxruntime load and one inference each), now with the pruned runtime: a bundle or a pruned
# file the server needs fails the build, not the first start. Which bundle is the default is
# deploy-time configuration (DEFAULT_CLASSIFIER/DEFAULT_LM), so `server --check` stays in the
# deploy gate.
RUN python -m compileall -q /app/bundle /app/server \
    && python -m bundle.verify /app/models

# Files stay root-owned and read-only to the server process. Numeric ids, so a platform can
# check runAsNonRoot without resolving names.
USER 10001:10001
EXPOSE 8080

# Exec form: python is PID 1 and receives SIGTERM from Cloud Run directly; `python -m server`
# runs the gunicorn master in that same process with server/gunicorn.conf.py (PORT, MODEL_DIR,
# WEB_THREADS, ... all read from the environment).
ENTRYPOINT ["python", "-m", "server"]
