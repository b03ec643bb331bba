# Docker targets; included by the main Makefile (`include docker/docker.mk`).
# Everything here can be overridden on the command line, e.g. `make image CHECKPOINT=vitb`.

PY            ?= .venv/bin/python
DOCKER        ?= docker
TORCH_SPEC    ?= torch==2.13.0
# Build requirements for `pip install --no-deps --no-build-isolation .` inside the image.
BUILD_SPEC    ?= setuptools>=70.1
WHEELHOUSE    ?= wheelhouse
# Target of the wheelhouse: CPython 3.11 (Debian bookworm / python:3.11-slim) on x86_64 glibc.
WHEEL_PYTHON  ?= 3.11
WHEEL_PLATFORMS ?= manylinux_2_36_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
                   manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
                   manylinux2010_x86_64 manylinux1_x86_64 linux_x86_64
VDA_IMAGE     ?= vda:latest
VDA_CPU_IMAGE ?= vda:cpu
VDA_BASE_IMAGE ?= vda-base:bookworm
GPU_BASE_IMAGE ?= python:3.11-slim-bookworm
# Checkpoint baked into the GPU image: vits (Apache-2.0), vitb / vitl (CC-BY-NC-4.0),
# metric-vits / metric-vitb / metric-vitl, or none (mount weights at /models at run time).
CHECKPOINT    ?= vits
# The GPU image normally takes CUDA torch from PyPI, not the (CPU) wheelhouse: auto|only|off.
# Its build fails when torch turns out to be a CPU-only build (TORCH_BUILD=cuda in docker/Dockerfile).
IMAGE_WHEELHOUSE ?= off
# CUDA wheel index of the GPU image's torch: empty = PyPI's wheel (CUDA on Linux x86_64), or a tag of
# https://download.pytorch.org/whl/<tag> such as cu126, cu124, cu118 (torch only; the rest from PyPI).
TORCH_INDEX   ?=
# ONNX Runtime of the GPU image: cpu (requirements.txt's onnxruntime) or gpu (onnxruntime-gpu, same version).
ONNXRUNTIME   ?= cpu
# Extra pip flags for `make wheelhouse`. Where PyPI's torch is the CUDA build (any networked host),
# get the CPU wheel with: TORCH_SPEC=torch==2.13.0+cpu WHEEL_PIP_FLAGS="--extra-index-url https://download.pytorch.org/whl/cpu"
WHEEL_PIP_FLAGS ?=
DOCKER_BUILD_FLAGS ?=

.PHONY: engine base-image wheelhouse image image-cpu docker-help

docker-help: ## list the Docker targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' docker/docker.mk | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

engine: ## make sure a Docker engine + compose plugin are reachable (as root: installs docker.io, starts dockerd)
	bash docker/engine.sh

base-image: engine ## build the offline base image vda-base:bookworm with debootstrap (no registry needed)
	VDA_BASE_IMAGE=$(VDA_BASE_IMAGE) bash docker/base-image.sh

wheelhouse: ## download the torch CPU wheel (TORCH_SPEC) + requirements.txt wheels for cp311 x86_64 into wheelhouse/
	@mkdir -p $(WHEELHOUSE)
	@key="$(TORCH_SPEC) $(BUILD_SPEC) $(WHEEL_PYTHON) $(WHEEL_PLATFORMS) $$(sha256sum requirements.txt | cut -d' ' -f1)"; \
	if [ "$$(cat $(WHEELHOUSE)/.stamp 2>/dev/null)" = "$$key" ] && ls $(WHEELHOUSE)/*.whl >/dev/null 2>&1; then \
	    echo "$(WHEELHOUSE)/ is up to date"; exit 0; fi; \
	set -x; \
	$(PY) -m pip download --disable-pip-version-check -q -d $(WHEELHOUSE) \
	    --only-binary=:all: --python-version $(WHEEL_PYTHON) --implementation cp \
	    $(addprefix --platform ,$(WHEEL_PLATFORMS)) $(WHEEL_PIP_FLAGS) \
	    "$(TORCH_SPEC)" -r requirements.txt "$(BUILD_SPEC)" && \
	{ set +x; } 2>/dev/null && echo "$$key" > $(WHEELHOUSE)/.stamp && \
	echo "$$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1) in $(WHEELHOUSE)/"

image: ## build the GPU image vda:latest (python:3.11-slim, network, CUDA torch from PyPI or TORCH_INDEX=cu126; CHECKPOINT=vits|vitb|vitl|none)
	@mkdir -p $(WHEELHOUSE)
	$(DOCKER) build -f docker/Dockerfile -t $(VDA_IMAGE) $(DOCKER_BUILD_FLAGS) \
	    --build-arg BASE_IMAGE=$(GPU_BASE_IMAGE) \
	    --build-arg TORCH_BUILD=cuda \
	    --build-arg TORCH_SPEC="$(TORCH_SPEC)" \
	    --build-arg TORCH_INDEX="$(TORCH_INDEX)" \
	    --build-arg BUILD_SPEC="$(BUILD_SPEC)" \
	    --build-arg WHEELHOUSE=$(IMAGE_WHEELHOUSE) \
	    --build-arg ONNXRUNTIME=$(ONNXRUNTIME) \
	    --build-arg CHECKPOINT=$(CHECKPOINT) .

image-cpu: engine base-image wheelhouse ## build the CPU image vda:cpu offline (--network none, debootstrap base, wheelhouse, no weights)
	$(DOCKER) build --network none -f docker/Dockerfile -t $(VDA_CPU_IMAGE) $(DOCKER_BUILD_FLAGS) \
	    --build-arg BASE_IMAGE=$(VDA_BASE_IMAGE) \
	    --build-arg TORCH_BUILD=cpu \
	    --build-arg TORCH_SPEC="$(TORCH_SPEC)" \
	    --build-arg BUILD_SPEC="$(BUILD_SPEC)" \
	    --build-arg WHEELHOUSE=only \
	    --build-arg CHECKPOINT=none .
