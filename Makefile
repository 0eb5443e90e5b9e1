# The two quickstart commands. Each creates .venv and installs what it needs, offline apart from PyPI.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install clean bench

# The package and its CPU dependencies (torch pinned to its CPU build): what the demo needs.
$(STAMP): pyproject.toml constraints-cpu.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e .
	touch $(STAMP)

# Plus the test extra (pytest; deepspeed; llama-cpp-python, built from source once, ~7 min on 2 cores).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e ".[test]"
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/distill demo --out runs/demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
