# Multirate training: set-up, tests and experiments. `make help` lists the targets.
PYTHON_BOOT ?= python3
# The Python environment: .venv, built by `make setup`; or the active one, used as it is, when VENV
# is given empty (`make test VENV=`) or a conda environment is active (CONDA_PREFIX set; `make
# VENV=.venv` builds .venv even then).
VENV ?= $(if $(CONDA_PREFIX),,.venv)
BIN := $(if $(VENV),$(VENV)/bin/,)# where python and ruff are; empty: on PATH
PY := $(BIN)python
INSTALLED := $(if $(VENV),$(VENV)/.installed,)# setup's stamp; none in the active environment
PROFILE ?= quick# quick: offline, CPU, minutes; cpu: the paper's counts on generated data, ~1 h a figure; paper: real data, GPU
SEEDS ?= 0,1,2
# The patch partitions figure's runs, costliest first (two processes share them: the last run is short);
# the patch figure's are its registry entry's (experiments/core/registry.py)
PATCH_PARTITIONS := multirate_random_half,multirate_weights,multirate_bn,multirate_biases
DEVICE ?= cpu# for `make speedup`: cpu or cuda
SWEEP ?= experiments/sweeps/transfer_random.toml
SLURM ?=# options for experiments.core.slurm, e.g. SLURM="--gpus 1 --cpus 8 --time 08:00:00 --partition gpu --mem 32G"

.PHONY: help setup test test-all lint clean speedup
.PHONY: figures ablations report convergence sweep sweep-wandb test-slurm
.PHONY: patch-partitions reference-check readme-tables plan pretrain tune-transfer tune-regularization

help:  ## list the targets
	@grep -E '^[a-z%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

setup: $(INSTALLED)  ## create .venv with a working torch/torchvision pair and everything else

ifneq ($(VENV),)
$(INSTALLED): requirements.txt pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --editable .
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| cuda', torch.cuda.is_available())"
	touch $@
endif

test: setup  ## fast tests (slow end-to-end runs excluded)
	$(PY) -m pytest -m "not slow"

test-all: setup  ## every test, the slow end-to-end runs included
	$(PY) -m pytest

lint: setup  ## ruff
	$(BIN)ruff check .

pretrain: setup  ## pretrain the quick profile's shipped networks (experiments/pretrained/) again: bit-identical?; CHECK=1 changes nothing
	$(PY) -m experiments.datasets.pretrained_cache $(if $(CHECK),--check,)

tune-transfer: setup  ## the comparison protocol's trials for the transfer figure (docs/protocol.md), then the choice; PROFILE
tune-regularization: setup  ## the same for the regularisation figure; PROFILE
tune-transfer: TUNE := transfer_resnet transfer_distilbert
tune-regularization: TUNE := regularization_lm regularization_mlp
# Two processes share every trial (--skip-running), each starting on another figure part.
tune-transfer tune-regularization:
	for f in $(TUNE); do $(PY) -m experiments.protocol tune $$f --profile $(PROFILE) --skip-running || exit 1; done & a=$$!; \
	b=0; for f in $(word 2,$(TUNE)) $(word 1,$(TUNE)); do \
	  $(PY) -m experiments.protocol tune $$f --profile $(PROFILE) --skip-running || b=1; done; \
	wait $$a && test $$b -eq 0
	for f in $(TUNE); do $(PY) -m experiments.protocol select $$f --profile $(PROFILE) --results-dir results || exit 1; done

patch-partitions: setup  ## patch task: every candidate fast part (biases, weights, random half, BN) and its figure; PROFILE=cpu
	$(PY) -m experiments.patch --profile $(PROFILE) --seeds $(SEEDS) --method $(PATCH_PARTITIONS) --skip-running & a=$$!; \
	$(PY) -m experiments.patch --profile $(PROFILE) --seeds $(SEEDS) --method $(PATCH_PARTITIONS) --skip-running; b=$$?; \
	wait $$a && test $$b -eq 0
	$(PY) -m figures.patch --profile $(PROFILE)

