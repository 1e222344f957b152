# Inbound — the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GEN := build/gen
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: all install gen chromium run run-single test test-fast slo lint bench clean deploy-check

all: gen

# The venv carries every package the project uses; the .pth file puts the
# project's import roots (libs/, cli/, services/, generated code) on its path.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	site="$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" && \
	  printf '%s\n' "$(CURDIR)/libs" "$(CURDIR)/cli" "$(CURDIR)" "$(CURDIR)/$(GEN)" > "$$site/inbound-dev.pth"
	touch $@

install: $(VENV)/.installed

# Generated protobuf/gRPC code: built here, never edited, never committed.
$(GEN)/.stamp: $(PROTOS) $(VENV)/.installed
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -I proto --python_out=$(GEN) --grpc_python_out=$(GEN) --pyi_out=$(GEN) $(PROTOS)
	touch $@

gen: $(GEN)/.stamp

# Debian's Chromium for the browser tests (tests/browser, tests/conformance): Playwright
# drives /usr/bin/chromium; it never downloads a browser of its own. Installed when
# missing and we are root; otherwise (or when apt fails) say so and go on: the browser
# tests then fail, saying why, so a machine without it never passes them by skipping.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the browser tests (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive APT="apt-get -q -y -o DPkg::Lock::Timeout=300"; \
	    $$APT install chromium >/dev/null 2>&1 || \
	      { $$APT update >/dev/null && $$APT install chromium >/dev/null; } || true; \
	  fi; \
	  test -x $(CHROMIUM) || echo "WARNING: no $(CHROMIUM) (install Debian's chromium as root): the browser tests will fail" >&2; }

run: gen
	$(PY) -m services.devstack run

# The same system with every service in one process (small installs; what the gRPC hops cost).
run-single: gen
	$(PY) -m services.devstack run --single

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check libs services cli bench tools tests

test: gen lint chromium
	$(PY) -m pytest -q tests

test-fast: gen
	$(PY) -m pytest -q tests/unit tests/contract

# Timing objectives (propagation within a second and the like), with generous limits;
# kept out of `make test` so a busy machine never turns CI red.
slo: gen
	$(PY) -m pytest -q -m slo tests

bench: gen
	$(PY) -m bench

deploy-check: gen
	$(PY) -m pytest -q tests/contract/test_deploy_manifests.py

clean:
	rm -rf $(GEN) .run .pytest_cache
