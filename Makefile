# Deploy-path shortcuts. The one command after an export is `make deploy MODEL_BUCKET=...`
# (docs/deploy.md). Local image builds use podman with the settings in scripts/podman-env.sh.
SHELL := /bin/bash
PYTHON ?= .venv/bin/python
IMAGE ?= localhost/fastai-onnx-serve:dev
MODELS ?= models

.PHONY: help deploy canary service-yaml service-replace verify-bundles container-tools \
        base-image image run-image lint-deploy test-deploy test-container

help:
	@echo "make deploy MODEL_BUCKET=b        verify + upload bundles, Cloud Build: verify, build, push, deploy"
	@echo "make canary MODEL_BUCKET=b        same, new revision gets no traffic, tag 'canary'"
	@echo "make service-replace IMAGE=ref    apply service.yaml (probes etc.) with that image"
	@echo "make verify-bundles               python -m bundle.verify $(MODELS)"
	@echo "make image                        podman build of the Dockerfile (local stand-in base)"
	@echo "make run-image                    run that image on 127.0.0.1:8080"
	@echo "make test-deploy / test-container tests of the deploy files / of the built container"

deploy:
	scripts/deploy.sh deploy

canary:
	CANARY=true scripts/deploy.sh deploy

service-yaml:
	@scripts/deploy.sh render-service "$(IMAGE)"

service-replace:
	scripts/deploy.sh replace-service "$(IMAGE)"

verify-bundles:
	$(PYTHON) -m bundle.verify $(MODELS)
	MODEL_DIR=$(MODELS) $(PYTHON) -m server --check

container-tools:
	scripts/install-container-tools.sh

base-image: container-tools
	scripts/make-base-image.sh

image: base-image
	. scripts/podman-env.sh && time podman build --isolation=chroot --network=host --pull=never \
	    -f Dockerfile -t $(IMAGE) . && podman image inspect -f 'size: {{.Size}} bytes' $(IMAGE)

run-image:
	. scripts/podman-env.sh && podman run --rm --network=host -e PORT=8080 $(IMAGE)

lint-deploy test-deploy:
	$(PYTHON) -m pytest -q tests/test_deploy_files.py

test-container:
	$(PYTHON) -m pytest -q -m slow tests/test_container.py
