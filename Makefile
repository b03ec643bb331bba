# vda: Video Depth Anything over long videos on many GPUs.  `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV       ?= .venv
PY         ?= $(VENV)/bin/python
VDA        ?= $(VENV)/bin/vda
PYTHON     ?= python3
# torch for the host venv. Here torch==2.13.0 resolves to the CPU build; elsewhere, on a machine
# without an NVIDIA GPU, add TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

# make depth VIDEO=path/to/video.mp4 GPUS=5 [MODEL=vits FORMAT=png16 OUT=out/<video>]
# VIDEO may name several inputs (VIDEO="a.mp4 b.mkv frames/") or a folder of videos; each gets OUT/<name>.
VIDEO      ?=
GPUS       ?=
DEVICES    ?=
MODEL      ?= vits
FORMAT     ?= png16
OUT        ?= $(if $(word 2,$(VIDEO)),out,out/$(basename $(notdir $(VIDEO))))
BACKEND    ?= docker
DEPTH_ARGS ?=
PYTEST_ARGS ?=

include docker/docker.mk

.PHONY: help setup test test-fast lint depth smoke bench bench-gpu gpu-check clean

help: ## show this help
	@echo "usage: make <target> [VAR=value ...]"
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.stamp: pyproject.toml requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@$(PY) -c 'import shutil, torch; gpu = shutil.which("nvidia-smi"); cuda = torch.version.cuda; \
	print(f"torch {torch.__version__}", "(CUDA build)" if cuda else "(CPU build)"); \
	cuda and not gpu and print("warning: CUDA torch on a machine without nvidia-smi; see TORCH_PIP_ARGS in the Makefile")'
	touch $@

setup: $(VENV)/.stamp ## build .venv from nothing (torch $(TORCH_SPEC), deps, vda in editable mode)

lint: setup ## ruff lint and format check
	$(VENV)/bin/ruff check vda tests bench
	$(VENV)/bin/ruff format --check vda tests bench

test: setup ## run the tests in a copy of the repo alone; builds the CPU image first (CI requires Docker)
	@if [ "$$CI" = "true" ]; then \
	    $(MAKE) --no-print-directory image-cpu || exit 1; \
	elif bash docker/engine.sh >/dev/null 2>&1; then \
	    $(MAKE) --no-print-directory image-cpu || exit 1; \
	else echo "no Docker engine: Docker tests will be skipped"; fi
	@# the suite runs in a copy with nothing beside it, as a user's clone; tests marked `shared` then run in place
	export VDA_REQUIRE_DOCKER=$${VDA_REQUIRE_DOCKER:-$$([ "$$CI" = "true" ] && echo 1)}; \
	$(PY) tests/alone.py $(PYTEST_ARGS) && \
	if [ -d ../shared ]; then $(PY) -m pytest -m shared $(PYTEST_ARGS); fi

test-fast: setup ## the edit loop: the suite in place without Docker, slow or `shared` tests
	$(PY) -m pytest -m "not docker and not slow and not shared" $(PYTEST_ARGS)

depth: setup ## depth for VIDEO on GPUS GPUs, one container each: make depth VIDEO=x.mp4 GPUS=5 [MODEL= FORMAT= OUT=]
	@test -n "$(VIDEO)" || { echo "make depth: set VIDEO=path/to/video.mp4"; exit 2; }
	@test -n "$(GPUS)$(DEVICES)" || { echo "make depth: set GPUS=N (or DEVICES=cpu,cpu for CPU containers)"; exit 2; }
	@if [ "$(BACKEND)" = docker ]; then \
	    img=$$([ -n "$(GPUS)" ] && echo $(VDA_IMAGE) || echo $(VDA_CPU_IMAGE)); \
	    docker image inspect $$img >/dev/null 2>&1 || $(MAKE) --no-print-directory $$([ -n "$(GPUS)" ] && echo image || echo image-cpu); \
	fi
	$(VDA) depth $(foreach v,$(VIDEO),"$(v)") -o "$(OUT)" --backend $(BACKEND) --encoder $(MODEL) --format $(FORMAT) \
	    $(if $(GPUS),--gpus $(GPUS),--devices $(DEVICES)) $(DEPTH_ARGS)

smoke: setup image-cpu ## end to end in two CPU containers on a real video with a synthetic checkpoint
	$(PY) -m pytest -q tests/test_docker_backend.py

bench: setup ## print throughput and memory figures; RECORD=1 appends them to bench/RESULTS.md
	cd bench && ../$(PY) bench_stages.py $(if $(RECORD),--record)
	cd bench && ../$(PY) bench_memory.py $(if $(RECORD),--record)
	cd bench && ../$(PY) bench_queue.py $(if $(RECORD),--record)
	cd bench && ../$(PY) bench_infer.py --encoder vits --input-size 518 --frames 32

bench-gpu: setup ## on a GPU host: frames/s and VRAM per encoder, precision and mode; RECORD=1 appends them
	cd bench && ../$(PY) bench_gpu.py $(if $(RECORD),--record)

gpu-check: setup ## first run on a GPU host: parity, vda depth vs single pass, speed, VRAM; RECORD=1 appends
	cd bench && ../$(PY) gpu_check.py $(if $(RECORD),--record)

clean: ## remove caches and local outputs (keeps .venv and images)
	rm -rf .pytest_cache .ruff_cache out runs
