# toolsim: one entry point for people and CI.
#   make run    install, fetch the model, start the ToolActor on 127.0.0.1:8001
#   make test   install everything the tests need, run the checks and the tests
#   make check  ruff (lint + format) and mypy --strict
#   make bench  the benchmarks in bench/ (figures printed, last line = headline)
#   make demo   traces -> SFT -> GRPO -> eval on the packaged model (trainer/configs/cpu-demo.yaml)
#   make demo-controls  then the shuffled-reward control and the live-search GRPO run, evaluated

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.toolsim-installed

.PHONY: run test check lint typecheck install model system-deps vllm bench demo demo-controls clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,train,dev]'
	@touch $(STAMP)

install: $(STAMP)

model: install
	$(BIN)/toolsim model fetch

run: model
	@bash scripts/run.sh

system-deps:
	@bash scripts/system-deps.sh

vllm:
	@bash scripts/install-vllm.sh

lint: install
	$(BIN)/ruff check src services trainer tests bench
	$(BIN)/ruff format --check src services trainer tests bench

typecheck: install
	$(BIN)/mypy -p toolsim -p toolsim_toolactor -p toolsim_toolmaker -p toolsim_trainer

check: lint typecheck

test: system-deps install model vllm check
	$(BIN)/pytest -m 'not gpu'

bench: model system-deps
	$(BIN)/python bench/cache_hit.py
	$(BIN)/python bench/miss_path.py --backend embedded

demo: model system-deps
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/toolsim pipeline --config trainer/configs/cpu-demo.yaml

# resumes make demo's folder (running it first if need be): only the two new runs train and evaluate
demo-controls: model system-deps
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/toolsim pipeline --config trainer/configs/cpu-demo.yaml \
	    --set 'runs=[base, sft, grpo, control, grpo-live]'

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
