# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOME_DIR ?= $(CURDIR)/.sciserve
# Options for `sciserve up`, e.g. make run ARGS="--http-port 0 --grpc-port 0"
ARGS ?=
# Test processes (pytest-xdist): most tests wait on servers and brokers, so
# two share a 2-core machine well.  TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

.PHONY: run test lint install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The installs are editable, so code changes need none: reinstall only when
# the dependencies (pyproject.toml) change.  The stamps record the last one.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[trees]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml tests/plugins/sciserve-echo-runtime/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e tests/plugins/sciserve-echo-runtime
	touch $@

install: $(VENV)/.installed-run

install-dev: $(VENV)/.installed-dev

## Install, publish the example models into the embedded registry (SQLite +
## local artifact directory under ./.sciserve) and run them.
run: install
	$(BIN)/sciserve --home $(HOME_DIR) up $(ARGS)

## Install the development extras and run the whole test suite.
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest --numprocesses $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) $(HOME_DIR) build *.egg-info src/*.egg-info tests/plugins/*/*.egg-info
