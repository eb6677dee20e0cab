# Remora: `make demo` and `make test` install what they need (as root on Debian/Ubuntu), then run.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
# The proxy runs as uid 1337, so the virtualenv must come from a Python every uid can execute.
PYTHON  ?= $(shell scripts/find-python)
APT_PKGS := iptables iproute2 curl procps psmisc util-linux python3-venv python3-dev gcc libnghttp2-dev \
            wrk haproxy redis-server redis-tools nghttp2-client nghttp2-server socat nginx-light \
            dnsutils chromium prometheus strace
PYTEST_ARGS ?=

# Where other uids cannot read this checkout, make mirrors it to a world-readable directory
# and runs itself there (see scripts/readable-tree).
TREE    := $(shell scripts/readable-tree)
ORIGIN  ?= $(CURDIR)

.PHONY: help deps venv test lint demo bench bench-full clean

help:
	@echo "make demo   - start the mesh on this host, drive traffic through injected sidecars, show results"
	@echo "              (KEEP=1: leave it running; UPGRADE=1: then roll out a next proxy version)"
	@echo "make test   - install, lint (ruff, mypy) and run every test"
	@echo "make bench  - run the benchmarks in perf/ (issue 15's set, under 6 minutes)"
	@echo "make bench-full - the same plus mesh-telemetry and control-plane scale"
	@echo "make clean  - remove the virtualenv"

ifneq ($(TREE),)
venv test lint demo bench bench-full:
	@echo ">> uid 1337 (the proxy) cannot read $(CURDIR): running 'make $@' in a world-readable mirror, $(TREE)"
	@scripts/sync-tree $(CURDIR) $(TREE)
	@$(MAKE) --no-print-directory -C $(TREE) $@ ORIGIN=$(CURDIR)
else
deps:
	@scripts/install-system-deps $(APT_PKGS)

venv: deps
	@test -n "$(PYTHON)" || { echo "no usable Python found (see scripts/find-python)"; exit 1; }
	@scripts/make-venv $(PYTHON) $(VENV)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/remoractl demo $(if $(KEEP),--keep,) $(if $(UPGRADE),--upgrade,)

bench: venv
	$(VENV)/bin/python perf/run --out $(ORIGIN)/perf/results

bench-full: venv
	$(VENV)/bin/python perf/run --full --out $(ORIGIN)/perf/results

endif

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
