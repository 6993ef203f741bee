# Two commands set up a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit integration bench clean image image-test state-disk

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

image: $(STAMP)  ## build/appliance/disk.raw + qemu.args (PROTOCOL.md §5; root, debootstrap; docs/appliance.md)
	$(BIN)/python -m image.build

image-test: image  ## boot the image under qemu: provisioning, conformance, a bridge, power cuts, an upgrade
	LINERELAY_IMAGE_TEST=1 $(BIN)/pytest -p no:cacheprovider tests/image -v -rP

state-disk: $(STAMP)  ## an empty state volume, build/appliance/state.raw, to attach as a second disk
	$(BIN)/python -m image.build state-disk build/appliance/state.raw

bench: $(STAMP)
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.idle_bridges

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
