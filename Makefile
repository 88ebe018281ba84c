# One entry point for set-up, tests and demos. Every target installs what it needs first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# CPU machines get the pinned CPU torch; set CONSTRAINTS= (empty) on a CUDA machine to keep its torch.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
CONSTRAINTS ?= $(if $(HAS_CUDA),,constraints/cpu.txt)
# Extra pip flags, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" off this workplace.
PIP_ARGS ?=
EXTRAS  ?= dev

.PHONY: install demo test lint format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-$(EXTRAS): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(if $(CONSTRAINTS),$(BIN)/pip install -q $(PIP_ARGS) -c $(CONSTRAINTS) torch,)
	$(BIN)/pip install -q $(PIP_ARGS) $(if $(CONSTRAINTS),-c $(CONSTRAINTS),) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

# one test process per core, at most 8 (pytest-xdist), each test file on one of them (its module fixtures built once):
# 8.6 min where one process took 13 on 2 cores. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 8 --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python scripts/bench_scoring.py
	$(BIN)/python scripts/bench_train.py

demo: install
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) runs .pytest_cache
