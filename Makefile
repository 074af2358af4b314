# roomlens: `make demo` runs the whole thing on the sample catalog, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ROOMLENS_SAMPLE_DIR ?= $(if $(wildcard ../shared/datasets/ikea/catalog.jsonl),../shared/datasets/ikea,)
export ROOMLENS_SAMPLE_DIR

.PHONY: demo test venv lint typecheck pytest bench clean help

help:
	@echo "make demo   - install, migrate, index the sample catalog and serve http://127.0.0.1:$${ROOMLENS_PORT:-8000}"
	@echo "make test   - install and run the whole test suite (lint, types, tests)"
	@echo "make bench  - run the benchmarks under bench/"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@if [ -z "$(ROOMLENS_SAMPLE_DIR)" ] || [ ! -f "$(ROOMLENS_SAMPLE_DIR)/catalog.jsonl" ]; then \
		echo "No sample catalog: set ROOMLENS_SAMPLE_DIR to a folder with catalog.jsonl"; \
		echo "(the IKEA set: github.com/IvonaTau/ikea, non-commercial use; see README)"; exit 2; fi
	$(BIN)/roomlens migrate
	$(BIN)/roomlens index "$(ROOMLENS_SAMPLE_DIR)/catalog.jsonl" || [ $$? -eq 3 ]
	$(BIN)/roomlens serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy search indexer merchant api roomlens

pytest: $(STAMP)
	bash scripts/install-browser.sh || echo "no chromium: the browser test will be skipped"
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/index_throughput.py
	$(BIN)/python bench/search_latency.py
	$(BIN)/python bench/ann_1m.py

clean:
	rm -rf $(VENV) data/index data/roomlens.db* .pytest_cache .mypy_cache .ruff_cache
