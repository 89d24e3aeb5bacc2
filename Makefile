# blockfuzz bootstrap. The two everyday commands:
#
#   make test     venv + QEMU 7.2, 10.0 and 11.1, then the test suite
#   make fuzz     venv + the QEMUs, then fuzz the default (11.1) for $(FUZZ_TIME) s into findings/
#
# Everything lands in the checkout (.venv/, .qemu/, both git-ignored); nothing is installed on
# the system. Needs: python3.11 (or a python3 >= 3.11 with venv), and a Debian host with
# apt-get/dpkg to fetch QEMU (see fuzz/qemufetch.py).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# Rebuilt when the dependencies change; the stamp lives inside the venv, so `rm -rf .venv`
# resets it too.
VENV_STAMP := $(VENV)/.blockfuzz-installed
FUZZ_TIME ?= 600

.PHONY: venv qemu tools fuzz test check lint build-deps test-build

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 in PATH" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

# Idempotent: a fetched QEMU is only looked up (fast); a missing one is fetched (~10 s each).
qemu: venv
	$(VENV)/bin/blockfuzz qemu fetch 10.0
	$(VENV)/bin/blockfuzz qemu fetch 7.2
	$(VENV)/bin/blockfuzz qemu fetch 11.1
	$(VENV)/bin/blockfuzz qemu source 10.0   # QEMU's iotests and `check`, for exported iotests

# Graphviz for the finding reports' pictures and redis-server for the shared example database's
# tests, unpacked like QEMU into .qemu/tools/ (~10 s each once; then only looked up).
tools: venv
	$(VENV)/bin/python -m fuzz.toolfetch fetch graphviz
	$(VENV)/bin/python -m fuzz.toolfetch fetch redis

# `blockfuzz qemu build` (QEMU from source: ASan/UBSan, gcov, patches, your own checkout) needs
# a compiler and QEMU's build dependencies.  The one target that installs on the system: the
# Debian packages (apt-get, as root), then meson >= 1.5, pycotap and gcovr into the venv.
BUILD_DEBS := gcc pkg-config ninja-build flex bison device-tree-compiler libglib2.0-dev \
	libpixman-1-dev libfdt-dev
build-deps: venv
	apt-get install -y --no-install-recommends $(BUILD_DEBS)
	$(VENV)/bin/python -m pip install -q -e '.[test,build]'

# Builds QEMU 10.2.2 from Debian's source in its smallest configuration with ASan and UBSan
# (.qemu/10.2-min-asan, ~6 min on 2 cores; reused once built) and checks it end to end
# (tests/qemubuild/).  Not part of `make test`: the build alone takes longer than the whole suite.
test-build: build-deps qemu
	$(PYTEST) tests/qemubuild

fuzz: venv qemu tools
	$(VENV)/bin/blockfuzz run --time $(FUZZ_TIME) --out findings

# Both spread the tests over all cores (pytest-xdist, -n auto; worksteal: an idle worker takes
# queued tests from a busy one, so a few long campaign tests do not leave a core idle at the
# end).  Python's bytecode cache is kept even where the environment turns it off
# (PYTHONDONTWRITEBYTECODE): every xdist worker and every CLI subprocess a test starts would
# otherwise compile the whole tree again (~2 s each); __pycache__/ is git-ignored.
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/python -m pytest -q -n auto --dist worksteal

test: venv qemu tools lint
	$(PYTEST) --ignore=tests/qemubuild

# The tests that need no QEMU and no service (the model, trace and option checks, report
# rendering): seconds, on a checkout without .qemu/.  A test that needs QEMU is marked `qemu`
# (tests/conftest.py marks every user of a QEMU fixture).  The shrink-quality tests
# (tests/quality/, tens of seconds) run in `make test` only.
check: venv
	BLOCKFUZZ_QEMU_DIR=$(CURDIR)/.qemu-none $(PYTEST) -m "not qemu" -p no:cacheprovider --ignore=tests/quality --ignore=tests/qemubuild

# ruff (rule set in pyproject.toml), mypy on models/ (fully typed) and import-linter's layer
# contracts (ARCHITECTURE.md, "Layers of the model")
lint: venv
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
