# Multirate training: set-up, tests and experiments. `make help` lists the targets.
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= quick# quick: offline, CPU, minutes; paper: real data and weights, full scale
SEEDS ?= 0,1,2
DEVICE ?= cpu# for `make speedup`: cpu or cuda
SWEEP ?= experiments/sweeps/transfer_random.toml
SLURM ?=# options for experiments.slurm, e.g. SLURM="--gpus 1 --cpus 8 --time 08:00:00 --partition gpu --mem 32G"

ifeq ($(PROFILE),paper)
TRANSFER_RESNETS := resnet50 resnet34
REG_ENV :=
ABL_ENV :=
else
TRANSFER_RESNETS := small_resnet
REG_ENV := OMP_NUM_THREADS=1# quick profile: two processes side by side, one core each
ABL_ENV := OMP_NUM_THREADS=1
endif

.PHONY: help setup test test-all lint clean fig-transfer fig-patch fig-regularization speedup
.PHONY: figures ablations report convergence sweep sweep-wandb slurm-transfer slurm-patch slurm-regularization test-slurm

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv with a working torch/torchvision pair and everything else

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --editable .
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| cuda', torch.cuda.is_available())"
	touch $@

test: setup  ## fast tests (slow end-to-end runs excluded)
	$(PY) -m pytest -m "not slow"

test-all: setup  ## every test, the slow end-to-end runs included
	$(PY) -m pytest

lint: setup  ## ruff
	$(VENV)/bin/ruff check .

fig-transfer: setup  ## transfer learning (ResNets, DistilBERT) and its figure; PROFILE=quick|paper SEEDS=0,1,2
	for model in $(TRANSFER_RESNETS); do $(PY) -m experiments.transfer --profile $(PROFILE) --seeds $(SEEDS) model=$$model || exit 1; done
	$(PY) -m experiments.transfer_text --profile $(PROFILE) --seeds $(SEEDS)
	$(PY) -m figures.transfer --profile $(PROFILE)

fig-patch: setup  ## patch-augmented data (WRN-16: small h, large h, multirate) and its figure; PROFILE, SEEDS
	$(REG_ENV) $(PY) -m experiments.patch --profile $(PROFILE) --seeds $(SEEDS) --method small_lr,multirate & a=$$!; \
	$(REG_ENV) $(PY) -m experiments.patch --profile $(PROFILE) --seeds $(SEEDS) --method large_lr,multirate_early; b=$$?; \
	wait $$a && test $$b -eq 0
	$(PY) -m figures.patch --profile $(PROFILE)

fig-regularization: setup  ## random subgroups vs SGD and dropout (transformer LM, perceptron) and its figure
	$(REG_ENV) $(PY) -m experiments.regularization_lm --profile $(PROFILE) --seeds $(SEEDS) & lm=$$!; \
	$(REG_ENV) $(PY) -m experiments.regularization_mlp --profile $(PROFILE) --seeds $(SEEDS); mlp=$$?; \
	wait $$lm && test $$mlp -eq 0
	$(PY) -m figures.regularization --profile $(PROFILE)

figures: fig-transfer fig-patch fig-regularization convergence report  ## every paper figure, then the report (finished runs are skipped, so a rerun only redraws)

ablations: setup  ## ablation grids (k, drift, fast part, random subgroups) and their figures; PROFILE
	$(ABL_ENV) $(PY) -m experiments.ablations --profile $(PROFILE) --only k,fast & a=$$!; \
	$(ABL_ENV) $(PY) -m experiments.ablations --profile $(PROFILE) --only subgroups,drift; b=$$?; \
	wait $$a && test $$b -eq 0
	$(PY) -m figures.ablations --profile $(PROFILE)

report: setup  ## results/<profile>/REPORT.md (paper vs ours, every figure) for each profile with results
	$(PY) -m experiments.report

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
	$(PY) -m experiments.speedup --model resnet34 --image-size 32 --batch-size 128 --k 5 --steps 10 --repeats 5 --threads 1 --device $(DEVICE) --json results/speedup/resnet34-$(DEVICE).json
	$(PY) -m experiments.speedup --model resnet50 --image-size 224 --batch-size 8 --k 5 --steps 5 --repeats 5 --threads 1 --device $(DEVICE) --json results/speedup/resnet50-$(DEVICE).json
	$(PY) -m experiments.speedup --model distilbert --seq-len 128 --batch-size 8 --k 5 --steps 5 --repeats 4 --threads 1 --device $(DEVICE) --json results/speedup/distilbert-$(DEVICE).json

slurm-transfer: setup  ## transfer runs as a Slurm job array, then the figure; PROFILE SEEDS SLURM
	$(PY) -m experiments.slurm transfer --profile $(PROFILE) --seeds $(SEEDS) $(SLURM)

slurm-patch: setup  ## patch runs as a Slurm job array, then the figure
	$(PY) -m experiments.slurm patch --profile $(PROFILE) --seeds $(SEEDS) $(SLURM)

slurm-regularization: setup  ## regularisation runs (MLP + LM) as a Slurm job array, then the figure
	$(PY) -m experiments.slurm regularization --profile $(PROFILE) --seeds $(SEEDS) $(SLURM)

test-slurm: setup  ## Slurm integration tests (start a cluster first, as root: .ci/slurm-up.sh)
	$(PY) -m pytest -m slurm -rs tests/test_slurm.py

clean:  ## remove the virtual environment and caches (results/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
