# One entry point for people and CI. Every target sets itself up.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECKOV_VENV ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv prereqs prereqs-test prereqs-stack ports-free ohif test test-fast lint fmt clean up down status demo trace

# Checked before the virtual environment. On Debian/Ubuntu as root the check installs the missing
# system packages (infra/local/debian-packages); elsewhere, or with INSTALL_SYSTEM_PACKAGES=0, it
# stops at once with the one command to run.
prereqs-test:
	@bash infra/local/check_prereqs.sh test

prereqs-stack:
	@bash infra/local/check_prereqs.sh stack

# The port check names the process holding a busy port; it runs in the environment, so after it.
ports-free: $(STAMP)
	@bash infra/local/check_prereqs.sh ports

help:
	@echo "make demo   run the whole pipeline end to end on the local stack"
	@echo "make test   lint, static infra checks and every test (unit, emulators, end to end)"
	@echo "make up | down | status   manage the local stack"
	@echo "make trace ID=<id>   one upload's spans as a waterfall (.local/traces.jsonl)"

prereqs:
	@bash infra/local/check_prereqs.sh $(PREREQS)

venv: $(STAMP)

$(STAMP): requirements.txt functions/requirements.txt gpu_service/requirements.txt pyproject.toml django-dicom-results/pyproject.toml
	@bash infra/local/check_prereqs.sh python
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: prereqs-test $(STAMP) $(CHECKOV_STAMP) ohif
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest $(PYTEST_ARGS)

# The unit tests alone (no server started): a minute or so on 2 cores.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# OHIF, the viewer the local stack serves: the pinned @ohif/app's dist/ (npm, once) in .local/ohif/.
ohif: $(STAMP)
	$(PY) -m infra.local.ohif install

# Local stack (infra/local): ports LOCAL_*_PORT, state and logs under .local/.
up: prereqs-stack $(STAMP) ports-free ohif
	$(PY) -m infra.local.stack_cli up

down:
	@if [ -x $(PY) ]; then $(PY) -m infra.local.stack_cli down; else echo "nothing to stop (no $(VENV))"; fi

status:
	@if [ -x $(PY) ]; then $(PY) -m infra.local.stack_cli status; else echo "local stack: not running (no $(VENV))"; fi

# make demo KEEP=1 leaves the stack running afterwards (make down stops it).
demo: prereqs-stack $(STAMP) ports-free ohif
	$(PY) -m infra.local.demo $(if $(filter 1 yes true,$(KEEP)),--keep)

# make trace ID=<correlation id or trace id>: one upload's spans as a waterfall (default: the latest).
trace:
	$(PY) -m infra.local.traces $(ID)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .ruff_cache
