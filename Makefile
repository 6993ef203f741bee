# Two commands set up a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit integration bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## the relay on its embedded default (dev PKI, SQLite, https://127.0.0.1:8443)
	$(BIN)/linerelay serve

test: $(STAMP) lint typecheck  ## everything CI runs
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m 'not integration'

bench: $(STAMP)
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.idle_bridges

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
