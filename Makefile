# task-timeout-ee: `make demo` and `make test` are the two set-up commands; every other
# target is a step they run, usable on its own.

VERSION          := 0.1.0
CONTAINER_ENGINE ?= docker
IMAGE            ?= task-timeout-ee
# The ansible-core line to build and test, X.Y (`scripts/core-line --list`); empty: the default line
# (pyproject.toml). An unsupported one stops make here, naming the supported ones.
CORE             ?=
CORE_LINE    := $(shell scripts/core-line "$(CORE)" line 2>/dev/null)
ifeq ($(CORE_LINE),)
$(error $(shell scripts/core-line "$(CORE)" line 2>&1 >/dev/null))
endif
DEFAULT_LINE := $(shell scripts/core-line "" line)
CORE_VERSION := $(shell scripts/core-line $(CORE_LINE) core)
CORE_PATCHED := $(shell scripts/core-line $(CORE_LINE) patched)
CORE_PREVIEW := $(shell scripts/core-line $(CORE_LINE) preview)
OTHER_LINES  := $(filter-out $(CORE_LINE),$(shell scripts/core-line --list | cut -d' ' -f1))
# Tags: every line has :core<X.Y> and :<version>-core<X.Y.Z> (a preview's version says rc);
# the default line's image is :dev and :<version> too.
LINE_TAGS    := $(IMAGE):core$(CORE_LINE) $(IMAGE):$(VERSION)-core$(CORE_VERSION)
ifeq ($(CORE_LINE),$(DEFAULT_LINE))
EE_IMAGE         ?= $(IMAGE):dev
STOCK_IMAGE      ?= $(IMAGE):stock
EE_TAGS          := $(EE_IMAGE) $(IMAGE):$(VERSION) $(LINE_TAGS)
else
EE_IMAGE         ?= $(IMAGE):core$(CORE_LINE)
STOCK_IMAGE      ?= $(IMAGE):stock-core$(CORE_LINE)
EE_TAGS          := $(EE_IMAGE) $(filter-out $(EE_IMAGE),$(LINE_TAGS))
endif
TARGET_IMAGE     ?= task-timeout-ee-target:dev
# Plain Debian with the wheel in a virtualenv: the project used without the EE (tests/venv).
VENV_IMAGE       ?= task-timeout-ee-venv:core$(CORE_LINE)
# The EE with the ansible community package, built on EE_IMAGE by ansible-builder (full-ee/).
FULL_IMAGE       ?= $(IMAGE)-full:dev
# The base the image is built on. Where a registry is reachable:
#   make image BASE_IMAGE=docker.io/library/debian:trixie
LOCAL_BASE       := localhost/debian:trixie
BASE_IMAGE       ?= $(LOCAL_BASE)
# A CA bundle handed to the build (TLS-intercepting proxies); by default the one the
# host's pip trusts, if any. CA_BUNDLE= hands none.
CA_BUNDLE        ?= $(or $(shell python3 -m pip config get global.cert 2>/dev/null),$(PIP_CERT))
# --network for image builds, e.g. BUILD_NETWORK=host when the bridge cannot reach mirrors.
BUILD_NETWORK    ?=
PYTEST_ARGS      ?=
# e.g. REFEREE_ARGS="--set quick" or "--targets handlers,blocks" (scripts/referee --help)
REFEREE_ARGS     ?=

# What scripts/build-wheel builds for the line (pyproject.toml's [tool.task-timeout-ee]).
WHEEL        := dist/ansible_core-$(CORE_PATCHED)-py3-none-any.whl

VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
RUFF   := $(VENV)/bin/ruff
TT_CORE_LINE := $(CORE_LINE)
export CONTAINER_ENGINE EE_IMAGE STOCK_IMAGE TARGET_IMAGE VENV_IMAGE FULL_IMAGE CA_BUNDLE TT_CORE_LINE

BUILD_IMAGE = scripts/build-image --engine $(CONTAINER_ENGINE) --base $(BASE_IMAGE) --line $(CORE_LINE) \
	$(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE)) $(if $(BUILD_NETWORK),--network $(BUILD_NETWORK))

.PHONY: _test-images _line-checks _line-check _full-line test-line test-lines line-images wheel wheelhouse venv-image image-full test-full lock push help demo test stock-reference host-deps venv base context check-context image image-stock target \
	unit core-tests lint format bench clean clean-base referee referee-reference images referee-test \
	_stock-reference _referee-test

