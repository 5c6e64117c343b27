# Two commands on a fresh machine:  `make demo`  and  `make test`.  Both create and fill .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qcompile-installed

.PHONY: install demo test test-slow test-all lint clean

install: $(STAMP)

# torch is pinned here (its CPU wheel is on these machines' disk); pyproject declares a range.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,demo,plots,export]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m qcompile demo

# Two pytest-xdist workers, one test file each at a time (module fixtures stay shared): the
# cold suite is mostly Inductor's single-threaded code generation, so two processes keep both
# CI cores busy. `test` skips the tests marked `slow` (end-to-end runs and the costliest model
# compiles, tests/conftest.py); `test-slow` runs only those; CI runs both (`test-all`).
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

test: install
	$(PYTEST) -m "not slow"

test-slow: install
	$(PYTEST) -m slow

test-all: test test-slow

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
