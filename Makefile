# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench mutate clean

# torch first, pinned: a newer or unpinned torch would be another multi-GB download; the
# README says which build the pin gets on which platform.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/python -m bpbeval.demo

test: $(STAMP)
	$(BIN)/ruff check bpbeval tests benchmarks examples
	$(BIN)/python -m pytest bpbeval tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_metric.py
	$(BIN)/python benchmarks/bench_tokenizer.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_compare.py
	$(BIN)/python benchmarks/gpu_check.py

# Mutation testing (mutmut) of the invariant-carrying modules, kept out of `make test`:
# long, and run at the lowest priority on one process. Scores and survivors: TESTING.md.
mutate: $(STAMP)
	$(BIN)/pip install -q mutmut==3.8.1
	$(BIN)/python tests/mutate.py

clean:
	rm -rf $(VENV) runs
