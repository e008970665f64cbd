# Quick start: `make demo` (sets up .venv and runs the demo), `make test` (runs every test),
# `make test-fast` (the unit tier, under a minute).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup stacks demo demo-clean test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

setup: $(VENV)/.installed

# Real serving stacks for the tests (Seldon MLServer, KServe). A virtual environment of its own: MLServer pins
# its own dependencies (FastAPI, pydantic, ...) and must not move harness's. uvloop is pinned because
# newer wheels break `mlserver start`. Tests that need it skip with a reason when it is absent.
STACKS_VENV ?= .venv-stacks
$(STACKS_VENV)/.installed:
	$(PYTHON) -m venv $(STACKS_VENV)
	$(STACKS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(STACKS_VENV)/bin/python -m pip install --quiet "mlserver==1.7.1" "mlserver-sklearn==1.7.1" scikit-learn "uvloop==0.21.0"
	touch $@

# KServe's Python ModelServer (REST and gRPC), in a venv of its own too: kserve pins fastapi, protobuf and
# grpcio versions of its own. About 75 s to install on the 2-core machine (2026-12-04).
KSERVE_VENV ?= .venv-kserve
$(KSERVE_VENV)/.installed:
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(KSERVE_VENV)/bin/python -m pip install --quiet "kserve==0.21.0"
	touch $@

stacks: $(STACKS_VENV)/.installed $(KSERVE_VENV)/.installed

demo: setup
	$(VENV)/bin/harness demo; code=$$?; [ $$code -le 2 ] || exit $$code

demo-clean: setup
	$(VENV)/bin/harness demo --clean

test: setup
	$(PY) -m pytest -q --durations=25

# The unit tier: no server, no subprocess, no replay, no browser; under a minute.
test-fast: setup
	$(PY) -m pytest -q -m "not integration" --durations=10

# ruff and mypy as configured in pyproject.toml (mypy: strict modules, default, and the baseline)
lint: setup
	$(VENV)/bin/ruff check harness tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(STACKS_VENV) $(KSERVE_VENV) reports/*/ .pytest_cache
