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

.PHONY: all setup test demo demo-vision demo-containers images images-arm64 test-arm64 lint typecheck bench clean distclean fuzz mutate az

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

# The Azure CLI for the az tests (tests/az), in its own venv: azure-cli pins its own dependency
# versions. azure-cli comes from PyPI; the azure-iot extension is NOT on PyPI (Azure publishes it
# only as a wheel on its own storage and GitHub releases). Give its wheel with
# AZ_IOT_EXTENSION=...; without it the az tests are skipped loudly (listed as NOT RUN at the end of
# every run; EDB_REQUIRE_AZ=1 makes them fail). `make test` does not run `make az`.
# AZ_CLI_VERSION: a CLI the extension's last uamqp-based release (0.25.0) loads with; uamqp (which
# that release's monitor-events would otherwise pip-install at run time) is installed here.
AZ_VENV := .venv-az
AZ_CLI_VERSION ?= 2.65.0
AZ_IOT_EXTENSION ?=
AZ_STAMP := $(AZ_VENV)/.installed-$(AZ_CLI_VERSION)

$(AZ_STAMP):
	@test -x $(AZ_VENV)/bin/python || $(PYTHON) -m venv $(AZ_VENV)
	$(AZ_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AZ_VENV)/bin/python -m pip install --quiet azure-cli==$(AZ_CLI_VERSION) "uamqp>=1.2,<=1.6.8"
	cp tests/az/edb_az_ca.py "$$($(AZ_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	echo "import edb_az_ca" > "$$($(AZ_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/edb_az_ca.pth"
	@touch $@

az: $(AZ_STAMP)
	@if [ -n "$(AZ_IOT_EXTENSION)" ]; then \
	  AZURE_EXTENSION_DIR=$(CURDIR)/$(AZ_VENV)/extensions AZURE_CONFIG_DIR=$(CURDIR)/$(AZ_VENV)/config \
	    $(AZ_VENV)/bin/az extension add --source "$(AZ_IOT_EXTENSION)" --yes; \
	elif [ ! -d $(AZ_VENV)/extensions/azure-iot ]; then \
	  echo "make az: the azure-iot extension is not on PyPI; set AZ_IOT_EXTENSION=<azure_iot-*.whl>." >&2; \
	  echo "make az: tests/az will FAIL until it is installed (see docs/iothub-standin.md, Azure CLI)." >&2; \
	fi

demo: setup
	$(BIN)/edb demo

# Long randomised fuzzing of the TEE wire protocol, the installer's desired-property parser and the
# key release request parser (`make test` runs the same tests briefly, derandomized).
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	EDB_FUZZ=1 EDB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -n 0 -q tests/fuzz

# Mutation testing (mutmut) of the security-critical modules with the tests that pin them; slow,
# not part of CI. `make mutate MUTATE_GROUPS="package installer"` runs a subset (mutation/mutate.py).
MUTATE_GROUPS ?=
mutate: $(STAMP)
	$(BIN)/python mutation/mutate.py $(MUTATE_GROUPS)

# A pretrained vision model (from the rapidocr wheel) served to a camera module over the Open Inference Protocol.
demo-vision: setup
	$(BIN)/edb demo-vision

# Containers (docs/containers.md). tools/with-docker installs what these need when missing (root +
# apt-get: docker.io, mmdebstrap; for arm64 qemu-user-static >= 10 from bookworm-backports, since
# bookworm's 7.2 crashes in onnxruntime) and starts dockerd for the command if no engine answers,
# stopping it afterwards. Images are cached by content (Docker labels; .edb/images keeps the rootfs
# and wheels).
WITH_DOCKER := tools/with-docker

images: setup
	$(WITH_DOCKER) $(BIN)/edb images build --platform linux/amd64

images-arm64: setup
	$(WITH_DOCKER) --arm64 $(BIN)/edb images build --platform linux/arm64

ARM64_SMOKE_MODULES := tee_service,inference_runner

# The same verified steps as `make demo`, every module (and the TEE) in a container of this tree's images.
demo-containers: setup
	$(WITH_DOCKER) sh -c '$(BIN)/edb images build --platform linux/amd64 && \
	    $(BIN)/edb demo --runtime docker --state-dir .edb/demo-containers'

# arm64 smoke test under qemu (slow, not part of `make test`): the demo's steps with the arm64v8 TEE
# and runner images (the other modules amd64): the arm64 TEE installs the package (the factory
# provisions with the arm64 TEE image), the arm64 runner loads it, answers upstream are checked.
test-arm64: setup
	$(WITH_DOCKER) --arm64 sh -c '$(BIN)/edb images build --platform linux/amd64 && \
	    $(BIN)/edb images build --platform linux/arm64 --module tee_service --module inference_runner && \
	    EDB_IMAGE_PLATFORM=arm64v8 EDB_IMAGE_PLATFORM_MODULES=$(ARM64_SMOKE_MODULES) EDB_DEMO_TIMEOUT_SCALE=8 \
	    $(BIN)/edb demo --runtime docker --state-dir .edb/demo-arm64'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/.out .mutate

distclean: clean
	rm -rf $(VENV) $(AZ_VENV) node_modules .edb
