# MedicalService — the front door. Plain `make` prints the menu.
#
# Every target works from a fresh clone on Debian 12: system packages come from apt
# (through sudo when not root), Python packages into ./.venv from pyproject.toml.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PG_BIN := /usr/lib/postgresql/15/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
# Set to 1 when the caller ran `apt-get update` already (.ci/run does).
SKIP_APT_UPDATE ?=

SUB ?= admin
ROLE ?= admin

.PHONY: help venv deps run test token bench lint openapi

help:
	@echo "MedicalService — make targets:"
	@echo "  make run      start the whole stack locally (nginx on :8080 and :8443); Ctrl-C stops it"
	@echo "  make test     run the test suite (unit and end-to-end, on a throwaway stack)"
	@echo "  make bench    run the load benchmarks (results in bench/results/); BENCH=overload: only the overload table"
	@echo "  make token SUB=alice ROLE=clinician   print a bearer token (ROLE may be a,b)"
	@echo "  make lint     ruff check and mypy (strict on shared/ and the services)"
	@echo "  make openapi  regenerate gateway/openapi.json from the services' models (committed)"
	@echo "  make fuzz     fuzz the whole API against its OpenAPI document (schemathesis, 200 examples/operation)"
	@echo "  make deps     install the missing system packages (nginx, redis, PostgreSQL 15, openssl, wrk, prometheus)"
	@echo "  make venv     create .venv and install the project into it"

venv: $(STAMP)

# Re-installs only when pyproject.toml changes. A python3 without the venv module (Debian
# splits it into python3-venv) leaves a broken .venv behind: remove it, install, retry.
$(STAMP): pyproject.toml
	@echo "==> venv: creating $(VENV) and installing the project (pip install -e '.[dev]')"  >&2
	@if [ ! -x $(VENV)/bin/pip ]; then \
	  rm -rf $(VENV); \
	  if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	    echo "==> venv: $(PYTHON) -m venv failed; installing python3-venv"; \
	    rm -rf $(VENV); \
	    $(APT) install -y python3-venv || { $(APT) update && $(APT) install -y python3-venv; }; \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@touch $@

deps:
	@echo "==> deps: checking system packages"
	@missing=""; \
	[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing="$$missing nginx"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	[ -x $(PG_BIN)/postgres ] || missing="$$missing postgresql-15"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing="$$missing prometheus"; \
	if [ -z "$$missing" ]; then echo "==> deps: all present"; exit 0; fi; \
	echo "==> deps: installing$$missing"; \
	if [ -z "$(SKIP_APT_UPDATE)" ]; then $(APT) update; fi; \
	$(APT) install -y --no-install-recommends $$missing

run: deps venv
	@echo "==> run: starting the stack (data and logs in ./var); Ctrl-C stops it"
	$(PY) -m deploy.localstack run

test: deps venv
	@echo "==> test: pytest (tests/unit, tests/e2e)"
	$(PY) -m pytest -q

# Only the token goes to stdout, so that TOKEN=$$(make -s token ...) works.
token: venv
	@echo "==> token: sub=$(SUB) roles=$(ROLE)" >&2
	@$(PY) -m deploy.localstack token --sub "$(SUB)" --role "$(ROLE)"

# BENCH=overload runs only the overload table, BENCH=main everything else.
BENCH ?=
bench: deps venv
	@echo "==> bench: load benchmarks"
	$(PY) -m bench $(if $(BENCH),--only $(BENCH))
	@if [ -z "$(BENCH)" ]; then \
	  echo "==> bench: a bucket move under the 90/10 mix (bench/move.py)"; \
	  $(PY) -m bench.move; \
	fi

openapi: venv
	@echo "==> openapi: writing the document the gateway serves"
	$(PY) -m apidoc

lint: venv
	@echo "==> lint: ruff check (pyflakes, pycodestyle with the 100-column line, sorted imports)"
	$(VENV)/bin/ruff check .
	@echo "==> lint: mypy (strict on shared/ and the services)"
	$(VENV)/bin/mypy

# The bounded pass of the same test runs in `make test`; this one goes deep. FUZZ_SEED=n
# replays a run; the stack is a throwaway one, as in `make test`.
FUZZ_EXAMPLES ?= 200
FUZZ_SEED ?= 20261125
.PHONY: fuzz
fuzz: deps venv
	@echo "==> fuzz: schemathesis, $(FUZZ_EXAMPLES) examples per operation, seed $(FUZZ_SEED)"
	MEDSVC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MEDSVC_FUZZ_SEED=$(FUZZ_SEED) MEDSVC_FUZZ_TIMEOUT=3600 \
	  $(PY) -m pytest -q -s tests/e2e/test_fuzz.py
