# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOME_DIR ?= $(CURDIR)/.sciserve

.PHONY: run test lint install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[trees]'

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e tests/plugins/sciserve-echo-runtime

## Install, publish the example models into the embedded registry (SQLite +
## local artifact directory under ./.sciserve) and run them.
run: install
	$(BIN)/sciserve --home $(HOME_DIR) up

## Install the development extras and run the whole test suite.
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(HOME_DIR) build *.egg-info src/*.egg-info tests/plugins/*/*.egg-info
