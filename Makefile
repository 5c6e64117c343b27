# Two commands on a fresh machine:  `make demo`  and  `make test`.  Both create and fill .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qcompile-installed

.PHONY: install demo test test-fast lint clean

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
# CI cores busy.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