help:
	@echo "make wheel    dist/: ansible-core $(CORE_PATCHED), patched, for pip install in any venv"
	@echo "make demo     build what is missing, show a frozen host timed out while four others finish (VERBOSE=1: all output)"
	@echo "make test     the whole suite (lint, unit, context check, image, integration)"
	@echo "make image-full  $(FULL_IMAGE): the EE with the ansible community package; make test-full tests it"
	@echo "make image    build $(EE_TAGS) (BASE_IMAGE=, CA_BUNDLE=, CONTAINER_ENGINE=)"
	@echo "              CORE=X.Y: wheel, image, demo and test-line on another ansible-core line ($(shell scripts/core-line --list | cut -d' ' -f1 | paste -sd' '); default $(DEFAULT_LINE))"
	@echo "make context  regenerate context/ from execution-environment.yml; check-context verifies it"
	@echo "make bench    run the benchmarks in bench/, results in bench/results/"
	@echo "make referee  ansible-core's own integration targets, stock vs patched (REFEREE_ARGS=)"

# ---- what a fresh machine needs --------------------------------------------------------

# What the host needs, from Debian's packages (tool name = package name): patch applies patches/
# (make wheel, make unit); `make base` adds mmdebstrap, which bootstraps the local base image;
# `make test` adds podman (the EE run by podman) and docker-registry (a registry on loopback).
HOST_PKGS := patch
host-deps:
	@missing=$$(for t in $(HOST_PKGS); do command -v $$t >/dev/null || echo $$t; done); \
	[ -z "$$missing" ] || { \
	  [ "$$(id -u)" = 0 ] || { echo "make: missing:" $$missing": sudo apt-get install" $$missing >&2; exit 1; }; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; }

venv: $(VENV)/.installed
$(VENV)/.installed: requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements-test.txt
	touch $@

# ---- the wheel ---------------------------------------------------------------------------