# A figure of experiments/core/registry.py: its runs, then its figure, as the registry says (`python -m
# experiments.core.registry NAME --commands` prints them). Two 1-thread processes share the runs
# (--skip-running: each takes the next run nobody has started; they begin on different parts); a
# run's bits do not depend on which process trains it. The paper profile runs one at a time.
fig-%: setup  ## a registered figure (transfer, patch, regularization, convergence, ...): its runs, then the figure; PROFILE, SEEDS
	$(PY) -m experiments.core.registry $* --run --processes $(if $(filter paper,$(PROFILE)),1,2) --profile $(PROFILE) --seeds $(SEEDS)

figures: fig-transfer fig-patch fig-regularization convergence report  ## every paper figure, then the report (finished runs are skipped, so a rerun only redraws)

ablations: setup  ## ablation grids (k, drift, fast part, random subgroups) and their figures; PROFILE
	$(PY) -m experiments.ablations --profile $(PROFILE) --only k,fast & a=$$!; \
	$(PY) -m experiments.ablations --profile $(PROFILE) --only subgroups,drift,zeroing; b=$$?; \
	wait $$a && test $$b -eq 0
	$(PY) -m figures.ablations --profile $(PROFILE)

reference-check: setup  ## compare results/$(PROFILE) with experiments/reference/$(PROFILE).csv, or its file for this CPU vendor (bit-exact)
	$(PY) -m experiments.reporting.reference check --profile $(PROFILE)

readme-tables: setup  ## regenerate README.md's result tables from the committed references
	$(PY) -m experiments.reporting.readme_tables

STEPS ?= 3
PLAN_ARGS ?=# e.g. on a CPU: "amp=none --measure-batch 2"; on a GPU: "device=cuda"
plan: setup  ## cost plan of every run of PROFILE (s/step, peak memory, projected hours) on this machine; STEPS, PLAN_ARGS
	mkdir -p results/$(PROFILE)
	$(PY) -m benchmarks.plan all --profile $(PROFILE) steps=$(STEPS) $(PLAN_ARGS) --json results/$(PROFILE)/plan.json

report: setup  ## results/<profile>/REPORT.md (paper vs ours, every figure) for each profile with results
	$(PY) -m experiments.reporting.report

convergence: setup  ## Theorem B.4 check: measured (1/T) sum |grad f|^2 vs the bound, CSV + figure
	$(PY) -m experiments.convergence --profile $(PROFILE)
	$(PY) -m figures.convergence --profile $(PROFILE)

sweep: setup  ## run the hyperparameter sweep SWEEP=file.toml locally (finished runs skipped)
	$(PY) -m experiments.sweep $(SWEEP)

sweep-wandb: setup  ## write SWEEP's W&B sweep config to results/sweeps/<name>.yaml (then wandb sweep FILE)
	mkdir -p results/sweeps
	$(PY) -m experiments.sweep $(SWEEP) --wandb results/sweeps/$(notdir $(basename $(SWEEP))).yaml

speedup: setup  ## time train-all / multirate / head-only steps (DEVICE=cpu|cuda) -> results/speedup/
	mkdir -p results/speedup
	$(PY) -m benchmarks.speedup --model resnet34 --image-size 32 --batch-size 128 --k 5 --steps 10 --repeats 5 --threads 1 --device $(DEVICE) --json results/speedup/resnet34-$(DEVICE).json
	$(PY) -m benchmarks.speedup --model resnet50 --image-size 224 --batch-size 8 --k 5 --steps 5 --repeats 5 --threads 1 --device $(DEVICE) --json results/speedup/resnet50-$(DEVICE).json
	$(PY) -m benchmarks.speedup --model distilbert --seq-len 128 --batch-size 8 --k 5 --steps 5 --repeats 4 --threads 1 --device $(DEVICE) --json results/speedup/distilbert-$(DEVICE).json

slurm-%: setup  ## a registered figure's runs as a Slurm job array, then the figure; PROFILE SEEDS SLURM
	$(PY) -m experiments.core.slurm $* --profile $(PROFILE) --seeds $(SEEDS) $(SLURM)

test-slurm: setup  ## Slurm integration tests (start a cluster first, as root: .ci/slurm-up.sh)
	$(PY) -m pytest -m slurm -rs tests/test_slurm.py

clean:  ## remove the virtual environment and caches (results/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
