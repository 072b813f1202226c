# Multirate training: set-up, tests and experiments. `make help` lists the targets.
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= quick# quick: offline, CPU, minutes; paper: real data and weights, full scale
SEEDS ?= 0,1,2
DEVICE ?= cpu# for `make speedup`: cpu or cuda

ifeq ($(PROFILE),paper)
TRANSFER_RESNETS := resnet50 resnet34
else
TRANSFER_RESNETS := small_resnet
endif

.PHONY: help setup test test-all lint clean fig-transfer speedup

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

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

speedup: setup  ## time train-all / multirate / head-only steps (DEVICE=cpu|cuda) -> results/speedup/
	mkdir -p results/speedup
	$(PY) -m experiments.speedup --model resnet34 --image-size 32 --batch-size 128 --k 5 --steps 10 --repeats 5 --threads 1 --device $(DEVICE) --json results/speedup/resnet34-$(DEVICE).json
	$(PY) -m experiments.speedup --model resnet50 --image-size 224 --batch-size 8 --k 5 --steps 5 --repeats 5 --threads 1 --device $(DEVICE) --json results/speedup/resnet50-$(DEVICE).json
	$(PY) -m experiments.speedup --model distilbert --seq-len 128 --batch-size 8 --k 5 --steps 5 --repeats 4 --threads 1 --device $(DEVICE) --json results/speedup/distilbert-$(DEVICE).json

clean:  ## remove the virtual environment and caches (results/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