# The patched ansible-core as a wheel that pip installs anywhere (Python >= 3.12); the image's
# builder stage runs the same script. Reproducible: same inputs, same bytes.
wheel: $(WHEEL)
$(WHEEL): $(VENV)/.installed locks/$(CORE_LINE).lock pyproject.toml scripts/build-wheel scripts/apply-patches \
		$(wildcard patches/$(CORE_LINE)/*.patch) $(shell find src -name '*.py' -not -path '*/__pycache__/*') | host-deps
	$(PY) scripts/build-wheel --line $(CORE_LINE) --dest dist

# locks/<line>.lock from requirements.in plus that line's ansible-core: exact pins with the hashes of
# every file of each, for every platform and the Pythons the line supports (uv resolves for them,
# not for the host's). One lock per line: each pins its own released core, the rest resolves alike.
lock: venv
	@mkdir -p locks
	@for line in $$(scripts/core-line --list | cut -d' ' -f1); do \
	  core=$$(scripts/core-line $$line core) && tmp=$$(mktemp -d) && \
	  echo "ansible-core==$$core" > $$tmp/core.in && \
	  SSL_CERT_FILE=$${SSL_CERT_FILE:-$(or $(CA_BUNDLE),/etc/ssl/certs/ca-certificates.crt)} \
	    $(VENV)/bin/uv pip compile --quiet --universal --python-version $$(scripts/core-line $$line python) --generate-hashes \
	    --custom-compile-command "make lock" requirements.in $$tmp/core.in -o locks/$$line.lock || exit 1; \
	  sed -i "s|$$tmp/core.in|ansible-core==$$core (scripts/core-line $$line core)|" locks/$$line.lock; \
	  rm -rf $$tmp; echo "locks/$$line.lock: ansible-core==$$core"; done

# The wheel plus locks/<line>.lock's files for this machine's CPython 3.13 (the version trixie
# ships), each checked against its hash: an offline wheelhouse for a plain virtualenv. Without the
# released ansible-core and the build tool: nothing there but what such a venv installs.
WHEELHOUSE := .cache/wheelhouse-$(CORE_LINE)
wheelhouse: $(WHEEL)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PY) -m pip download --quiet --require-hashes --no-deps --only-binary=:all: --dest $(WHEELHOUSE) \
	  --python-version 3.13 --implementation cp --abi cp313 --abi abi3 --abi none \
	  $(foreach p,manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 any,\
	    --platform $(if $(filter any,$(p)),any,$(p)_$(shell uname -m))) \
	  -r locks/$(CORE_LINE).lock
	rm -f $(WHEELHOUSE)/ansible_core-$(CORE_VERSION)-py3-none-any.whl $(WHEELHOUSE)/wheel-*.whl
	cp $(WHEEL) $(WHEELHOUSE)/

# ---- images ------------------------------------------------------------------------------

base: HOST_PKGS += mmdebstrap
base: host-deps
ifeq ($(BASE_IMAGE),$(LOCAL_BASE))
	scripts/make-base $(LOCAL_BASE) $(CONTAINER_ENGINE)
else
	@echo "make: BASE_IMAGE=$(BASE_IMAGE) is not the local base; nothing to bootstrap"
endif

context: venv
	rm -rf context
	$(VENV)/bin/ansible-builder create --file execution-environment.yml --context context \
	  --output-filename Containerfile >/dev/null
	@echo "context/ regenerated from execution-environment.yml"

# ansible-builder never deletes stale files, so generate afresh and compare both ways.
check-context: venv
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(VENV)/bin/ansible-builder create --file execution-environment.yml --context "$$tmp/context" \
	  --output-filename Containerfile >/dev/null && \
	diff -r --exclude='*.pem' --exclude='*.whl' "$$tmp/context" context \
	  || { echo "check-context: context/ is out of date with execution-environment.yml: run \`make context\`" >&2; exit 1; }
	@echo "check-context: context/ matches execution-environment.yml"

image: base check-context
	$(BUILD_IMAGE) --build-arg ANSIBLE_CORE_VERSION=$(CORE_PATCHED) $(foreach t,$(EE_TAGS),--tag $(t))

# The same image without the patches and with ansible's own defaults (no ansible.cfg of ours:
# its ServerAlive settings would end a frozen connection after 45-60 s, which stock users do not
# have): the stock reference of tests and benchmarks.
# Its builder stage passes the released wheel through (ANSIBLE_CORE_VERSION without a local
# label); the layers before that are shared with the patched image's.
image-stock: base check-context
	rm -rf .cache/stock-context && mkdir -p .cache && cp -r context .cache/stock-context
	echo "# stock: ansible-core's own defaults" > .cache/stock-context/_build/ansible-config/ansible.cfg
	$(BUILD_IMAGE) --context .cache/stock-context --tag $(STOCK_IMAGE) \
	  --build-arg ANSIBLE_CORE_VERSION=$(CORE_VERSION) --build-arg TT_PATCH_SET=

# The managed-host target of the tests and the demo (the top-level Containerfile).
target: base
	$(CONTAINER_ENGINE) build -q -f Containerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  $(if $(BUILD_NETWORK),--network $(BUILD_NETWORK)) -t $(TARGET_IMAGE) . >/dev/null
	@echo "built $(TARGET_IMAGE)"

# full-ee/: the ansible community package on the EE, built as a user's own EE is (ansible-builder).
image-full: _full-line venv image
	scripts/build-full --engine $(CONTAINER_ENGINE) --base $(EE_IMAGE) $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE)) \
	  --tag $(FULL_IMAGE) --tag $(IMAGE)-full:$(VERSION)

_full-line:
	@[ "$(CORE_LINE)" = "$(DEFAULT_LINE)" ] || { echo "make: image-full is built on the default line ($(DEFAULT_LINE)) only: the ansible package pins its core line" >&2; exit 1; }

# tests/venv/Containerfile: the local base, python3-venv, and the wheel pip-installed into a venv.
venv-image: base wheelhouse
	rm -rf .cache/venv-context && mkdir -p .cache/venv-context
	cp -r $(WHEELHOUSE) .cache/venv-context/wheelhouse
	$(CONTAINER_ENGINE) build -q -f tests/venv/Containerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  $(if $(BUILD_NETWORK),--network $(BUILD_NETWORK)) -t $(VENV_IMAGE) .cache/venv-context >/dev/null
	@echo "built $(VENV_IMAGE)"

# ---- the two set-up commands -------------------------------------------------------------

# Quiet: one line per step, each step's output in .cache/demo-logs/<step>.log, its tail printed when
# it fails; VERBOSE=1 shows everything. `make base`, `make image` and `make target` stay verbose.
DEMO_LOGS := .cache/demo-logs
demo:
	@scripts/steps --log-dir $(DEMO_LOGS) --engine $(CONTAINER_ENGINE) \
	  --step base "base image $(BASE_IMAGE)" $(BASE_IMAGE) "$(MAKE) --no-print-directory base" \
	  --step image "image $(EE_IMAGE)" $(EE_IMAGE) "$(MAKE) --no-print-directory image" \
	  --step target "target $(TARGET_IMAGE)" $(TARGET_IMAGE) "$(MAKE) --no-print-directory target" \
	  --show demo "demo" scripts/demo

# Order: what fails fastest first. ansible-core's unit tests (CPU) run while the images build
# (network, disk), every line's images among them. The rest runs one step at a time: the referee's
# timing-sensitive targets (callback_default's free-strategy output order) failed beside the stock
# reference's runs. The integration tests run on three xdist workers, each with its own network,
# key and targets (they mostly wait for hangs; test_custom_ee's build is one group, on one worker).
# Then, on every other line, the checks that need its image (LINE_CHECKS); its whole proof is
# `make test-line`. (_name: the step alone, its images already built.)
LINE_CHECKS := tests/image/test_image.py tests/integration/test_task_timeout_keyword.py \
	tests/integration/test_core_line.py
test: HOST_PKGS += mmdebstrap podman docker-registry
test: export TT_REQUIRE_PODMAN := 1
test: venv lint unit
	$(MAKE) --no-print-directory -j2 --output-sync=target core-tests _test-images
	$(PYTEST) tests/image -q $(PYTEST_ARGS)
	$(PYTEST) tests/integration -n 3 --dist loadgroup --durations=15 --ignore=$(STOCK_TESTS) $(PYTEST_ARGS)
	$(MAKE) --no-print-directory _line-checks
	$(MAKE) --no-print-directory _stock-reference
	$(MAKE) --no-print-directory _referee-test

# make on another line, with that line's image names (this line's are exported, and may have been
# given on the command line): LINE_VARS, then $(MAKE) itself in the recipe, so make sees the recursion.
LINE_VARS = CORE=$$line EE_IMAGE=$(IMAGE):core$$line STOCK_IMAGE=$(IMAGE):stock-core$$line \
	VENV_IMAGE=task-timeout-ee-venv:core$$line

# One after the other: image-stock copies context/, into which image's build writes its CA.
_test-images: images
	@for line in $(OTHER_LINES); do \
	  $(MAKE) --no-print-directory $(LINE_VARS) image && \
	  $(MAKE) --no-print-directory $(LINE_VARS) image-stock || exit 1; done

_line-checks:
	@for line in $(OTHER_LINES); do $(MAKE) --no-print-directory $(LINE_VARS) _line-check || exit 1; done
_line-check:
	$(PYTEST) $(LINE_CHECKS) -n 2 -q $(PYTEST_ARGS)

# The proof on one other line (make test-line CORE=2.22; docs/testing.md): its wheel and images, its
# stock and patched trees' unit tests with a shorter worker-kill stress, the image tests, the
# frozen-host keyword test (stock failing it), the line's own changes (test_core_line), the hang
# matrix with the linear strategy, and the referee's quick set of the line's own integration targets,
# both images compared. test-lines runs it on every line but the default one.
LINE_TESTS := tests/integration/test_task_timeout_keyword.py tests/integration/test_core_line.py \
	tests/integration/test_hang_matrix.py
test-line: venv unit
	STRESS_TRIALS=50 $(MAKE) --no-print-directory -j2 --output-sync=target core-tests line-images
	$(PYTEST) tests/image -q $(PYTEST_ARGS)
	$(PYTEST) $(LINE_TESTS) -n 2 -k "not free" --durations=10 $(PYTEST_ARGS)
	BUILD_NETWORK=$(BUILD_NETWORK) scripts/referee --set quick

line-images: base
	$(MAKE) --no-print-directory image
	$(MAKE) --no-print-directory image-stock
	$(MAKE) --no-print-directory target

test-lines:
	@for line in $(OTHER_LINES); do $(MAKE) --no-print-directory $(LINE_VARS) test-line || exit 1; done

# task-timeout-ee-full and its tests (tests/full): not part of `make test`, which stays under an
# hour without them (the ansible package is a 51 MB download and some 30000 files to install).
test-full: venv image-full target
	$(PYTEST) tests/full -q $(PYTEST_ARGS)

# One after the other: image-stock copies context/, into which image's build writes its CA.
images: base
	$(MAKE) --no-print-directory image
	$(MAKE) --no-print-directory image-stock
	$(MAKE) --no-print-directory target
	$(MAKE) --no-print-directory venv-image

# ---- steps -------------------------------------------------------------------------------

# The same hang matrix against stock ansible-core (part of `make test` too); TT_STOCK_REPORT=file
# writes the measured outcomes as JSON lines.
# Four workers: these runs mostly wait for stock to hang until its outer limit (six overloaded the
# 2 cores: a healthy host of a stock run then took longer than its task limit).
STOCK_TESTS := tests/integration/test_stock_reference.py
stock-reference: venv image-stock target _stock-reference
_stock-reference:
	$(PYTEST) $(STOCK_TESTS) -n 4 --durations=5 $(PYTEST_ARGS)

# tests/wheel builds the wheel (the released one is fetched once into .cache/upstream).
unit: venv host-deps
	$(PYTEST) tests/unit tests/bench tests/wheel -q

# ansible-core's own unit tests, on the stock and the patched tree of the line (STRESS_TRIALS= passes on).
core-tests: base
	scripts/core-tests $(CORE_LINE)

# scripts/referee, steps and build-wheel have no .py suffix: named, so that ruff checks them too.
lint: venv check-context
	$(RUFF) check . scripts/referee scripts/steps scripts/build-wheel scripts/core-line
	$(RUFF) format --check . scripts/referee scripts/steps scripts/build-wheel scripts/core-line

format: venv
	$(RUFF) format . scripts/referee scripts/steps scripts/build-wheel scripts/core-line
	$(RUFF) check --fix . scripts/referee scripts/steps scripts/build-wheel scripts/core-line

# ansible-core's own integration targets (tests/referee, docs/referee.md) on the stock and the
# patched image, compared: fails naming each target that passes on stock and fails or hangs
# patched. referee-reference rewrites the committed stock side, tests/referee/stock-reference.json.
referee: image image-stock
	BUILD_NETWORK=$(BUILD_NETWORK) scripts/referee $(REFEREE_ARGS)

# The referee's part of `make test`: the patched side of every target against the committed stock
# reference, then fork_safe_stdio (which once hung at exit now and then) 30 times.
referee-test: image _referee-test
_referee-test:
	BUILD_NETWORK=$(BUILD_NETWORK) scripts/referee --patched-only
	BUILD_NETWORK=$(BUILD_NETWORK) scripts/referee --patched-only --repeat 30 fork_safe_stdio

referee-reference: image-stock
	BUILD_NETWORK=$(BUILD_NETWORK) scripts/referee --stock-only --write-reference $(REFEREE_ARGS)

# Every tag `make image` made for the line (CORE=), to REGISTRY (host[:port][/path]) as REGISTRY/task-timeout-ee:<tag>.
REGISTRY ?=
push:
	scripts/push --engine $(CONTAINER_ENGINE) --registry "$(REGISTRY)" $(EE_TAGS)

bench: venv image image-stock target
	$(PY) -m bench $(BENCH_ARGS)

clean:
	-$(CONTAINER_ENGINE) ps -aq --filter label=task-timeout-ee.test | xargs -r $(CONTAINER_ENGINE) rm -f
	-$(CONTAINER_ENGINE) ps -aq --filter label=task-timeout-ee.referee | xargs -r $(CONTAINER_ENGINE) rm -f
	-$(CONTAINER_ENGINE) network ls -q --filter label=task-timeout-ee.referee | xargs -r $(CONTAINER_ENGINE) network rm
	-$(CONTAINER_ENGINE) image rm -f $(EE_TAGS) $(STOCK_IMAGE) $(TARGET_IMAGE) $(VENV_IMAGE) 2>/dev/null
	rm -rf .cache .pytest_cache .ruff_cache dist

clean-base:
	-$(CONTAINER_ENGINE) image rm -f $(LOCAL_BASE)
