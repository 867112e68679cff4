# The same commands CI runs. `make demo` and `make test` do all of the set-up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_INDEX_URL ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test test-fast test-ts test-slow lint bench-ingest bench-pairs bench-dpo bench-serve bench-gateway bench-online-rl bench-deletion bench-console clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned. From PyPI on Linux that is the CUDA build (gigabytes); for a CPU-only machine pass
	# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install --quiet -e '.[train,dev]' -e clients/python
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/editloop demo

serve: $(STAMP)
	$(BIN)/editloop serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The TypeScript client's tests start `editloop serve` with this repository's .venv.
test-ts: $(STAMP)
	cd clients/typescript && npm ci --no-audit --no-fund && EDITLOOP_PYTHON=$(abspath $(BIN))/python npm test

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not ml"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench-ingest: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

bench-pairs: $(STAMP)
	$(BIN)/python benchmarks/pairs.py

bench-console: $(STAMP)
	$(BIN)/python benchmarks/console.py

bench-dpo: $(STAMP)
	$(BIN)/python benchmarks/dpo.py

bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve.py

bench-gateway: $(STAMP)
	$(BIN)/python benchmarks/gateway.py

bench-online-rl: $(STAMP)
	$(BIN)/python benchmarks/online_rl.py

bench-deletion: $(STAMP)
	$(BIN)/python benchmarks/deletion.py

clean:
	rm -rf $(VENV) .editloop .pytest_cache
