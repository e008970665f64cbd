# Quick start: `make demo` (sets up .venv and runs the demo), `make test` (runs every test),
# `make test-fast` (the unit tier, under a minute).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-clean test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

setup: $(VENV)/.installed

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
	rm -rf $(VENV) reports/*/ .pytest_cache
