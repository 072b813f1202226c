# Multirate training: set-up, tests and experiments. `make help` lists the targets.
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help setup test test-all lint clean

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

clean:  ## remove the virtual environment and caches (results/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
