# The README's commands.  `make run` and `make test` each set everything up first.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
DHM    := $(VENV)/bin/dhm

.PHONY: venv help setup setup-dev chromium run test test-fast bench lab clean
.DEFAULT_GOAL := venv

venv: $(VENV)/bin/python  ## (default) only create the empty .venv; installs nothing
	@echo "$(VENV) is there; 'make help' lists the targets"

help:  ## list the targets
	@echo "make <target>   (a bare 'make' only creates $(VENV))"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# base + notebook stack; the pinned CPU torch is installed first so nothing larger is pulled in
$(VENV)/.stamp-lab: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[lab]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dhmlib)" >/dev/null
	touch $@

# the photo extra (MediaPipe) too, so that the photo tests run: it holds numpy < 2 for the whole dev venv
$(VENV)/.stamp-dev: $(VENV)/.stamp-lab
	$(PIP) install -q -e '.[dev,lab,photo]'
	touch $@

setup: $(VENV)/.stamp-lab  ## install dhmlib and the notebook stack into .venv
setup-dev: $(VENV)/.stamp-dev chromium  ## setup + test extras + the photo extra (MediaPipe) + Chromium for the browser test

# Debian's Chromium for the browser tests (Playwright cannot download browsers here)
chromium:  ## Debian's Chromium for the browser test (if missing)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install -y chromium' (browser tests need it)"; fi; }

# main job: the notebook series on the synthetic default (01 writes the virtual capture into data/ when absent)
run: setup  ## run notebooks/ in order (~20 min on 2 cores: a 3.3 GB capture into data/, 02 trains 150 s, 03 nine variants in ~12 min)
	$(DHM) notebooks

test: setup-dev  ## run all tests (slow and browser ones included)
	$(PY) -m pytest -ra

test-fast: setup-dev  ## tests not marked slow
	$(PY) -m pytest -ra -m "not slow"

bench: setup-dev  ## benchmarks against named peers (see bench/README.md)
	@[ "$$(id -u)" != 0 ] || dpkg -s libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null; }
	$(PIP) install -q -e '.[dev,lab,bench]'
	$(PY) bench/decode.py
	$(PY) bench/render.py
	$(PY) bench/loader.py
	$(PY) bench/posing_latency.py
	$(PY) bench/train_step.py
	$(PY) bench/photo_fit.py
	@if $(PY) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then $(PY) bench/cuda_paths.py; \
	  else echo "bench/cuda_paths.py: skipped (no CUDA device)"; fi

# JupyterLab refuses to run as root without --allow-root (containers run as root); LAB_ARGS: more options
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=
lab: setup  ## JupyterLab on notebooks/ (as root too); no "Build Recommended" dialog after make bench
	@$(PY) -c 'from dhmlib.lab.series import quiet_lab_build_check as q; q("$(VENV)/etc/jupyter")'
	$(VENV)/bin/jupyter lab $(LAB_ROOT) $(LAB_ARGS) notebooks

clean:  ## remove .venv and build files (data/ and output/ stay)
	rm -rf $(VENV) build *.egg-info
