# The same commands CI runs. `make demo` and `make test` do all of the set-up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test test-slow lint bench-ingest bench-pairs bench-dpo bench-serve bench-online-rl bench-console clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: any other request pulls gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/editloop demo

serve: $(STAMP)
	$(BIN)/editloop serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

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

bench-online-rl: $(STAMP)
	$(BIN)/python benchmarks/online_rl.py

clean:
	rm -rf $(VENV) .editloop .pytest_cache
