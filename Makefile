# Quick start: `make demo` (sets up .venv and runs the demo), `make test` (runs the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-clean test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/harness demo; code=$$?; [ $$code -le 2 ] || exit $$code

demo-clean: setup
	$(VENV)/bin/harness demo --clean

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) reports/*/ .pytest_cache
