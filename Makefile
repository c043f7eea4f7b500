# `make demo` and `make test` set up .venv on first use (pinned requirements,
# torch==2.13.0) and then run the demo or the test suite. The demo installs
# only what it needs (requirements-demo.txt); the tests install everything
# (requirements.txt, a superset with the same pins), after which the demo's
# set counts as installed too. Either order works.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
PIP := $(BIN)/python -m pip install --quiet

.PHONY: demo test bench setup setup-demo clean

setup: $(STAMP)

setup-demo: $(DEMO_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(PIP) -r requirements.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): requirements-demo.txt pyproject.toml | $(BIN)/python
	$(PIP) -r requirements-demo.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/colu demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/colu bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
