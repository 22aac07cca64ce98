# Two commands matter: `make demo` (the whole blueprint end to end on the local stack) and
# `make test`. Both install what they need into .venv (and Azurite into node_modules/).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
            command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite-blob
PYTEST_ARGS ?= -n 2

.PHONY: all setup test demo demo-containers images images-arm64 test-arm64 lint typecheck bench clean distclean

all: test

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11+ is required (set PYTHON=...)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

$(AZURITE): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "error: npm (Node.js 18+) is required for Azurite" >&2; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

setup: $(STAMP) $(AZURITE)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/edb demo

# Containers (docs/containers.md): needs a running Docker Engine (dockerd), mmdebstrap for the offline
# base image; arm64 also qemu-user-static + binfmt-support. Images are cached by content in .edb/images.
images: setup
	$(BIN)/edb images build --platform linux/amd64

images-arm64: setup
	$(BIN)/edb images build --platform linux/arm64

ARM64_SMOKE_MODULES := tee_service,inference_runner

# The same verified steps as `make demo`, every module (and the TEE) in a container of this tree's images.
demo-containers: images
	$(BIN)/edb demo --runtime docker --state-dir .edb/demo-containers

# arm64 smoke test under qemu (slow, not part of `make test`): the demo's steps with the arm64v8 TEE
# and runner images (the other modules amd64): the arm64 TEE installs the package (the factory
# provisions with the arm64 TEE image), the arm64 runner loads it, answers upstream are checked.
test-arm64: images
	$(BIN)/edb images build --platform linux/arm64 --module tee_service --module inference_runner
	EDB_IMAGE_PLATFORM=arm64v8 EDB_IMAGE_PLATFORM_MODULES=$(ARM64_SMOKE_MODULES) EDB_DEMO_TIMEOUT_SCALE=8 \
	    $(BIN)/edb demo --runtime docker --state-dir .edb/demo-arm64

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/.out

distclean: clean
	rm -rf $(VENV) node_modules .edb
